"""Run files from search results: Tevatron (`qid docid score`), TREC six columns, MS MARCO (`qid docid rank`)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raytev.errors import RaytevError
from raytev.staging import staged_file

RUN_FORMATS = ("tevatron", "trec", "msmarco")


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
