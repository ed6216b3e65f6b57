"""A run in any of its in-memory forms as ranked document ids per query, best first."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from raytev.data.relevance import RunEntry
from raytev.errors import ProblemLog

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
