"""A run's top candidates as a table of the token cache: each query's tokens beside its candidates' docids, first-stage
scores and tokens (joined from the corpus table on disk, as training groups are), so that rerankers stream rows with
no lookups. Built once per (run, depth, tables) and reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from raytev.data.arrow_rows import iter_arrow_chunks
from raytev.data.cache import CacheTransaction, ParquetShardWriter, TokenTable, file_fingerprint, fingerprint
from raytev.data.group_tokens import join_group_tokens
from raytev.data.reading import CorpusDocids
from raytev.data.runs import iter_run_queries
from raytev.data.token_tables import PASSAGE_BATCH_ROWS, row_numbers, work_dir
from raytev.data.tokenize import TOKENS
from raytev.errors import ProblemLog, RaytevError

CANDIDATES_SCHEMA = pa.schema([("row", pa.int64()), ("query_id", pa.string()), ("input_ids", TOKENS),
                               ("docids", pa.list_(pa.string())), ("first_scores", pa.list_(pa.float64())),
                               ("candidate_input_ids", pa.list_(TOKENS))])
# What join_group_tokens reads: candidates as (empty) positive and negative corpus rows.
ROWS_SCHEMA = pa.schema([("query_row", pa.int64()), ("query_id", pa.string()), ("docids", pa.list_(pa.string())),
                         ("first_scores", pa.list_(pa.float64())), ("positive_rows", pa.list_(pa.int64())),
                         ("negative_rows", pa.list_(pa.int64()))])
QUERIES_PER_CHUNK = 256


def candidates_table(run_path: str, depth: int, queries: TokenTable, corpus: TokenTable,
                     cache_dir: Path) -> TokenTable:
    """The table of the top `depth` candidates of each query of the run (from the cache when built before)."""
    key = fingerprint(kind="candidates", run=file_fingerprint(run_path), depth=depth,
                      queries=queries.manifest["fingerprint"], corpus=corpus.manifest["fingerprint"])
    cached = TokenTable.open(cache_dir / f"candidates-{key}")
    if cached is not None:
        return cached
    with CacheTransaction(cache_dir) as transaction:
        hidden = transaction.new_table("candidates", key)
        rows_file = work_dir(hidden) / "candidate-rows.arrow"
        counts = write_candidate_rows(run_path, depth, queries, corpus, rows_file)
        result = write_candidates(rows_file, queries, corpus, hidden)
        transaction.commit(hidden, {"kind": "candidates", "fingerprint": key, "source": str(run_path),
                                    "depth": depth, "settings": queries.manifest["settings"], **counts, **result})
    return TokenTable.open(cache_dir / f"candidates-{key}")


def write_candidate_rows(run_path: str, depth: int, queries: TokenTable, corpus: TokenTable, rows_file: Path) -> dict:
    """Pass 1: the run's queries and top candidates as query and corpus rows; every unknown id is a located problem,
    and a depth no query of the run reaches is refused."""
    problems = ProblemLog()
    query_rows = CorpusDocids(queries.read(["query_id"]).column("query_id"))
    passage_rows = CorpusDocids(corpus.read(["docid"]).column("docid"))
    deepest = pairs = 0
    with pa.OSFile(str(rows_file), "wb") as sink, pa.ipc.new_stream(sink, ROWS_SCHEMA) as writer:
        for chunk in iter_run_queries(run_path, problems, QUERIES_PER_CHUNK):
            if problems:
                continue
            query_ids = chunk.column("query_id").to_numpy(zero_copy_only=False)
            starts = np.flatnonzero(np.r_[True, query_ids[1:] != query_ids[:-1]]) if len(query_ids) else \
                np.array([], np.int64)
            ends = np.r_[starts[1:], len(query_ids)]
            deepest = max(deepest, int((ends - starts).max(initial=0)))
            keep = np.concatenate([np.arange(start, min(end, start + depth)) for start, end in zip(starts, ends)]
                                  or [np.array([], np.int64)])
            top = chunk.take(pa.array(keep, pa.int64()))
            found = report_unknown(top, "query_id", query_rows, run_path, "query id", queries.manifest["source"],
                                   problems)
            known_passages = report_unknown(top, "docid", passage_rows, run_path, "docid",
                                            corpus.manifest["source"], problems)
            if problems or found is None or known_passages is None:
                continue
            offsets = np.r_[0, np.cumsum(np.minimum(ends - starts, depth))]
            first = pa.array(offsets[:-1], pa.int64())
            nest = lambda values: pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)  # noqa: E731
            writer.write_table(pa.table({
                "query_row": found.take(first), "query_id": top.column("query_id").take(first),
                "docids": nest(top.column("docid").combine_chunks()),
                "first_scores": nest(top.column("score").combine_chunks()),
                "positive_rows": pa.ListArray.from_arrays(pa.array(np.zeros(len(first) + 1), pa.int32()),
                                                          pa.array([], pa.int64())),
                "negative_rows": nest(known_passages)}, schema=ROWS_SCHEMA))
            pairs += len(top)
    problems.raise_if_any()
    if deepest < depth:
        raise RaytevError(f"{run_path} holds at most {deepest} passages per query, so --rerank_depth {depth} would "
                          f"rerank fewer than asked: give --rerank_depth {deepest} or less, or a run searched to "
                          f"depth {depth}.")
    if pairs == 0:
        raise RaytevError(f"{run_path}: the run is empty: nothing to rerank.")
    return {"pairs": pairs}


def report_unknown(top: pa.Table, column: str, lookup: CorpusDocids, run_path: str, what: str, table_source: str,
                   problems: ProblemLog) -> pa.Array | None:
    """Each id's row in its table; every id the table lacks is a problem at its run line (then None)."""
    ids = top.column(column).combine_chunks()
    rows = lookup.rows(ids)
    missing = np.flatnonzero(rows.is_null().to_numpy(zero_copy_only=False))
    lines = top.column("line").to_numpy()
    reported = set()
    for position in missing:
        value = ids[int(position)].as_py()
        if value not in reported:  # an unknown query once, not on each of its lines
            reported.add(value)
            problems.add(run_path, int(lines[position]), f"{what} '{value}' is not in {table_source}", field=what)
    return None if len(missing) else rows


def write_candidates(rows_file: Path, queries: TokenTable, corpus: TokenTable, table_dir: Path) -> dict:
    """Pass 2: candidates' tokens joined from the corpus on disk (memory: a chunk), queries' tokens beside them."""
    query_tokens = queries.read(["input_ids"]).column("input_ids")
    joined = join_group_tokens(rows_file, corpus.iter_column("input_ids", PASSAGE_BATCH_ROWS),
                               corpus.manifest["settings"]["passage_max_len"], work_dir(table_dir), QUERIES_PER_CHUNK)
    writer = ParquetShardWriter(table_dir, CANDIDATES_SCHEMA, row_group_rows=64)
    for chunk, (_, candidate_tokens) in zip(iter_arrow_chunks(rows_file, QUERIES_PER_CHUNK), joined, strict=True):
        writer.write(pa.table({"row": row_numbers(writer.rows, chunk.num_rows), "query_id": chunk.column("query_id"),
                               "input_ids": query_tokens.take(chunk.column("query_row")),
                               "docids": chunk.column("docids"), "first_scores": chunk.column("first_scores"),
                               "candidate_input_ids": candidate_tokens}))
    writer.close()
    return {"rows": writer.rows, "files": writer.files}
