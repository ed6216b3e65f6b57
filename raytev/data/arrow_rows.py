"""Arrow IPC stream files written row by row and read batch by batch, so no input is ever held whole in memory.

Reading goes through plain file reads, not a memory map: pages of a mapped file that were read stay in the
process's resident memory until the map is closed, so streaming a large file through a map grows with the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from raytev.staging import staged_file


class ArrowRowWriter:
    """Buffers rows column-wise and writes them as record batches of an Arrow stream file."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 8192):
        self.path, self.schema, self.batch_rows = Path(path), schema, batch_rows
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema)
        self._columns: dict[str, list] = {name: [] for name in schema.names}
        self.rows = 0

    def append(self, **row) -> None:
        """Add one row given as column=value."""
        for name, values in self._columns.items():
            values.append(row[name])
        self.rows += 1
        if len(self._columns[self.schema.names[0]]) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._columns[self.schema.names[0]]:
            self._writer.write_batch(pa.record_batch(self._columns, schema=self.schema))
            self._columns = {name: [] for name in self.schema.names}

    def close(self) -> None:
        """Write what is buffered and close the file."""
        self._flush()
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> ArrowRowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_arrow_rows(path: Path) -> pa.Table:
    """An Arrow stream file written by ArrowRowWriter, memory-mapped (for small files, or columns read once)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def count_arrow_rows(path: Path) -> int:
    """How many rows an Arrow stream file holds, from its batches' headers (the mapped data is not touched)."""
    with pa.memory_map(str(path)) as source:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(source))


def iter_arrow_batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """An Arrow stream file's record batches in order, each read into memory and dropped by the caller."""
    with pa.OSFile(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            yield batch.select(columns) if columns else batch


def iter_arrow_chunks(path: Path, rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """An Arrow stream file's rows in order, as tables of exactly `rows` rows (the last one may hold fewer).

    Two files of equal length read with the same `rows` give aligned chunks, whatever their batches were.
    """
    pending: list[pa.RecordBatch] = []
    buffered = 0
    for batch in iter_arrow_batches(path, columns):
        pending.append(batch)
        buffered += batch.num_rows
        while buffered >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, buffered = rest.to_batches(), rest.num_rows
    if buffered:
        yield pa.Table.from_batches(pending)


def rewrite_arrow_batches(path: Path, change: Callable[[pa.RecordBatch], pa.RecordBatch]) -> None:
    """Replace an Arrow stream file by its batches passed through `change` (which keeps the schema), one at a time."""
    with pa.OSFile(str(path)) as source, staged_file(path) as temporary:
        reader = pa.ipc.open_stream(source)
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(change(batch))
