"""Give training groups their candidates' tokens without holding the passages' tokens: a partitioned join on disk.

Groups name their candidates by passage row (of the corpus table, or of the inline passages tokenized beside the
groups). Every candidate gets a slot: chunk by chunk of groups, the chunk's positives, then its negatives.
Pass 1 writes each (row, slot) request to a spill file per range of passage rows. Pass 2 reads the passages once,
in order, and writes each requested token list to a spill file per range of slots. Pass 3 reads those back one at
a time, puts them in slot order and cuts them into each group's lists. Memory holds one spill partition and one
batch of passages, whatever the corpus size, and every read is sequential.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raytev.data.arrow_rows import iter_arrow_chunks
from raytev.data.tokenize import TOKENS

REQUEST_SCHEMA = pa.schema([("row", pa.int64()), ("slot", pa.int64())])
TAKEN_SCHEMA = pa.schema([("slot", pa.int64()), ("input_ids", TOKENS)])
ROWS_PER_PART = 1 << 16  # passage rows whose requests pass 2 reads together
SPILL_BYTES = 32 << 20  # at most this many token bytes per slot partition (pass 3 reads one whole)
MAX_PARTITIONS = 512  # files open at once in pass 2: past this, partitions grow beyond SPILL_BYTES instead
TAKE_AT_ONCE = 16_384  # token lists copied by one take in pass 2


def join_group_tokens(groups_file: Path, passages: Iterable[pa.Array], max_len: int, work_dir: Path,
                      groups_per_chunk: int) -> Iterator[tuple[pa.ListArray, pa.ListArray]]:
    """(positive_input_ids, negative_input_ids) of each chunk of `groups_per_chunk` groups of `groups_file` (an
    Arrow stream with `positive_rows` and `negative_rows`), in order.

    `passages` yields the passages' token lists (at most `max_len` tokens each) in row order, in batches.
    """
    def row_lists() -> Iterator[tuple[pa.ListArray, pa.ListArray]]:
        for chunk in iter_arrow_chunks(groups_file, groups_per_chunk, ["positive_rows", "negative_rows"]):
            yield chunk.column("positive_rows").combine_chunks(), chunk.column("negative_rows").combine_chunks()

    requests = SpillPartitions(work_dir / "join-requests", REQUEST_SCHEMA)
    chunk_starts = spill_requests(row_lists(), requests)
    partition_chunks = plan_partitions(chunk_starts, max_len)
    taken = SpillPartitions(work_dir / "join-tokens", TAKEN_SCHEMA)
    spill_tokens(passages, requests, taken, chunk_starts[partition_chunks])
    yield from gather_spilled(row_lists(), taken, chunk_starts, partition_chunks)


def spill_requests(row_lists: Iterable[tuple[pa.ListArray, pa.ListArray]], requests: SpillPartitions) -> np.ndarray:
    """Pass 1: send each candidate's (row, slot) to the spill of its range of passage rows; returns the first slot
    of each chunk, then the total."""
    starts = [0]
    for positive, negative in row_lists:
        rows = np.concatenate([flat_values(positive), flat_values(negative)])
        slots = np.arange(starts[-1], starts[-1] + len(rows), dtype=np.int64)
        requests.append(rows // ROWS_PER_PART, lambda order: pa.table({"row": rows[order], "slot": slots[order]}))
        starts.append(starts[-1] + len(rows))
    requests.close()
    return np.array(starts, dtype=np.int64)


def plan_partitions(chunk_starts: np.ndarray, max_len: int) -> np.ndarray:
    """The chunk numbers where slot partitions begin, then the chunk count: whole chunks, each partition at most
    SPILL_BYTES of tokens (counting every list at `max_len`) unless one chunk alone is more."""
    slot_bytes = 4 * max_len + 12  # the tokens, the list offset and the slot number
    chunks = len(chunk_starts) - 1
    budget = max(SPILL_BYTES // slot_bytes, -(-int(chunk_starts[-1]) // MAX_PARTITIONS), 1)
    bounds = [0]
    for chunk in range(1, chunks):
        if chunk_starts[chunk + 1] - chunk_starts[bounds[-1]] > budget:
            bounds.append(chunk)
    return np.array([*bounds, chunks], dtype=np.int64)


def spill_tokens(passages: Iterable[pa.Array], requests: SpillPartitions, taken: SpillPartitions,
                 partition_starts: np.ndarray) -> None:
    """Pass 2: read the passages once, in order, and send each requested token list, with its slot, to the spill
    of the slot's partition (`partition_starts`: each partition's first slot)."""
    start, part = 0, -1
    rows = slots = np.zeros(0, dtype=np.int64)
    for tokens in passages:
        position, end = start, start + len(tokens)
        while position < end:
            if position // ROWS_PER_PART != part:
                part = position // ROWS_PER_PART
                rows, slots = sorted_requests(requests.take(part))
            stop = min(end, (part + 1) * ROWS_PER_PART)
            low, high = np.searchsorted(rows, [position, stop])
            for first in range(low, high, TAKE_AT_ONCE):
                local = rows[first:min(high, first + TAKE_AT_ONCE)] - start
                wanted = slots[first:first + len(local)]
                partitions = np.searchsorted(partition_starts, wanted, side="right") - 1
                taken.append(partitions, lambda order: pa.table({"slot": wanted[order],
                                                                 "input_ids": tokens.take(local[order])}))
            position = stop
        start = end
    taken.close()


def gather_spilled(row_lists: Iterable[tuple[pa.ListArray, pa.ListArray]], taken: SpillPartitions,
                   chunk_starts: np.ndarray, partition_chunks: np.ndarray
                   ) -> Iterator[tuple[pa.ListArray, pa.ListArray]]:
    """Pass 3: each partition's token lists in slot order, cut into its chunks' positive and negative lists."""
    row_lists = iter(row_lists)
    for partition, (first_chunk, end_chunk) in enumerate(zip(partition_chunks, partition_chunks[1:])):
        spilled = taken.take(partition)
        slots, tokens = spilled.column("slot").to_numpy(), spilled.column("input_ids").combine_chunks()
        del spilled  # one copy of the tokens at a time, besides the one being made
        first_slot, end_slot = chunk_starts[first_chunk], chunk_starts[end_chunk]
        order = np.argsort(slots)
        if not np.array_equal(slots[order], np.arange(first_slot, end_slot)):
            raise RuntimeError(f"group token join: partition {partition} lacks token lists it should have")
        tokens = tokens.take(order)
        for chunk in range(first_chunk, end_chunk):
            positive, negative = next(row_lists)
            offset = chunk_starts[chunk] - first_slot
            positives = len(positive.flatten())
            yield (nest(positive, tokens.slice(offset, positives)),
                   nest(negative, tokens.slice(offset + positives, len(negative.flatten()))))


def nest(row_lists: pa.ListArray, tokens: pa.Array) -> pa.ListArray:
    """`tokens` (one list per candidate) grouped as `row_lists` groups the candidates."""
    offsets = pc.subtract(row_lists.offsets, row_lists.offsets[0])  # a slice's offsets do not start at 0
    return pa.ListArray.from_arrays(offsets, tokens)


def flat_values(lists: pa.ListArray) -> np.ndarray:
    """The items of every list, in order, as int64."""
    return lists.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def sorted_requests(requests: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(rows, slots) of a part's requests, by row."""
    rows = requests.column("row").to_numpy()
    order = np.argsort(rows, kind="stable")
    return rows[order], requests.column("slot").to_numpy()[order]


