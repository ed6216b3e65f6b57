"""The titles and texts a search service returns: a corpus's passages in one Arrow file sorted by docid, built once
into raytev's cache and read with file reads (pread) by every process that serves it.

The file is Arrow IPC (Feather v2), uncompressed, so a value lies at a file position its batch's offsets say: a
reader holds no corpus-sized structure (each batch's first docid and where its columns lie), and the pages it reads
stay in the page cache, shared by the processes of a node, and out of its RSS. (A memory map counted them in every
reader's RSS: a fault maps a whole page-cache folio, up to a MiB, so ~10k random lookups made a 1.6M-passage
ingress's RSS 2.99 GB over 0.13 GB of its own.) A docid is found by binary search over every KEY_STRIDE-th docid,
held in memory (1/64 of the docids: ~25k keys for 1.6M passages), then inside that block of rows, read in two reads
(its offsets and its docid bytes: UTF-8, the order Arrow sorts strings in); its title and text take two reads each.

Built once per corpus (the name says which files, their sizes and modification times), complete or absent: the
records are read and validated as raytev reads any corpus, written in reading order to a scratch Arrow stream,
ordered by docid (only the docid column and the order are held in memory), and gathered in that order into the
store under a temporary name that is renamed into place. A docid given twice keeps its last record, as a dict filled
in reading order would.
"""

from __future__ import annotations

import bisect
import os
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raytev.bundled import bundled_dataset_path
from raytev.data.arrow_rows import ArrowRowWriter, read_arrow_rows
from raytev.data.cache import default_cache_dir, fingerprint
from raytev.data.formats import parse_corpus_record
from raytev.data.sources import RecordFiles, expand_paths, find_beir_layout
from raytev.errors import ProblemLog, RaytevError
from raytev.progress import progress_bar
from raytev.staging import staged_file

STORE_FORMAT = 1
SCHEMA = pa.schema([("docid", pa.large_string()), ("title", pa.large_string()), ("text", pa.large_string())])
BATCH_ROWS = 16384  # rows per batch of the store and of its scratch file: what building it holds of the texts
KEY_STRIDE = 64  # every 64th docid of each batch is held in memory: a lookup reads one block of 64 docids


def corpus_files(corpus: str) -> tuple[Path, ...]:
    """The files of a corpus: a bundled dataset name, a BEIR folder, or JSONL/TSV files (a glob)."""
    folder = bundled_dataset_path(corpus) or (Path(corpus).expanduser() if Path(corpus).expanduser().is_dir()
                                               else None)
    if folder is not None:
        layout = find_beir_layout(folder)
        if layout is None:
            raise RaytevError(f"{folder} is a folder but not a BEIR one (corpus.jsonl[.gz], queries.jsonl, qrels/): "
                              "give the corpus file itself.")
        return (layout["corpus"],)
    return expand_paths(corpus)


def corpus_store(corpus: str, cache_dir: Path | None = None) -> CorpusStore:
    """The store of `corpus` (see corpus_files) from the cache folder, built there first if it is not there yet."""
    files = corpus_files(corpus)
    path = store_path(files, Path(cache_dir) if cache_dir else default_cache_dir())
    if not path.is_file():
        build_store(files, path)
    return CorpusStore(path)


def store_path(files: tuple[Path, ...], cache_dir: Path) -> Path:
    """Where the store of these files lives in `cache_dir`: named by their paths, sizes and modification times (not
    their bytes: hashing a multi-GB corpus would cost every start what the store saves)."""
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return cache_dir / f"corpus-store-{fingerprint(kind='corpus-store', format=STORE_FORMAT, files=stats)}.arrow"


