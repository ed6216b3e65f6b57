"""Embeddings on disk: a folder of Parquet shards (`id`, `embedding`) and a manifest; Tevatron pickles on request.

A shard appears under its final name only when complete, and the manifest lists only finished shards, so an
interrupted encoding resumes where it stopped and a reader never sees half a shard. Shard files may be written by
other processes (encoding actors, write_shard_file); one writer, EmbeddingsWriter, keeps the manifest.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytev.errors import RaytevError
from raytev.staging import staged_file, write_json_file

MANIFEST = "manifest.json"
FORMAT = "raytev-embeddings"
VERSION = 1
# Shards are local files (pathlib, rename into place): processes on other machines reach them only through a
# filesystem mounted on every node.
SHARED_PATH_HELP = ("Encoding actors write their shards into {directory} themselves: on a cluster of several machines "
                    "give an output path (and --dataset_cache_dir) on storage every node mounts at the same place "
                    "(NFS, EFS, Filestore, Lustre, a FUSE-mounted bucket).")


@dataclass
class EmbeddingsManifest:
    """What a folder of embeddings holds and how it was made."""

    model: str
    dim: int
    kind: str  # "passages" or "queries"
    pooling: str = ""
    normalize: bool = False
    dtype: str = "float32"  # of the stored vectors
    precision: str = "float32"  # of the model's weights when it encoded: bf16 vectors differ from fp32 ones
    source: str = ""  # the token table (fingerprint) the vectors were computed from
    planned_shards: int = 0
    shards: dict[str, int] = field(default_factory=dict)  # finished shard file -> rows
    format: str = FORMAT
    version: int = VERSION

    @property
    def complete(self) -> bool:
        """Whether every planned shard is finished."""
        return len(self.shards) == self.planned_shards

    @property
    def count(self) -> int:
        """Vectors in the finished shards."""
        return sum(self.shards.values())

    def same_run(self, other: EmbeddingsManifest) -> bool:
        """Whether two manifests describe the same encoding (so one may resume the other)."""
        keys = ("model", "dim", "kind", "pooling", "normalize", "dtype", "precision", "source", "planned_shards")
        return all(getattr(self, key) == getattr(other, key) for key in keys)


def shard_name(index: int) -> str:
    """The file name of shard `index`."""
    return f"shard-{index:05d}.parquet"


def read_manifest(directory: Path) -> EmbeddingsManifest | None:
    """The manifest of an embeddings folder, or None if it has none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    values = json.loads(path.read_text())
    if values.get("format") != FORMAT:
        raise RaytevError(f"{path} is not a raytev embeddings manifest")
    return EmbeddingsManifest(**values)


