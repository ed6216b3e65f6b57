"""Building indexes from embedding shards: flat equals brute force, ANN specs train and recall, clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter, find_shards
from raytev.errors import RaytevError
from raytev.index.build import (
    build_index,
    centroids_needed,
    draw_training_sample,
    make_faiss_index,
    sized_spec,
    training_sample_size,
)
from raytev.index.faiss_setup import faiss
from raytev.index.search import search
from raytev.index.storage import load_index, save_index


def write_embeddings(folder: Path, vectors: np.ndarray, shard_rows: list[int], model: str = "m") -> str:
    """An embeddings folder of `vectors` split into shards of `shard_rows`, ids "d<row>"; returns its location."""
    assert sum(shard_rows) == len(vectors)
    manifest = EmbeddingsManifest(model=model, dim=vectors.shape[1], kind="passages", planned_shards=len(shard_rows))
    writer = EmbeddingsWriter(folder, manifest)
    bounds = np.cumsum([0, *shard_rows])
    for number, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        writer.write_shard(number, [f"d{row}" for row in range(start, end)], vectors[start:end])
    return str(folder)


def clustered(rows: int, seed: int, dim: int = 32, clusters: int = 20) -> np.ndarray:
    """Unit vectors around fixed random centres, so that nearest neighbours are meaningful for ANN indexes."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((clusters, dim))
    points = centres[rng.integers(0, clusters, rows)] + 0.4 * rng.standard_normal((rows, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force(queries: np.ndarray, vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-depth by the float32-rounded exact inner product, ties to the lower row: (scores, docids)."""
    scores = (queries.astype(np.float64) @ vectors.astype(np.float64).T).astype(np.float32)
    rows = np.broadcast_to(np.arange(len(vectors)), scores.shape)
    order = np.lexsort((rows, -scores), axis=-1)[:, :depth]
    return np.take_along_axis(scores, order, axis=1), np.vectorize(lambda row: f"d{row}", otypes=[object])(order)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def test_flat_search_equals_brute_force(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    queries = np.random.default_rng(1).standard_normal((25, 16)).astype(np.float32)
    index = build_index(write_embeddings(tmp_path / "emb", vectors, [50, 120, 30]))
    scores, docids = search(index, queries, depth=10)
    expected_scores, expected_docids = brute_force(queries, vectors, 10)
    assert np.array_equal(docids, expected_docids)
    assert np.array_equal(scores, expected_scores)
    assert index.info.spec == "Flat" and index.info.ntotal == 200 and index.info.model == "m"
    assert index.ids.to_pylist() == [f"d{row}" for row in range(200)]


@pytest.mark.parametrize("spec, parameters, trained, min_recall", [
    ("HNSW32", "efSearch=64", False, 0.95),
    ("IVF16,Flat", "nprobe=4", True, 0.95),
    ("IVF16,SQ8", "nprobe=4", True, 0.9),
])
def test_ann_index_round_trips_and_recalls(tmp_path, spec, parameters, trained, min_recall):
    vectors, queries = clustered(3000, 0), clustered(100, 1)
    location = write_embeddings(tmp_path / "emb", vectors, [1000, 1500, 500])
    index = build_index(location, spec, seed=3)
    assert (index.info.training_vectors == 3000) == trained and index.info.spec == spec
    scores, docids = search(index, queries, 10, search_parameters=parameters)
    _, truth = brute_force(queries, vectors, 10)
    assert recall_at(docids, truth) >= min_recall
    save_index(index, tmp_path / "index")
    for mmap in (False, True):
        loaded = load_index(tmp_path / "index", mmap=mmap)
        assert loaded.info == index.info and loaded.ids.equals(index.ids)
        again_scores, again_docids = search(loaded, queries, 10, search_parameters=parameters)
        assert np.array_equal(again_docids, docids) and np.array_equal(again_scores, scores)


def test_training_is_seeded_and_draws_across_shards(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    shards = find_shards(write_embeddings(tmp_path / "emb", vectors, [100, 300, 100]))
    sample = draw_training_sample(shards, [100, 300, 100], 200, seed=5, progress=False)
    rows = [int(np.flatnonzero((vectors == row).all(axis=1))[0]) for row in sample]
    assert len(set(rows)) == 200 and min(rows) < 100 and max(rows) >= 400  # distinct, from the first and last shard
    assert np.array_equal(sample, draw_training_sample(shards, [100, 300, 100], 200, seed=5, progress=False))
    assert not np.array_equal(sample, draw_training_sample(shards, [100, 300, 100], 200, seed=6, progress=False))


def test_training_sample_size_follows_the_documented_rule():
    ivf4096 = make_faiss_index("IVF4096,PQ64", 128)
    assert centroids_needed(ivf4096) == 4096
    assert training_sample_size(ivf4096, "IVF4096,PQ64", 10_000_000, "x") == 40 * 4096
    assert centroids_needed(make_faiss_index("PQ16", 128)) == 256
    assert training_sample_size(make_faiss_index("IVF64,Flat", 128), "IVF64,Flat", 10_000_000, "x") == 100_000
    assert training_sample_size(make_faiss_index("IVF64,Flat", 128), "IVF64,Flat", 5_000, "x") == 5_000


def test_ivfauto_sizes_the_lists_within_faiss_advice():
    for total, lists in ((1_000_000, 4096), (1_600_000, 8192), (8_800_000, 16384), (21_000_000, 32768), (3000, 256)):
        assert sized_spec("IVFauto,PQ16", total) == f"IVF{lists},PQ16"
        assert 4 * total ** 0.5 <= lists <= 16 * total ** 0.5 and lists & (lists - 1) == 0
    assert sized_spec("auto", 1_000_000) == sized_spec(" AUTO ", 1_000_000) == "IVF4096,Flat"
    assert sized_spec("OPQ16,IVFauto,PQ16", 1_000_000) == "OPQ16,IVF4096,PQ16"
    assert sized_spec("HNSW32", 10**9) == "HNSW32" and sized_spec("IVF100,Flat", 10**9) == "IVF100,Flat"


def test_an_auto_index_records_the_spec_it_built_and_trains_on_the_bounded_sample(tmp_path):
    vectors, queries = clustered(20_000, 0), clustered(50, 1)
    index = build_index(write_embeddings(tmp_path / "emb", vectors, [12_000, 8_000]), "auto", seed=3, progress=False)
    assert index.info.spec == "IVF1024,Flat" and faiss.extract_index_ivf(index.faiss_index).nlist == 1024
    assert index.info.training_vectors == 20_000  # max(40 x 1024, 100,000), capped at the corpus
    _, docids = search(index, queries, 10, search_parameters="nprobe=64")
    assert recall_at(docids, brute_force(queries, vectors, 10)[1]) >= 0.9


def test_product_quantizers_skip_polysemous_training():
    # Polysemous training serves only Hamming pre-filtering, which search never enables; it tripled training time.
    for spec in ("PQ4", "IVF4,PQ4", "OPQ4,IVF4,PQ4"):
        index = make_faiss_index(spec, 8)
        ivf = faiss.try_extract_index_ivf(index)
        assert faiss.downcast_index(ivf if ivf is not None else index).do_polysemous_training is False


def test_too_few_vectors_to_train_is_explained(tmp_path):
    location = write_embeddings(tmp_path / "emb", np.ones((1000, 8), dtype=np.float32), [1000])
    with pytest.raises(RaytevError, match=r"trains 4,096 centroids, so it needs at least 4,096 vectors .*holds "
                                          r"1,000: use a smaller nlist \(e.g. IVF16,"):
        build_index(location, "IVF4096,Flat")


def test_bad_specs_are_explained():
    with pytest.raises(RaytevError, match="cannot make a FAISS index from spec 'IVFx'"):
        make_faiss_index("IVFx", 8)
    with pytest.raises(RaytevError, match="L2 distance only"):
        make_faiss_index("HNSW32,PQ4", 8)


def test_embedding_errors_from_find_shards_surface(tmp_path):
    write_embeddings(tmp_path / "narrow", np.ones((3, 4), dtype=np.float32), [3])
    write_embeddings(tmp_path / "wide", np.ones((3, 8), dtype=np.float32), [3])
    with pytest.raises(RaytevError, match="disagree on dimension"):
        build_index(str(tmp_path / "*" / "shard-*.parquet"))
    (tmp_path / "narrow" / "shard-00000.parquet").unlink()
    for attempt in (lambda: build_index(str(tmp_path / "narrow")),
                    lambda: search(str(tmp_path / "narrow"), np.ones((1, 4), dtype=np.float32), 3)):
        with pytest.raises(RaytevError, match="shards listed in manifest.json are missing: shard-00000.parquet"):
            attempt()