def build_store(files: tuple[Path, ...], target: Path) -> None:
    """Read and validate the corpus files and write their passages sorted by docid as `target`, complete or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(target) as temporary:
        scratch = temporary.with_name(f"{temporary.name}.unsorted")
        try:
            _write_in_reading_order(RecordFiles("corpus", files), scratch)
            _write_sorted(read_arrow_rows(scratch), temporary)
        finally:
            scratch.unlink(missing_ok=True)
    pa.default_memory_pool().release_unused()  # `raytev serve` keeps running: hand back what the build used


def _write_in_reading_order(records: RecordFiles, path: Path) -> None:
    problems = ProblemLog()
    with ArrowRowWriter(path, SCHEMA, batch_rows=BATCH_ROWS) as writer:
        for source, line, record in progress_bar(iterable=records.iter_records(problems), disable=None,
                                                 desc=f"corpus store of {records.label}", unit=" passages"):
            passage = parse_corpus_record(record, source, line, problems)
            if passage is not None:
                writer.append(docid=passage.docid, title=passage.title, text=passage.text)
    problems.raise_if_any()


def _write_sorted(table: pa.Table, path: Path) -> None:
    order = last_of_each_docid(table.column("docid"))
    batches = table.to_batches()
    starts = np.cumsum([0] + [batch.num_rows for batch in batches])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        for start in range(0, len(order), BATCH_ROWS):
            writer.write_batch(gather_rows(batches, starts, order[start:start + BATCH_ROWS]))


def last_of_each_docid(docids: pa.ChunkedArray) -> np.ndarray:
    """Row numbers that order `docids`, keeping only the last row of a docid given more than once."""
    order = pc.sort_indices(docids)  # stable: rows of one docid stay in reading order
    ordered = docids.take(order)
    keep = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        keep[:-1] = pc.not_equal(ordered[:-1], ordered[1:]).to_numpy()
    return order.to_numpy().astype(np.int64)[keep]


def gather_rows(batches: list[pa.RecordBatch], starts: np.ndarray, rows: np.ndarray) -> pa.RecordBatch:
    """The rows numbered `rows` (in that order) of a table given as its batches (`starts`: each batch's first row
    number), taken batch by batch: a chunked column's take would first concatenate the whole column."""
    numbers = np.searchsorted(starts, rows, side="right") - 1
    grouped = np.argsort(numbers, kind="stable")  # positions in `rows`, batch by batch
    cuts = np.flatnonzero(np.diff(numbers[grouped])) + 1
    pieces = [batches[numbers[group[0]]].take(pa.array(rows[group] - starts[numbers[group[0]]]))
              for group in np.split(grouped, cuts)]
    return pa.concat_batches(pieces).take(pa.array(np.argsort(grouped)))


class CorpusStore:
    """Titles and texts by docid, read from a store file with pread (see the module's docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # Where each batch's columns (docid, title, text) lie in the file: the file positions of their value offsets
        # and of their UTF-8 bytes, found from the buffers of a memory map that is released before this returns.
        self._layout: list[tuple[int, list[tuple[int, int]]]] = []  # per batch: rows, and per column positions
        with pa.memory_map(str(self.path)) as source:
            base = source.read_buffer(1).address if source.size() else 0  # a view of the map's first byte
            reader = pa.ipc.open_file(source)
            for number in range(reader.num_record_batches):
                batch = reader.get_batch(number)
                if any(column.null_count for column in batch.columns):
                    raise RaytevError(f"{self.path} holds null values: it is not a corpus store raytev wrote; "
                                      "delete it and the service builds it again.")
                self._layout.append((batch.num_rows, [
                    (column.buffers()[1].address - base + 8 * column.offset,
                     column.buffers()[2].address - base if column.buffers()[2] is not None else 0)
                    for column in batch.columns]))
        self._fd = os.open(self.path, os.O_RDONLY)
        self._keys: list[bytes] = []  # every KEY_STRIDE-th docid, in order, and the (batch, row) where its block starts
        self._blocks: list[tuple[int, int]] = []
        for number, (rows, _) in enumerate(self._layout):
            for row in range(0, rows, KEY_STRIDE):
                self._blocks.append((number, row))
            self._keys.extend(self._docids(number, 0, rows)[::KEY_STRIDE])

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __len__(self) -> int:
        return sum(rows for rows, _ in self._layout)

    def passages(self, docids: list[str]) -> list[tuple[str | None, str | None]]:
        """(title, text) of each docid; (None, None) for a docid the corpus lacks."""
        found = []
        for docid in docids:
            place = self._find(docid.encode())
            found.append((None, None) if place is None else
                         tuple(str(self._value(place[0], column, place[1]), "utf-8") for column in (1, 2)))
        return found

    def _value(self, number: int, column: int, row: int) -> bytes:
        """The bytes of one value: its two offsets, then the bytes between them (two reads)."""
        offsets, data = self._layout[number][1][column]
        start, end = struct.unpack("<qq", os.pread(self._fd, 16, offsets + 8 * row))
        return os.pread(self._fd, end - start, data + start) if end > start else b""

    def _docids(self, number: int, low: int, high: int) -> list[bytes]:
        """The docids of rows low..high-1 of a batch (two reads: their offsets, then their bytes)."""
        offsets, data = self._layout[number][1][0]
        bounds = np.frombuffer(os.pread(self._fd, 8 * (high - low + 1), offsets + 8 * low), dtype="<i8")
        text = os.pread(self._fd, int(bounds[-1] - bounds[0]), data + int(bounds[0])) if high > low else b""
        cuts = (bounds - bounds[0]).tolist()
        return [text[start:end] for start, end in zip(cuts[:-1], cuts[1:])]

    def _find(self, key: bytes) -> tuple[int, int] | None:
        """(batch, row) of the docid `key`, or None."""
        block = bisect.bisect_right(self._keys, key) - 1
        if block < 0:
            return None
        number, first = self._blocks[block]
        docids = self._docids(number, first, min(first + KEY_STRIDE, self._layout[number][0]))
        row = bisect.bisect_left(docids, key)
        return (number, first + row) if row < len(docids) and docids[row] == key else None
