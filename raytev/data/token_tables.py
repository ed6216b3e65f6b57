"""Turn validated text tables into the cache's token tables (Parquet, `list<int32>` token columns)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from raytev.data.arrow_rows import read_arrow_rows
from raytev.data.cache import ParquetShardWriter
from raytev.data.reading import QueriesText, count_list_items
from raytev.data.tokenize import TextTokenizer, tokenize_arrow_texts

TOKENS = pa.list_(pa.int32())
# `row` numbers rows across shards, so readers can select row ranges (with Parquet filter pushdown).
CORPUS_SCHEMA = pa.schema([("row", pa.int64()), ("docid", pa.string()), ("input_ids", TOKENS)])
# Group rows carry their candidates' tokens, so training streams rows with no lookups on the workers.
GROUP_COLUMNS = [("positive_docids", pa.list_(pa.string())), ("negative_docids", pa.list_(pa.string())),
                 ("positive_input_ids", pa.list_(TOKENS)), ("negative_input_ids", pa.list_(TOKENS))]
GROUPS_PER_CHUNK = 1024


def queries_schema(has_groups: bool) -> pa.Schema:
    """Columns of a queries table: with group columns when it holds training groups."""
    fields = [("row", pa.int64()), ("query_id", pa.string()), ("input_ids", TOKENS), ("answers", pa.list_(pa.string()))]
    return pa.schema(fields + (GROUP_COLUMNS if has_groups else []))


def token_stats(tokens: pa.ChunkedArray, max_len: int) -> dict:
    """Mean length and how many sequences were cut at the maximum length."""
    lengths = pc.list_value_length(tokens)
    return {"mean_tokens": round(pc.mean(lengths).as_py() or 0.0, 1),
            "truncated": pc.sum(pc.greater_equal(lengths, max_len)).as_py() or 0}


def write_corpus_table(text_file: Path, tokenizer: TextTokenizer, table_dir: Path,
                       num_proc: int | None) -> dict:
    """Tokenize a corpus text table into Parquet shards under `table_dir`; returns row count and stats."""
    tokens = tokenize_arrow_texts(text_file, tokenizer, work_dir(table_dir), "passages", num_proc)
    docids = read_arrow_rows(text_file).column("docid")
    writer = ParquetShardWriter(table_dir, CORPUS_SCHEMA)
    writer.write(pa.table({"row": pa.array(range(len(docids)), pa.int64()), "docid": docids, "input_ids": tokens}))
    writer.close()
    return {"rows": writer.rows, "files": writer.files, **token_stats(tokens, tokenizer.max_len)}


def write_queries_table(queries: QueriesText, query_tokenizer: TextTokenizer, table_dir: Path,
                        num_proc: int | None, passage_tokenizer: TextTokenizer | None = None,
                        corpus_tokens: pa.ChunkedArray | None = None) -> dict:
    """Tokenize queries (and their groups' passages) into Parquet shards; returns row count and stats.

    Group passages are rows of `corpus_tokens` or of the inline passages table, tokenized here.
    """
    texts = read_arrow_rows(queries.queries_file)
    query_tokens = tokenize_arrow_texts(queries.queries_file, query_tokenizer, work_dir(table_dir), "queries",
                                        num_proc)
    writer = ParquetShardWriter(table_dir, queries_schema(queries.has_groups), row_group_rows=GROUPS_PER_CHUNK)
    stats = {"query_" + key: value for key, value in token_stats(query_tokens, query_tokenizer.max_len).items()}
    if not queries.has_groups:
        writer.write(pa.table({"row": pa.array(range(texts.num_rows), pa.int64()),
                               "query_id": texts.column("query_id"), "input_ids": query_tokens,
                               "answers": texts.column("answers")}))
    else:
        passage_tokens = corpus_tokens
        if queries.passages_from == "inline":
            passage_tokens = tokenize_arrow_texts(queries.inline_file, passage_tokenizer, work_dir(table_dir),
                                                  "group passages", num_proc)
            stats.update({"passage_" + key: value
                          for key, value in token_stats(passage_tokens, passage_tokenizer.max_len).items()})
        for start in range(0, texts.num_rows, GROUPS_PER_CHUNK):
            chunk = texts.slice(start, GROUPS_PER_CHUNK)
            writer.write(pa.table({
                "row": pa.array(range(start, start + chunk.num_rows), pa.int64()),
                "query_id": chunk.column("query_id"),
                "input_ids": query_tokens.slice(start, GROUPS_PER_CHUNK),
                "answers": chunk.column("answers"),
                "positive_docids": chunk.column("positive_docids"),
                "negative_docids": chunk.column("negative_docids"),
                "positive_input_ids": gather_token_lists(chunk.column("positive_rows"), passage_tokens),
                "negative_input_ids": gather_token_lists(chunk.column("negative_rows"), passage_tokens),
            }))
        stats["positives"] = count_list_items(texts.column("positive_rows"))
        stats["negatives"] = count_list_items(texts.column("negative_rows"))
        stats["min_negatives"] = pc.min(pc.list_value_length(texts.column("negative_rows"))).as_py() or 0
    writer.close()
    return {"rows": writer.rows, "files": writer.files, **stats}


def gather_token_lists(rows: pa.ChunkedArray, tokens: pa.ChunkedArray) -> pa.ListArray:
    """For each group's list of passage rows, the list of those passages' token lists."""
    rows = rows.combine_chunks()
    offsets = pc.subtract(rows.offsets, rows.offsets[0])  # a slice's offsets do not start at 0
    taken = tokens.take(rows.flatten()).combine_chunks() if len(rows.flatten()) else pa.array([], TOKENS)
    return pa.ListArray.from_arrays(offsets, taken)


def work_dir(table_dir: Path) -> Path:
    """Scratch space inside a table being built (removed when the table is moved into place)."""
    path = table_dir / "work"
    path.mkdir(exist_ok=True)
    return path
