"""Qrels: BEIR TSV (`query-id corpus-id score`, with its header) and TREC (`qid 0 docid rel`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from raytev.data.lines import iter_lines
from raytev.errors import ProblemLog

BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True, slots=True)
class Judgement:
    """One qrels row: a query, a document and its relevance grade, with the line it came from."""

    line: int
    query_id: str
    docid: str
    relevance: int


def read_qrels(path: str | os.PathLike, problems: ProblemLog) -> list[Judgement]:
    """Every judgement of a BEIR (`query-id corpus-id score`) or TREC (`qid 0 docid rel`) qrels file."""
    judgements = []
    for index, (line_number, line) in enumerate(iter_lines(path)):
        fields = line.split()
        if index == 0 and tuple(fields) == BEIR_QRELS_HEADER:  # the first non-blank line: blank ones may precede it
            continue
        if len(fields) == 3:
            query_id, docid, grade = fields
        elif len(fields) == 4:
            query_id, _, docid, grade = fields
        else:
            problems.add(str(path), line_number,
                         f"expected 3 columns (query-id corpus-id score) or 4 (TREC: qid 0 docid rel), "
                         f"got {len(fields)}")
            continue
        relevance = _parse_grade(grade)
        if relevance is None:
            problems.add(str(path), line_number, f"relevance must be an integer, got {grade!r}", field="score")
            continue
        judgements.append(Judgement(line_number, query_id, docid, relevance))
    return judgements


def _parse_grade(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None
