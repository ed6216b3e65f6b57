"""Run files, read, written and ranked in one place: Tevatron (`qid docid score`), TREC six columns, MS MARCO
(`qid docid rank`), and the in-memory forms a run takes (read_run's entries, search output, BEIR's dicts)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raytev.data.lines import iter_lines
from raytev.errors import ProblemLog, RaytevError
from raytev.staging import staged_file

RUN_FORMATS = ("tevatron", "trec", "msmarco")


@dataclass(frozen=True, slots=True)
class RunEntry:
    """One retrieved document of a run, with its score and the line it came from."""

    line: int
    docid: str
    score: float


def read_run(path: str | os.PathLike, problems: ProblemLog) -> dict[str, list[RunEntry]]:
    """A run file as {query id: entries, best score first}; Tevatron three-column or TREC six-column."""
    run: dict[str, list[RunEntry]] = {}
    for line_number, line in iter_lines(path):
        fields = line.split()
        if len(fields) == 3:
            query_id, docid, score_text = fields
        elif len(fields) == 6:
            query_id, _, docid, _, score_text, _ = fields
        else:
            problems.add(str(path), line_number,
                         f"expected 3 columns (qid docid score) or 6 (TREC: qid Q0 docid rank score tag), "
                         f"got {len(fields)}")
            continue
        try:
            score = float(score_text)
        except ValueError:
            problems.add(str(path), line_number, f"score must be a number, got {score_text!r}", field="score")
            continue
        run.setdefault(query_id, []).append(RunEntry(line_number, docid, score))
    for entries in run.values():
        # Stable sort keeps file order among equal scores, as ranked run files list them.
        entries.sort(key=lambda entry: -entry.score)
    return run


def write_run(path: str | os.PathLike, query_ids: Sequence[str], scores: np.ndarray, docids: np.ndarray,
              format: str = "tevatron", tag: str = "raytev") -> int:
    """Write ranked hits (rows as `search` returns them, None docids skipped) and return the lines written.

    Written under a temporary name and renamed, gzip-compressed when `path` ends in .gz. Scores are written as
    the shortest text that reads back as the same float32, so equal scores stay equal and the order is kept.
    MS MARCO files carry ranks, not scores: `read_run` reads only the other two.
    """
    if format not in RUN_FORMATS:
        raise RaytevError(f"unknown run format {format!r}: choose one of {', '.join(RUN_FORMATS)}.")
    query_ids = [str(query_id) for query_id in query_ids]
    if not len(query_ids) == len(scores) == len(docids):
        raise ValueError(f"{len(query_ids)} query ids for {len(scores)} score rows and {len(docids)} docid rows")
    _check_no_whitespace(query_ids, "query id")
    _check_no_whitespace([docid for row in docids for docid in row if docid is not None], "docid")
    path = Path(path)
    lines = 0
    with staged_file(path) as temporary, \
            (gzip.open if path.suffix == ".gz" else open)(temporary, "wt", encoding="utf-8") as handle:
        for query_id, row_scores, row_docids in zip(query_ids, scores, docids):
            texts = np.asarray(row_scores, dtype=np.float32).astype(str)
            rows = [_line(format, query_id, docid, rank, text, tag)
                    for rank, (docid, text) in enumerate(zip(row_docids, texts), start=1) if docid is not None]
            handle.writelines(rows)
            lines += len(rows)
    return lines


def _line(format: str, query_id: str, docid: str, rank: int, score: str, tag: str) -> str:
    if format == "tevatron":
        return f"{query_id}\t{docid}\t{score}\n"
    if format == "trec":
        return f"{query_id} Q0 {docid} {rank} {score} {tag}\n"
    return f"{query_id}\t{docid}\t{rank}\n"


def _check_no_whitespace(values: list[str], what: str) -> None:
    """Run files separate columns by whitespace, so an id containing some would shift every column after it."""
    if not values:
        return
    spaced = pc.match_substring_regex(pa.array(values, pa.large_string()), r"\s")
    if pc.any(spaced).as_py():
        example = values[pc.index(spaced, True).as_py()]
        raise RaytevError(f"{what} {example!r} contains whitespace, which run files use to separate columns: "
                          "give ids without spaces or tabs.")


# read_run's {qid: [RunEntry]}, search output {qid: [(docid, score)]}, or BEIR's results {qid: {docid: score}}.
RankedList = Sequence[RunEntry] | Sequence[tuple[str, float]] | Mapping[str, float]
Run = Mapping[str, RankedList]


def ranked_docids(run: Run) -> dict[str, list[str]]:
    """{query id: document ids, best score first}; equal scores keep the run's order; a repeated docid is an error."""
    problems = ProblemLog()
    ranked = {str(query_id): _rank(str(query_id), entries, problems) for query_id, entries in run.items()}
    problems.raise_if_any()
    return ranked


def _rank(query_id: str, entries: RankedList, problems: ProblemLog) -> list[str]:
    scored = list(_scored_entries(entries))
    # Stable, as read_run sorts: among equal scores the run's own order decides, for every measure alike.
    scored.sort(key=lambda entry: -entry[1])
    first_line: dict[str, int | None] = {}
    docids = []
    for docid, _, line in scored:
        if docid in first_line:
            # trec_eval refuses duplicates too: the document's rank would be ambiguous.
            seen = f" (first at line {first_line[docid]})" if first_line[docid] is not None else ""
            problems.add("run", line, f"query {query_id!r} lists document {docid!r} twice{seen}")
            continue
        first_line[docid] = line
        docids.append(docid)
    return docids


def _scored_entries(entries: RankedList) -> Iterable[tuple[str, float, int | None]]:
    if isinstance(entries, Mapping):
        return ((str(docid), float(score), None) for docid, score in entries.items())
    return ((entry.docid, entry.score, entry.line) if isinstance(entry, RunEntry)
            else (str(entry[0]), float(entry[1]), None) for entry in entries)
