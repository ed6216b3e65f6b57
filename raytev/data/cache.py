"""The token cache on disk: fingerprinted tables of Parquet shards that appear only when complete."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raytev.staging import disk_full_as_error, staged_directory, write_json_file

# Bump when the layout or the meaning of a column changes: old tables are then simply not found.
CACHE_FORMAT = 2  # 2: tables carry a `row` column
MANIFEST = "manifest.json"
FILE_HASHES = "input-hashes.json"  # FileHashes' memo, beside the tables
CACHE_OPTION = "--dataset_cache_dir"  # the flag that moves the cache (else $RAYTEV_CACHE_DIR)
RACY_SECONDS = 2.0  # a file modified this recently is hashed but not remembered (see FileHashes)


def default_cache_dir() -> Path:
    """$RAYTEV_CACHE_DIR, else $XDG_CACHE_HOME/raytev/datasets, else ~/.cache/raytev/datasets."""
    if os.environ.get("RAYTEV_CACHE_DIR"):
        return Path(os.environ["RAYTEV_CACHE_DIR"]).expanduser()
    return user_cache_dir() / "datasets"


def user_cache_dir() -> Path:
    """raytev's folder in the user's cache on this machine: $XDG_CACHE_HOME/raytev, else ~/.cache/raytev."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raytev"


def fingerprint(**parts) -> str:
    """A short stable hash of JSON-serializable parts (and the cache format)."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def file_fingerprint(path: str | os.PathLike) -> str:
    """A hash of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FileHashes:
    """file_fingerprint of input files, remembered in a JSON file of the cache folder by (path, size, modification
    time, inode), so an unchanged multi-GB corpus is not read again on every prepare. `rehash` ignores the memo."""

    def __init__(self, memo_file: Path, rehash: bool = False):
        self.memo_file, self.rehash = Path(memo_file), rehash
        try:
            self._memo: dict[str, dict] = json.loads(self.memo_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self._memo = {}
        self._changed = False

    def __call__(self, path: str | os.PathLike) -> str:
        """The file's hash: from the memo while its size and times are unchanged, else read in full."""
        path = Path(path).resolve()
        stat = path.stat()
        signature = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
        remembered = self._memo.get(str(path))
        if not self.rehash and remembered is not None and remembered.get("stat") == signature:
            return remembered["sha256"]
        digest = file_fingerprint(path)
        # A file changed again within its clock's resolution of this read would keep its time: remembered only
        # once its time is safely in the past (git's "racily clean" entries).
        if time.time_ns() - stat.st_mtime_ns > RACY_SECONDS * 1e9:
            self._memo[str(path)] = {"stat": signature, "sha256": digest}
            self._changed = True
        return digest

    def save(self) -> None:
        """Write the memo if it changed, dropping files that no longer exist; concurrent runs may lose each other's
        entries, which then are only hashed again."""
        if self._changed:
            memo = {path: entry for path, entry in self._memo.items() if os.path.exists(path)}
            with disk_full_as_error(self.memo_file, CACHE_OPTION):
                self.memo_file.parent.mkdir(parents=True, exist_ok=True)
                write_json_file(self.memo_file, memo, indent=1, sort_keys=True)
            self._changed = False


@dataclass(frozen=True)
class TokenTable:
    """A complete table of the cache: Parquet shards plus a manifest."""

    path: Path
    manifest: dict

    @property
    def kind(self) -> str:
        """'corpus' or 'queries'."""
        return self.manifest["kind"]

    @property
    def rows(self) -> int:
        """How many rows the table holds."""
        return self.manifest["rows"]

    @property
    def files(self) -> list[str]:
        """The Parquet shards, in row order."""
        return [str(self.path / name) for name in self.manifest["files"]]

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The whole table (or some columns), memory-mapped from the shards."""
        return pa.concat_tables(pq.read_table(file, columns=columns, memory_map=True) for file in self.files)

    def iter_column(self, name: str, batch_rows: int = 4096) -> Iterator[pa.Array]:
        """One column's values in row order, a batch at a time, read (not memory-mapped: mapped pages that were
        read stay resident) so memory holds one batch."""
        for file in self.files:
            with pq.ParquetFile(file) as parquet:
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=[name]):
                    yield batch.column(0)

    @classmethod
    def open(cls, path: Path) -> TokenTable | None:
        """The table stored at `path`, or None if none is complete there."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return cls(path, manifest)


class ParquetShardWriter:
    """Appends Arrow tables into numbered Parquet shards of bounded size."""

    def __init__(self, directory: Path, schema: pa.Schema, rows_per_shard: int = 100_000,
                 row_group_rows: int = 4096):
        self.directory, self.schema = directory, schema
        self.rows_per_shard, self.row_group_rows = rows_per_shard, row_group_rows
        self.files: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0

    def write(self, table: pa.Table) -> None:
        """Append rows, starting a new shard whenever the current one is full."""
        table = table.select(self.schema.names).cast(self.schema)
        while table.num_rows:
            if self._writer is None or self._rows_in_shard >= self.rows_per_shard:
                self._next_shard()
            take = min(table.num_rows, self.rows_per_shard - self._rows_in_shard)
            self._writer.write_table(table.slice(0, take), row_group_size=self.row_group_rows)
            self._rows_in_shard += take
            self.rows += take
            table = table.slice(take)

    def _next_shard(self) -> None:
        self.close()
        name = f"part-{len(self.files):05d}.parquet"
        self._writer = pq.ParquetWriter(str(self.directory / name), self.schema)
        self.files.append(name)
        self._rows_in_shard = 0

    def close(self) -> None:
        """Finish the open shard, if any."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class CacheTransaction:
    """Builds several tables in hidden folders and moves them into place together, or leaves nothing.

    Use as a context manager: on an exception every folder it made (the cache root included, if it
    created it) is removed.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self._stack = ExitStack()
        self._created_dirs: list[Path] = []

    def __enter__(self) -> CacheTransaction:
        self._created_dirs = [parent for parent in [self.cache_dir, *self.cache_dir.parents] if not parent.exists()]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._stack.__enter__()
        # Entered first, so it names the cache folder once the tables' folders are cleaned up.
        self._stack.enter_context(disk_full_as_error(self.cache_dir, CACHE_OPTION))
        return self

    def new_table(self, kind: str, table_fingerprint: str) -> Path:
        """A fresh hidden folder to build the table `kind-fingerprint` in; it moves into place at the end."""
        return self._stack.enter_context(staged_directory(self.cache_dir / f"{kind}-{table_fingerprint}"))

    def commit(self, folder: Path, manifest: dict) -> None:
        """Mark a built table complete: drop its scratch space and write its manifest."""
        shutil.rmtree(folder / "work", ignore_errors=True)
        manifest = {"cache_format": CACHE_FORMAT,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    **manifest}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._stack.__exit__(exc_type, exc, tb)
        finally:
            if exc_type is not None:
                for directory in self._created_dirs:  # innermost first
                    try:
                        directory.rmdir()
                    except OSError:
                        break