class EmbeddingsWriter:
    """Writes shards of an embeddings folder one by one; re-opening a folder resumes its unfinished shards."""

    def __init__(self, directory: str | os.PathLike, manifest: EmbeddingsManifest, overwrite: bool = False,
                 replace_other_runs: bool = False):
        self.directory = Path(directory)
        created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._start(manifest, overwrite, replace_other_runs)
        except BaseException:
            if created:  # an empty folder under the output name would read as an encoding that never started
                shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def _start(self, manifest: EmbeddingsManifest, overwrite: bool, replace_other_runs: bool) -> None:
        existing = read_manifest(self.directory)
        if existing is not None and replace_other_runs and not existing.same_run(manifest):
            overwrite = True
        if existing is not None and not overwrite and not existing.same_run(manifest):
            raise RaytevError(
                f"{self.directory} holds embeddings of another run ({existing.model}, {existing.kind}, "
                f"{existing.planned_shards} shards): use another output path, or overwrite it.")
        if existing is not None and not overwrite:
            manifest.shards = {name: rows for name, rows in existing.shards.items()
                               if (self.directory / name).is_file()}
        else:
            for stale in self.directory.glob("shard-*.parquet"):
                stale.unlink()
        self.manifest = manifest
        write_json_file(self.directory / MANIFEST, asdict(self.manifest), indent=1, sort_keys=True)

    def finished(self) -> set[int]:
        """Indexes of the shards already written."""
        return {int(name[len("shard-"):-len(".parquet")]) for name in self.manifest.shards}

    def write_shard(self, index: int, ids: list[str] | pa.Array, vectors: np.ndarray) -> None:
        """Write shard `index` (complete or absent), then record it in the manifest."""
        self.record_shard(index, write_shard_file(self.directory, index, ids, vectors, self.manifest.dim))

    def record_shard(self, index: int, rows: int) -> None:
        """Record in the manifest that shard `index` (`rows` vectors) is in place, written here or elsewhere."""
        name = shard_name(index)
        if not (self.directory / name).is_file():
            raise RaytevError(f"shard {name} was written by a process that sees another filesystem. "
                              f"{SHARED_PATH_HELP.format(directory=self.directory)}")
        self.manifest.shards[name] = rows
        write_json_file(self.directory / MANIFEST, asdict(self.manifest), indent=1, sort_keys=True)

    def remove_unfinished_files(self) -> list[Path]:
        """Delete temporary shard files that no writer will finish; return them. Only once no writer runs.

        A writer killed mid-shard (SIGKILL, a lost node, the OOM killer) leaves its temporary file behind: its shard
        is written again under a new name, and nothing else would ever remove the old one.
        """
        leftovers = sorted(self.directory.glob(".shard-*.parquet.*.tmp"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers


def check_shared_folder(directory: str | os.PathLike) -> None:
    """Fail with what to do unless this process sees the folder (and manifest) an EmbeddingsWriter opened."""
    if not (Path(directory) / MANIFEST).is_file():
        raise RaytevError(f"{directory} (or its {MANIFEST}) is not visible on this node. "
                          f"{SHARED_PATH_HELP.format(directory=directory)}")


def write_shard_file(directory: str | os.PathLike, index: int, ids: list[str] | pa.Array, vectors: np.ndarray,
                     dim: int) -> int:
    """Write shard `index` of `directory` under a temporary name and rename it into place; return its rows.

    Touches no manifest, so encoding actors call it wherever they run; the driver records the shard afterwards.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) != len(ids):
        raise ValueError(f"shard {index}: expected {len(ids)} x {dim} vectors, got {vectors.shape}")
    table = pa.table({"id": pa.array(ids, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)})
    with staged_file(Path(directory) / shard_name(index)) as temporary:
        pq.write_table(table, temporary)
    return len(ids)


@dataclass
class EmbeddingShard:
    """One Parquet shard of embeddings and the manifest of its folder (None for a bare shard file)."""

    path: Path
    manifest: EmbeddingsManifest | None

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids as an object array of str, vectors as float32 [n, dim])."""
        table = pq.read_table(self.path, memory_map=True)
        column = table.column("embedding").combine_chunks()
        dim = column.type.list_size
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
        return np.asarray(table.column("id").to_pylist(), dtype=object), vectors

    @property
    def dim(self) -> int:
        """The vector dimension, from the file's schema."""
        return pq.read_schema(self.path).field("embedding").type.list_size


def find_shards(location: str) -> list[EmbeddingShard]:
    """Every shard named by a folder (with its manifest), a shard file, or a glob of either; checked to agree.

    Fails clearly when nothing matches, an encoding is unfinished, a listed shard is missing, or shards
    disagree on dimension or model.
    """
    matches = sorted(glob.glob(os.path.expanduser(location))) if any(c in location for c in "*?[") \
        else [os.path.expanduser(location)]
    if not matches or not all(os.path.exists(match) for match in matches):
        raise RaytevError(f"no embeddings at {location}: give the folder `raytev encode` wrote, a shard file, "
                          "or a glob of them.")
    shards: list[EmbeddingShard] = []
    for match in map(Path, matches):
        if match.is_dir():
            shards.extend(_folder_shards(match))
        elif match.suffix == ".parquet":
            shards.append(EmbeddingShard(match, read_manifest(match.parent)))
        else:
            raise RaytevError(f"{match} is neither an embeddings folder nor a .parquet shard (Tevatron pickles "
                              "load only with --input_format tevatron-pickle).")
    _check_agreement(shards)
    return shards


def _folder_shards(folder: Path) -> list[EmbeddingShard]:
    manifest = read_manifest(folder)
    if manifest is None:
        raise RaytevError(f"{folder} has no {MANIFEST}: it is not a folder written by `raytev encode`.")
    if not manifest.complete:
        raise RaytevError(f"{folder}: encoding is unfinished ({len(manifest.shards)} of {manifest.planned_shards} "
                          "shards); run the same `raytev encode` again to finish it.")
    missing = [name for name in manifest.shards if not (folder / name).is_file()]
    if missing:
        raise RaytevError(f"{folder}: shards listed in {MANIFEST} are missing: {', '.join(missing[:5])}; "
                          "re-run `raytev encode` with the same output to rewrite them.")
    return [EmbeddingShard(folder / name, manifest) for name in sorted(manifest.shards)]


def _check_agreement(shards: list[EmbeddingShard]) -> None:
    dims = {shard.path: shard.dim for shard in shards}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{path} ({dim})" for path, dim in list(dims.items())[:6])
        raise RaytevError(f"embedding shards disagree on dimension: {listing}; they come from different models.")
    models = {shard.manifest.model for shard in shards if shard.manifest is not None}
    if len(models) > 1:
        raise RaytevError(f"embedding shards come from different models: {', '.join(sorted(models))}; encode "
                          "everything with one model.")


def iter_embeddings(location: str) -> Iterator[tuple[EmbeddingShard, np.ndarray, np.ndarray]]:
    """(shard, ids, vectors) for every shard at `location`, one shard in memory at a time."""
    for shard in find_shards(location):
        ids, vectors = shard.read()
        yield shard, ids, vectors


def load_embeddings(location: str) -> tuple[np.ndarray, np.ndarray]:
    """All ids and vectors at `location`, concatenated in shard order."""
    parts = [(ids, vectors) for _, ids, vectors in iter_embeddings(location)]
    return np.concatenate([ids for ids, _ in parts]), np.concatenate([vectors for _, vectors in parts])


def load_compact(location: str) -> tuple[pa.Array, np.ndarray]:
    """All ids (one Arrow string array) and vectors at `location`, read shard by shard into one preallocated array:
    no Python object per id and no second copy of the vectors (what a search holds for its queries)."""
    shards = find_shards(location)
    counts = [pq.read_metadata(shard.path).num_rows for shard in shards]
    vectors = np.empty((sum(counts), shards[0].dim if shards else 0), dtype=np.float32)
    ids, row = [], 0
    for shard, count in zip(shards, counts):
        table = pq.read_table(shard.path, memory_map=True)
        vectors[row:row + count] = table.column("embedding").combine_chunks().flatten().to_numpy(
            zero_copy_only=False).reshape(count, -1)
        ids.append(table.column("id").combine_chunks().cast(pa.string()))
        row += count
    return (pa.concat_arrays(ids) if ids else pa.array([], pa.string())), vectors


def write_tevatron_pickle(path: str | os.PathLike, vectors: np.ndarray, ids: list[str]) -> None:
    """Tevatron's `(reps, ids)` pickle, for scripts that expect it (written via a temporary name)."""
    with staged_file(path) as temporary, open(temporary, "wb") as handle:
        pickle.dump((np.asarray(vectors, dtype=np.float32), list(ids)), handle, protocol=4)


def read_tevatron_pickle(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Tevatron's `(reps, ids)` pickle as (ids, vectors). Unpickling runs code: only for files you trust."""
    with open(path, "rb") as handle:
        vectors, ids = pickle.load(handle)  # noqa: S301 - an explicit import option, see the docstring
    return np.asarray([str(i) for i in ids], dtype=object), np.asarray(vectors, dtype=np.float32)
