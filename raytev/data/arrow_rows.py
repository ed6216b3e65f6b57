"""Stream rows into an Arrow IPC file in fixed-size batches, so no input is ever held whole in memory."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa


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
    """An Arrow stream file written by ArrowRowWriter, memory-mapped."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()
