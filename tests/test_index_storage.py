"""Index folders: everything needed to search again, written all at once, and clear errors when incomplete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytev.errors import RaytevError
from raytev.index.build import build_index
from raytev.index.faiss_setup import faiss
from raytev.index.search import search
from raytev.index.storage import load_index, save_index
from test_index_build import clustered, write_embeddings


def mapped_file(address: int) -> str | None:
    """The file this process has mapped at `address` (None: anonymous memory); NotImplemented without /proc."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return NotImplemented
    for line in lines:
        fields = line.split(maxsplit=5)
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 and fields[5].startswith("/") else None
    return None


def test_saved_index_holds_faiss_ids_and_description(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    location = write_embeddings(tmp_path / "emb", vectors, [15, 25])
    index = build_index(location)
    folder = save_index(index, tmp_path / "index")
    assert sorted(path.name for path in folder.iterdir()) == ["ids.parquet", "index.faiss", "index.json"]
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    info = json.loads((folder / "index.json").read_text())
    assert {key: info[key] for key in ("spec", "dim", "ntotal", "model", "kind", "metric", "embeddings")} == {
        "spec": "Flat", "dim": 8, "ntotal": 40, "model": "m", "kind": "passages", "metric": "inner_product",
        "embeddings": str(tmp_path / "emb")}
    ids = pq.read_table(folder / "ids.parquet")
    assert pa.types.is_large_string(ids.schema.field("id").type)
    assert ids.column("id").to_pylist() == [f"d{row}" for row in range(40)]
    queries = vectors[:3] + 0.01
    assert np.array_equal(search(folder, queries, 5)[1], search(index, queries, 5)[1])


def test_saving_again_replaces_the_folder(tmp_path):
    small = build_index(write_embeddings(tmp_path / "a", np.ones((3, 4), dtype=np.float32), [3]))
    large = build_index(write_embeddings(tmp_path / "b", np.ones((9, 4), dtype=np.float32), [9]))
    save_index(small, tmp_path / "index")
    save_index(large, tmp_path / "index")
    assert load_index(tmp_path / "index").info.ntotal == 9
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b", "index"]


def test_missing_or_inconsistent_indexes_are_explained(tmp_path):
    with pytest.raises(RaytevError, match="no index at .*nowhere"):
        load_index(tmp_path / "nowhere")
    index = build_index(write_embeddings(tmp_path / "emb", np.ones((6, 4), dtype=np.float32), [6]))
    folder = save_index(index, tmp_path / "index")
    pq.write_table(pa.table({"id": ["x"]}), folder / "ids.parquet")
    with pytest.raises(RaytevError, match="index.faiss holds 6 vectors, ids.parquet 1 ids"):
        load_index(folder)
    (folder / "ids.parquet").unlink()
    with pytest.raises(RaytevError, match="not a complete raytev index: ids.parquet missing"):
        load_index(folder)
    (folder / "index.json").write_text('{"format": "something-else"}')
    (folder / "index.faiss").write_bytes(b"")
    pq.write_table(pa.table({"id": ["x"]}), folder / "ids.parquet")
    with pytest.raises(RaytevError, match="not a raytev index description"):
        load_index(folder)


@pytest.mark.parametrize("spec", ["Flat", "HNSW16", "IVF8,Flat", "IVF8,PQ4"])
def test_a_mapped_index_searches_like_one_read_into_memory(tmp_path, spec):
    vectors = clustered(600, seed=0, dim=16)
    queries = clustered(20, seed=1, dim=16)
    folder = save_index(build_index(write_embeddings(tmp_path / "emb", vectors, [600]), spec), tmp_path / "index")
    mapped, read = load_index(folder, mmap=True), load_index(folder)
    for got, want in zip(search(mapped, queries, 10, search_parameters="nprobe=4" if "IVF" in spec else ""),
                         search(read, queries, 10, search_parameters="nprobe=4" if "IVF" in spec else "")):
        assert np.array_equal(got, want)
    if spec == "Flat" and mapped_file(0) is not NotImplemented:
        assert mapped_file(mapped.flat_vectors().ctypes.data) == str(folder / "index.faiss")
        assert not faiss.downcast_index(mapped.faiss_index).codes.is_owned
        assert mapped_file(read.flat_vectors().ctypes.data) != str(folder / "index.faiss")
