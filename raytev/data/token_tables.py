"""Turn validated text tables into the cache's token tables (Parquet, `list<int32>` token columns), streaming: memory
holds a chunk of rows at a time, whatever the size of the corpus."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raytev.data.arrow_rows import iter_arrow_batches, iter_arrow_chunks
from raytev.data.cache import ParquetShardWriter, TokenTable
from raytev.data.group_tokens import join_group_tokens
from raytev.data.reading import QueriesText, count_list_items
from raytev.data.tokenize import TOKENS, TextTokenizer, tokenize_arrow_texts

# `row` numbers rows across shards, so readers can select row ranges (with Parquet filter pushdown).
CORPUS_SCHEMA = pa.schema([("row", pa.int64()), ("docid", pa.string()), ("input_ids", TOKENS)])
# Group rows carry their candidates' tokens, so training streams rows with no lookups on the workers.
GROUP_COLUMNS = [("positive_docids", pa.list_(pa.string())), ("negative_docids", pa.list_(pa.string())),
                 ("positive_input_ids", pa.list_(TOKENS)), ("negative_input_ids", pa.list_(TOKENS))]
GROUPS_PER_CHUNK = 1024
CORPUS_ROWS_PER_CHUNK = 8192
PASSAGE_BATCH_ROWS = 4096  # corpus passages read at a time when joining them to groups


def queries_schema(has_groups: bool) -> pa.Schema:
    """Columns of a queries table: with group columns when it holds training groups."""
    fields = [("row", pa.int64()), ("query_id", pa.string()), ("input_ids", TOKENS), ("answers", pa.list_(pa.string()))]
    return pa.schema(fields + (GROUP_COLUMNS if has_groups else []))


def write_corpus_table(text_file: Path, tokenizer: TextTokenizer, table_dir: Path,
                       num_proc: int | None) -> dict:
    """Tokenize a corpus text table into Parquet shards under `table_dir`; returns row count and stats."""
    tokens_file = work_dir(table_dir) / "passages-tokens.arrow"
    stats = tokenize_arrow_texts(text_file, tokenizer, tokens_file, "passages", num_proc)
    writer = ParquetShardWriter(table_dir, CORPUS_SCHEMA)
    for docids, tokens in zip(iter_arrow_chunks(text_file, CORPUS_ROWS_PER_CHUNK, ["docid"]),
                              iter_arrow_chunks(tokens_file, CORPUS_ROWS_PER_CHUNK), strict=True):
        writer.write(pa.table({"row": row_numbers(writer.rows, docids.num_rows), "docid": docids.column("docid"),
                               "input_ids": tokens.column("input_ids")}))
    writer.close()
    return {"rows": writer.rows, "files": writer.files, **stats.as_dict()}


def write_queries_table(queries: QueriesText, query_tokenizer: TextTokenizer, table_dir: Path,
                        num_proc: int | None, passage_tokenizer: TextTokenizer | None = None,
                        corpus_table: TokenTable | None = None) -> dict:
    """Tokenize queries (and their groups' passages) into Parquet shards; returns row count and stats.

    Group passages are rows of `corpus_table` or of the inline passages table, tokenized here; they join the
    groups on disk (raytev.data.group_tokens), chunk by chunk.
    """
    work = work_dir(table_dir)
    tokens_file = work / "queries-tokens.arrow"
    stats = tokenize_arrow_texts(queries.queries_file, query_tokenizer, tokens_file, "queries",
                                 num_proc).as_dict("query_")
    groups_per_chunk = GROUPS_PER_CHUNK
    candidates: Iterator = repeat(None)  # per chunk: (positive_input_ids, negative_input_ids) of its groups
    if queries.has_groups:
        if queries.passages_from == "inline":
            passages_file = work / "group-passages-tokens.arrow"
            stats.update(tokenize_arrow_texts(queries.inline_file, passage_tokenizer, passages_file,
                                              "group passages", num_proc).as_dict("passage_"))
            passages = (batch.column("input_ids") for batch in iter_arrow_batches(passages_file))
        else:
            passages = corpus_table.iter_column("input_ids", PASSAGE_BATCH_ROWS)
        candidates = join_group_tokens(queries.queries_file, passages, passage_tokenizer.max_len, work,
                                       groups_per_chunk)
    counts = {"positives": 0, "negatives": 0}
    fewest_negatives: list[int] = []
    writer = ParquetShardWriter(table_dir, queries_schema(queries.has_groups), row_group_rows=groups_per_chunk)
    for texts, tokens, token_lists in zip(iter_arrow_chunks(queries.queries_file, groups_per_chunk),
                                          iter_arrow_chunks(tokens_file, groups_per_chunk), candidates):
        columns = {"row": row_numbers(writer.rows, texts.num_rows), "query_id": texts.column("query_id"),
                   "input_ids": tokens.column("input_ids"), "answers": texts.column("answers")}
        if token_lists is not None:
            columns.update({"positive_docids": texts.column("positive_docids"),
                            "negative_docids": texts.column("negative_docids"),
                            "positive_input_ids": token_lists[0], "negative_input_ids": token_lists[1]})
            counts["positives"] += count_list_items(texts.column("positive_rows"))
            counts["negatives"] += count_list_items(texts.column("negative_rows"))
            fewest_negatives.append(pc.min(pc.list_value_length(texts.column("negative_rows"))).as_py())
        writer.write(pa.table(columns))
    writer.close()
    if queries.has_groups:
        stats.update(counts, min_negatives=min(fewest_negatives, default=0))
    return {"rows": writer.rows, "files": writer.files, **stats}


def row_numbers(first: int, count: int) -> pa.Array:
    """The `row` column of `count` rows that follow `first` rows already written."""
    return pa.array(np.arange(first, first + count, dtype=np.int64))


def work_dir(table_dir: Path) -> Path:
    """Scratch space inside a table being built (removed when the table is moved into place)."""
    path = table_dir / "work"
    path.mkdir(exist_ok=True)
    return path
