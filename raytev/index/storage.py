"""An index on disk: a folder of index.faiss, ids.parquet (ids in add order) and index.json, written all at once.

Mapped, not read (load_index(mmap=True), what serving does): FAISS memory-maps the file, so an index costs no copy in
the process and every process on a node that maps it shares its pages through the page cache.
- IO_FLAG_MMAP_IFC (faiss >= 1.11) maps the codes of flat indexes (IndexFlatCodes) and HNSW. IO_FLAG_MMAP, the older
  flag, maps only IVF lists: a flat index read with it is copied whole into memory.
- IVF indexes keep IO_FLAG_MMAP (their lists become OnDiskInvertedLists over the file, on every faiss). IO_FLAG_MMAP_IFC
  maps them too, but faiss 1.11-1.14 (faiss-gpu-cu12's newest is 1.14.1) first allocates every list in memory and
  only then swaps in the mapped views: the whole index for a moment. 1.15 does it one list at a time.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raytev.errors import RaytevError
from raytev.index.dense_index import FORMAT, DenseIndex, IndexInfo
from raytev.index.faiss_setup import faiss
from raytev.staging import staged_directory

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
INFO_FILE = "index.json"
MMAP_CODES = getattr(faiss, "IO_FLAG_MMAP_IFC", None)  # None before faiss 1.11


def save_index(index: DenseIndex, folder: str | os.PathLike) -> Path:
    """Write `index` to `folder` (replacing one there); readers see the old folder or the complete new one."""
    with staged_directory(folder) as staging:
        faiss.write_index(index.faiss_index, str(staging / INDEX_FILE))
        pq.write_table(pa.table({"id": index.ids}), staging / IDS_FILE)
        (staging / INFO_FILE).write_text(json.dumps(asdict(index.info), indent=1, sort_keys=True) + "\n")
    return Path(folder)


def is_index_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding a saved index (it has index.json)."""
    return (Path(path) / INFO_FILE).is_file()


def load_index(folder: str | os.PathLike, mmap: bool = False) -> DenseIndex:
    """The index saved in `folder`; `mmap` maps the FAISS file instead of reading it (no copy in memory)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RaytevError(f"no index at {folder}: give the folder `raytev index` (save_index) wrote.")
    missing = [name for name in (INFO_FILE, INDEX_FILE, IDS_FILE) if not (folder / name).is_file()]
    if missing:
        raise RaytevError(f"{folder} is not a complete raytev index: {', '.join(missing)} missing; build the index "
                          "again into this folder.")
    info = _read_info(folder / INFO_FILE)
    try:
        index = faiss.read_index(str(folder / INDEX_FILE), read_flags(info.spec, folder) if mmap else 0)
    except RuntimeError as error:
        raise RaytevError(f"{folder / INDEX_FILE} is not a readable FAISS index ({str(error).strip()[-120:]}); "
                          "build the index again.") from None
    ids = pq.read_table(folder / IDS_FILE, columns=["id"]).column("id").combine_chunks().cast(pa.large_string())
    if not index.ntotal == len(ids) == info.ntotal:
        raise RaytevError(f"{folder}: {INDEX_FILE} holds {index.ntotal:,} vectors, {IDS_FILE} {len(ids):,} ids and "
                          f"{INFO_FILE} says {info.ntotal:,}; the files come from different builds: build again.")
    return DenseIndex(index, ids, info)


def read_info(folder: str | os.PathLike) -> IndexInfo:
    """The IndexInfo of a saved index (its index.json), without loading the index."""
    return _read_info(Path(folder) / INFO_FILE)


def read_flags(spec: str, folder: Path) -> int:
    """The FAISS read flag that maps an index of `spec` without copying it (see the module's docstring)."""
    if "IVF" in spec or "IMI" in spec:  # index_factory names every inverted-file index with one of the two
        return faiss.IO_FLAG_MMAP
    if MMAP_CODES is None:
        warnings.warn(f"faiss {faiss.__version__} cannot memory-map a {spec} index (IO_FLAG_MMAP_IFC came in faiss "
                      f"1.11): {folder} is read into memory instead. Upgrade faiss-cpu or faiss-gpu-cu12.",
                      stacklevel=3)
        return faiss.IO_FLAG_MMAP
    return MMAP_CODES


def _read_info(path: Path) -> IndexInfo:
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RaytevError(f"{path} is not valid JSON ({error}); build the index again.") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise RaytevError(f"{path} is not a raytev index description (format {FORMAT!r} expected).")
    known = {field.name for field in fields(IndexInfo)}
    return IndexInfo(**{key: value for key, value in values.items() if key in known})