class SpillPartitions:
    """Tables appended to numbered partition files (Arrow streams) in a folder; each partition is read back whole,
    once, and its file removed."""

    def __init__(self, directory: Path, schema: pa.Schema):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.schema = directory, schema
        self._open: dict[int, tuple[pa.NativeFile, pa.ipc.RecordBatchStreamWriter]] = {}

    def append(self, partitions: np.ndarray, rows: Callable[[np.ndarray], pa.Table]) -> None:
        """Append rows to the partitions given for them: `rows(order)` builds them in `order`, which puts equal
        partitions together."""
        if not len(partitions):
            return
        order = np.argsort(partitions, kind="stable")
        table, ordered = rows(order).cast(self.schema), partitions[order]
        starts = np.flatnonzero(np.diff(ordered)) + 1
        for low, high in zip([0, *starts], [*starts, len(ordered)]):
            self._writer(int(ordered[low])).write_table(table.slice(low, high - low))

    def _writer(self, partition: int) -> pa.ipc.RecordBatchStreamWriter:
        if partition not in self._open:
            sink = pa.OSFile(str(self._path(partition)), "wb")
            self._open[partition] = (sink, pa.ipc.new_stream(sink, self.schema))
        return self._open[partition][1]

    def close(self) -> None:
        """Finish every partition's file; call before reading any."""
        for sink, writer in self._open.values():
            writer.close()
            sink.close()
        self._open.clear()

    def take(self, partition: int) -> pa.Table:
        """A partition's rows in the order appended (none if it got none), read into memory; its file is removed."""
        path = self._path(partition)
        if not path.exists():
            return self.schema.empty_table()
        with pa.OSFile(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
        path.unlink()
        return table

    def _path(self, partition: int) -> Path:
        return self.directory / f"{partition:06d}.arrow"
