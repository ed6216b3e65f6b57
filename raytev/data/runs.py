"""Run files, read, written and ranked in one place: Tevatron (`qid docid score`), TREC six columns, MS MARCO
(`qid docid rank`), and the in-memory forms a run takes (read_run's entries, search output, BEIR's dicts).

Runs grow as queries x depth (MS MARCO's 500k training queries at depth 1000 are 500M lines), so the files are
parsed by Arrow in blocks and handed on a few hundred whole queries at a time (iter_run_queries); only read_run,
for callers that want the whole run as Python objects, holds it all.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from raytev.data.lines import iter_lines, open_binary
from raytev.errors import DataError, Problem, ProblemLog, RaytevError
from raytev.staging import staged_file

RUN_FORMATS = ("tevatron", "trec", "msmarco")
# A run as Arrow: one row per line, `line` the 1-based line number in the file.
RUN_SCHEMA = pa.schema([("query_id", pa.string()), ("docid", pa.string()), ("score", pa.float64()),
                        ("line", pa.int64())])
QUERIES_PER_CHUNK = 256  # whole queries handed on at a time: bounded memory whatever the run's size
WHOLE_RUN_BYTES = 256 << 20  # runs up to this size are read whole, so their lines may come in any order
READ_BLOCK_BYTES = 16 << 20
WRITE_ROWS_PER_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class RunEntry:
    """One retrieved document of a run, with its score and the line it came from."""

    line: int
    docid: str
    score: float


def read_run(path: str | os.PathLike, problems: ProblemLog) -> dict[str, list[RunEntry]]:
    """A run file as {query id: entries, best score first}; Tevatron three-column or TREC six-column."""
    run: dict[str, list[RunEntry]] = {}
    for chunk in iter_run_queries(path, problems):
        run.update(run_entries(chunk))
    return run


def run_entries(chunk: pa.Table) -> dict[str, list[RunEntry]]:
    """A RUN_SCHEMA table of whole queries as {query id: entries}, in the table's order."""
    entries: dict[str, list[RunEntry]] = {}
    for query_id, docid, score, line in zip(*(chunk.column(name).to_pylist() for name in RUN_SCHEMA.names)):
        entries.setdefault(query_id, []).append(RunEntry(line, docid, score))
    return entries


