"""An index on disk: a folder of index.faiss, ids.parquet (ids in add order) and index.json, written all at once."""

from __future__ import annotations

import json
import os
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
    """The index saved in `folder`; `mmap` maps the FAISS file instead of reading it (cheap for IVF indexes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RaytevError(f"no index at {folder}: give the folder `raytev index` (save_index) wrote.")
    missing = [name for name in (INFO_FILE, INDEX_FILE, IDS_FILE) if not (folder / name).is_file()]
    if missing:
        raise RaytevError(f"{folder} is not a complete raytev index: {', '.join(missing)} missing; build the index "
                          "again into this folder.")
    info = _read_info(folder / INFO_FILE)
    try:
        index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_MMAP if mmap else 0)
    except RuntimeError as error:
        raise RaytevError(f"{folder / INDEX_FILE} is not a readable FAISS index ({str(error).strip()[-120:]}); "
                          "build the index again.") from None
    ids = pq.read_table(folder / IDS_FILE, columns=["id"]).column("id").combine_chunks().cast(pa.large_string())
    if not index.ntotal == len(ids) == info.ntotal:
        raise RaytevError(f"{folder}: {INDEX_FILE} holds {index.ntotal:,} vectors, {IDS_FILE} {len(ids):,} ids and "
                          f"{INFO_FILE} says {info.ntotal:,}; the files come from different builds: build again.")
    return DenseIndex(index, ids, info)


def _read_info(path: Path) -> IndexInfo:
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RaytevError(f"{path} is not valid JSON ({error}); build the index again.") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise RaytevError(f"{path} is not a raytev index description (format {FORMAT!r} expected).")
    known = {field.name for field in fields(IndexInfo)}
    return IndexInfo(**{key: value for key, value in values.items() if key in known})