def iter_run_queries(path: str | os.PathLike, problems: ProblemLog, queries_per_chunk: int = QUERIES_PER_CHUNK,
                     whole_run_bytes: int = WHOLE_RUN_BYTES) -> Iterator[pa.Table]:
    """The run as RUN_SCHEMA tables of whole queries, each query's rows best score first (file order among equal
    scores, as ranked run files list them) and queries in the order they first appear.

    A file of up to `whole_run_bytes` is read whole (as Arrow), so its lines may come in any order. A larger one is
    streamed, holding one chunk of queries: its queries' lines must be together, as every tool writes them (raytev,
    Tevatron, Pyserini); a query that comes back later is an error that says how to sort the file.
    """
    if open_size(path) <= whole_run_bytes:
        table = pa.concat_tables([RUN_SCHEMA.empty_table(), *iter_run_batches(path, problems)])
        yield from _query_chunks(_ranked(table), queries_per_chunk)
        return
    finished: set[str] = set()
    pending: list[pa.Table] = []
    for batch in iter_run_batches(path, problems):
        pending.append(batch)
        table = pa.concat_tables(pending)
        starts = _query_starts(table.column("query_id"))
        if len(starts) <= queries_per_chunk:  # the last query may go on in the next block
            continue
        cut = int(starts[queries_per_chunk * ((len(starts) - 1) // queries_per_chunk)])
        for chunk in _query_chunks(table.slice(0, cut), queries_per_chunk):
            yield _ranked(_check_first_seen(chunk, finished, path))
        pending = [table.slice(cut)]
    for chunk in _query_chunks(pa.concat_tables([RUN_SCHEMA.empty_table(), *pending]), queries_per_chunk):
        yield _ranked(_check_first_seen(chunk, finished, path))


def open_size(path: str | os.PathLike) -> int:
    """A file's size in bytes (compressed, for .gz); a missing file fails as open_binary says."""
    with open_binary(path):
        return Path(path).stat().st_size


def iter_run_batches(path: str | os.PathLike, problems: ProblemLog) -> Iterator[pa.Table]:
    """The run's lines in file order as RUN_SCHEMA tables, one per block read; bad lines go to `problems`."""
    first_line = 1
    with open_binary(path) as handle:
        for block in _text_blocks(handle, path):
            yield _parse_lines(block, first_line, str(path), problems)
            first_line += len(block)


def _text_blocks(handle, path: str | os.PathLike) -> Iterator[pa.Array]:
    """The file's lines, a block at a time (blank lines kept, so positions give line numbers).

    A lone carriage return ends a line here, as Arrow reads CSV (old Mac files); line numbers count it so.
    """
    try:
        reader = pa_csv.open_csv(
            handle, read_options=pa_csv.ReadOptions(column_names=["text"], block_size=READ_BLOCK_BYTES),
            # One column of whole lines: the fields are split on any whitespace afterwards.
            parse_options=pa_csv.ParseOptions(delimiter="\x1f", quote_char=False, escape_char=False,
                                              ignore_empty_lines=False),
            convert_options=pa_csv.ConvertOptions(column_types={"text": pa.string()}, strings_can_be_null=False))
        for block in reader:
            yield block.column(0)
    except (pa.ArrowInvalid, gzip.BadGzipFile, EOFError, zlib.error) as error:
        if "Empty CSV file" in str(error):  # no bytes (or a BOM alone): no queries, as for a file of blank lines
            return
        # Arrow passes on what the gzip reader raises: iter_lines reports those with their line.
        _raise_unreadable(path, error)


def _parse_lines(text: pa.Array, first_line: int, source: str, problems: ProblemLog) -> pa.Table:
    """Split one block's lines into the run's columns (3 fields, or TREC's 6); log and drop the others."""
    fields = pc.utf8_split_whitespace(text)
    counts = pc.list_value_length(fields).to_numpy(zero_copy_only=False)
    blank = pc.equal(pc.utf8_trim_whitespace(text), "").to_numpy(zero_copy_only=False)
    lines = np.arange(first_line, first_line + len(text), dtype=np.int64)
    found = ProblemLog(limit=len(text) + 1)  # this block's problems, reported in line order below
    for index in np.nonzero(~blank & (counts != 3) & (counts != 6))[0]:
        found.add(source, int(lines[index]), f"expected 3 columns (qid docid score) or 6 (TREC: qid Q0 docid rank "
                                             f"score tag), got {counts[index]}")
    keep = ~blank & ((counts == 3) | (counts == 6))
    fields, trec, lines = pc.filter(fields, pa.array(keep)), counts[keep] == 6, lines[keep]
    # Field i of each line, taken from the flattened fields (list_element would need every line to have it).
    starts = fields.offsets.to_numpy()[:-1] - fields.offsets[0].as_py()
    values = pc.list_flatten(fields)
    query_ids = values.take(pa.array(starts))
    docids = values.take(pa.array(starts + np.where(trec, 2, 1)))
    score_texts = values.take(pa.array(starts + np.where(trec, 4, 2)))
    try:
        scores = pc.cast(score_texts, pa.float64())
    except pa.ArrowInvalid:
        scores, good = _parse_scores(score_texts, lines, source, found)
        query_ids, docids, lines = pc.filter(query_ids, good), pc.filter(docids, good), lines[good.to_numpy(
            zero_copy_only=False)]
    for problem in sorted(found.problems, key=lambda problem: problem.line):
        problems.add(problem.source, problem.line, problem.message, problem.field)
    return pa.table([query_ids, docids, scores, pa.array(lines, pa.int64())], schema=RUN_SCHEMA)


def _parse_scores(texts: pa.Array, lines: np.ndarray, source: str,
                  problems: ProblemLog) -> tuple[pa.Array, pa.Array]:
    """(the scores that are numbers, which texts those were), one at a time: only for a block in which Arrow's cast
    met a bad one."""
    scores, good = [], []
    for text, line in zip(texts.to_pylist(), lines):
        try:
            scores.append(float(text))
            good.append(True)
        except ValueError:
            problems.add(source, int(line), f"score must be a number, got {text!r}", field="score")
            good.append(False)
    return pa.array(scores, pa.float64()), pa.array(good)


def _raise_unreadable(path: str | os.PathLike, error: Exception) -> None:
    """Arrow stopped on bytes it cannot read as text: find the line the way iter_lines reports it."""
    for _ in iter_lines(path):  # raises a located DataError for bad UTF-8 or gzip data
        pass
    with open_binary(path) as handle:  # raw lines: iter_lines skips a line of only \x1f (Python calls it blank)
        for line_number, raw in enumerate(handle, start=1):
            if b"\x1f" in raw:  # the delimiter Arrow is given so that lines come whole: a line holding one splits
                raise DataError([Problem(str(path), line_number, "a unit separator control character (\\x1f)")],
                                "Remove it: run file columns are separated by spaces or tabs.") from None
    raise DataError([Problem(str(path), None, f"unreadable run file ({error})")],
                    "Check that it is a text run file (plain or .gz).") from None


def _query_starts(query_ids: pa.ChunkedArray) -> np.ndarray:
    """Row positions where a new query's lines begin (0 first)."""
    ids = query_ids.combine_chunks()
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    changes = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.nonzero(changes)[0] + 1])


def _query_chunks(table: pa.Table, queries_per_chunk: int) -> Iterator[pa.Table]:
    """`table` cut between queries into slices of at most `queries_per_chunk` runs of lines."""
    starts = _query_starts(table.column("query_id"))
    bounds = [*starts[::queries_per_chunk], table.num_rows]
    for low, high in zip(bounds, bounds[1:]):
        yield table.slice(low, high - low)


def _check_first_seen(chunk: pa.Table, finished: set[str], path: str | os.PathLike) -> pa.Table:
    """The chunk, once its queries are recorded as finished; a query seen in an earlier chunk is an error."""
    starts = _query_starts(chunk.column("query_id"))
    firsts = chunk.select(["query_id", "line"]).take(pa.array(starts)).to_pylist()
    for row in firsts:
        if row["query_id"] in finished:
            raise DataError([Problem(str(path), row["line"], f"query {row['query_id']!r} comes back after other "
                                                            "queries' lines")],
                            "A run this large is read a few queries at a time, so each query's lines must be "
                            f"together: sort it first, e.g. `sort -s -k1,1 {path} > sorted.txt` (stable, so equal "
                            "scores keep their order).")
        finished.add(row["query_id"])
    return chunk


def _ranked(chunk: pa.Table) -> pa.Table:
    """A chunk of whole queries, each query's rows best score first (stable: file order among equal scores)."""
    order = pc.index_in(chunk.column("query_id"), value_set=pc.unique(chunk.column("query_id")))
    keyed = chunk.append_column("query_order", order)
    return keyed.sort_by([("query_order", "ascending"), ("score", "descending"), ("line", "ascending")]) \
        .drop_columns(["query_order"]).combine_chunks()


def write_run(path: str | os.PathLike, query_ids: Sequence[str], scores: np.ndarray, docids: np.ndarray,
              format: str = "tevatron", tag: str = "raytev") -> int:
    """Write ranked hits (rows as `search` returns them, None docids skipped) and return the lines written."""
    return write_run_batches(path, [(query_ids, scores, docids)], format, tag)


def write_run_batches(path: str | os.PathLike,
                      batches: Iterable[tuple[Sequence[str] | pa.Array, np.ndarray, np.ndarray]],
                      format: str = "tevatron", tag: str = "raytev") -> int:
    """Write each (query ids, scores, docids) batch of ranked hits as it comes; return the lines written.

    Rows are as `search` returns them (None docids skipped), so a run written batch by batch has the bytes of the
    same run written at once. Written under a temporary name and renamed when the last batch is in (removed if
    anything fails first), gzip-compressed when `path` ends in .gz. Scores are written as the shortest text that
    reads back as the same float32, so equal scores stay equal and the order is kept. MS MARCO files carry ranks,
    not scores: `read_run` reads only the other two. Lines are formatted by Arrow a block of queries at a time,
    not one Python string each.
    """
    if format not in RUN_FORMATS:
        raise RaytevError(f"unknown run format {format!r}: choose one of {', '.join(RUN_FORMATS)}.")
    path = Path(path)
    lines = 0
    with staged_file(path) as temporary, \
            (gzip.open if path.suffix == ".gz" else open)(temporary, "wb") as handle:
        for batch_query_ids, scores, docids in batches:
            query_ids = batch_query_ids.cast(pa.string()) if isinstance(batch_query_ids, pa.Array) \
                else pa.array([str(query_id) for query_id in batch_query_ids], pa.string())
            if not len(query_ids) == len(scores) == len(docids):
                raise ValueError(f"{len(query_ids)} query ids for {len(scores)} score rows and {len(docids)} docid "
                                 "rows")
            _check_no_whitespace(query_ids, "query id")
            depth = np.shape(scores)[1] if len(query_ids) else 0
            rows_per_block = max(1, WRITE_ROWS_PER_BLOCK // max(depth, 1))
            for low in range(0, len(query_ids), rows_per_block):
                high = min(low + rows_per_block, len(query_ids))
                block = _run_lines(format, query_ids.slice(low, high - low), np.asarray(scores[low:high]),
                                   np.asarray(docids[low:high]), tag)
                if len(block):
                    handle.write(pc.binary_join(pa.ListArray.from_arrays([0, len(block)], block), "\n")[0]
                                 .as_buffer())
                    handle.write(b"\n")
                lines += len(block)
    return lines


def _run_lines(format: str, query_ids: pa.Array, scores: np.ndarray, docids: np.ndarray, tag: str) -> pa.Array:
    """One block of queries' hits as the format's lines (without newlines), empty docids left out."""
    count, depth = scores.shape
    flat_docids = pa.array(docids.reshape(-1), pa.string())
    _check_no_whitespace(flat_docids, "docid")
    present = pc.is_valid(flat_docids)
    columns = {
        "qid": query_ids.take(pa.array(np.repeat(np.arange(count), depth))),
        "docid": flat_docids,
        "score": pc.cast(pa.array(np.asarray(scores, dtype=np.float32).reshape(-1)), pa.string()),
        "rank": pc.cast(pa.array(np.tile(np.arange(1, depth + 1), count)), pa.string()),
    }
    columns = {name: pc.filter(values, present) for name, values in columns.items()}
    if format == "tevatron":
        return pc.binary_join_element_wise(columns["qid"], columns["docid"], columns["score"], "\t")
    if format == "trec":
        return pc.binary_join_element_wise(columns["qid"], "Q0", columns["docid"], columns["rank"], columns["score"],
                                           tag, " ")
    return pc.binary_join_element_wise(columns["qid"], columns["docid"], columns["rank"], "\t")


def _check_no_whitespace(values: pa.Array, what: str) -> None:
    """Run files separate columns by whitespace, so an id containing some would shift every column after it."""
    spaced = pc.match_substring_regex(values, r"\s")
    if pc.any(spaced).as_py():
        example = values[pc.index(spaced, True).as_py()].as_py()
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
