"""Search: sharded search equals one flat index exactly (scores, docids, ties), depth past the corpus, batches."""

from __future__ import annotations

import numpy as np
import pytest

from raytev.errors import RaytevError
from raytev.index.build import build_index
from raytev.index.search import search, shard_search
from raytev.index.storage import save_index
from test_index_build import brute_force, write_embeddings


def test_shard_search_equals_one_flat_index_exactly(tmp_path):
    # At dim 768 and 300 queries BLAS rounds the same query-passage pair differently in different matrix shapes,
    # so merging FAISS's own shard scores would not match; the 3-row shard is shallower than the depth.
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((7000, 768)).astype(np.float32)
    queries = rng.standard_normal((300, 768)).astype(np.float32)
    sizes = [1000, 3, 1497, 4500]
    location = write_embeddings(tmp_path / "emb", vectors, sizes)
    whole_scores, whole_docids = search(build_index(location), queries, depth=50)
    shard_scores, shard_docids = shard_search(location, queries, depth=50)
    assert np.array_equal(shard_docids, whole_docids) and np.array_equal(shard_scores, whole_scores)
    expected_scores, expected_docids = brute_force(queries, vectors, 50)
    assert np.array_equal(whole_docids, expected_docids) and np.array_equal(whole_scores, expected_scores)
    # Saved per-shard indexes, searched as a list, merge the same way.
    folders = []
    for number, shard in enumerate(sorted((tmp_path / "emb").glob("shard-*.parquet"))):
        folders.append(save_index(build_index(str(shard)), tmp_path / f"index-{number}"))
    folder_scores, folder_docids = shard_search(folders, queries, depth=50, batch_size=64)
    assert np.array_equal(folder_docids, whole_docids) and np.array_equal(folder_scores, whole_scores)


def test_ties_rank_by_global_position_in_every_path(tmp_path):
    # Vectors of -1/0/1 give exact, heavily tied scores: which tied docs make the cut is decided by position.
    rng = np.random.default_rng(3)
    vectors = rng.integers(-1, 2, (600, 6)).astype(np.float32)
    queries = rng.integers(-1, 2, (40, 6)).astype(np.float32)
    location = write_embeddings(tmp_path / "emb", vectors, [100, 7, 293, 200])
    expected_scores, expected_docids = brute_force(queries, vectors, 25)
    for scores, docids in (search(build_index(location), queries, 25), shard_search(location, queries, 25),
                           search(build_index(location), queries, 25, batch_size=3)):
        assert np.array_equal(docids, expected_docids) and np.array_equal(scores, expected_scores)


def test_depth_beyond_the_corpus_drops_missing_hits(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    queries = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    location = write_embeddings(tmp_path / "emb", vectors, [10, 20])
    for scores, docids in (search(build_index(location), queries, 100), shard_search(location, queries, 100)):
        assert scores.shape == docids.shape == (4, 30)
        assert all(sorted(row) == sorted(f"d{i}" for i in range(30)) for row in docids.tolist())
        assert np.all(np.diff(scores, axis=1) <= 0)


def test_ann_rows_with_fewer_hits_are_padded_at_the_end(tmp_path):
    # Two far-apart clusters: with nprobe=1 a query only sees its own cluster's list.
    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal(5, 1, (300, 8)), rng.normal(-5, 1, (100, 8))]).astype(np.float32)
    index = build_index(write_embeddings(tmp_path / "emb", vectors, [400]), "IVF2,Flat")
    scores, docids = search(index, np.stack([vectors[0], vectors[350]]), 200, search_parameters="nprobe=1")
    assert docids.shape == (2, 200) and None not in docids[0].tolist()
    assert docids[1].tolist().count(None) == 100 and docids[1, 99] is not None and docids[1, 100] is None
    assert np.isneginf(scores[1, 100:]).all() and set(docids[1, :100]) == {f"d{row}" for row in range(300, 400)}


def test_queries_must_fit_the_index(tmp_path):
    location = write_embeddings(tmp_path / "emb", np.ones((5, 8), dtype=np.float32), [5])
    with pytest.raises(RaytevError, match="holds 8-dimensional vectors but the queries have 4"):
        search(location, np.ones((2, 4), dtype=np.float32), 3)
    other = write_embeddings(tmp_path / "other", np.ones((5, 8), dtype=np.float32), [5], model="m2")
    with pytest.raises(RaytevError, match="encoded with m2, earlier parts with m"):
        shard_search([location, other], np.ones((2, 8), dtype=np.float32), 3)
    with pytest.raises(RaytevError, match="cannot set 'nprobe=4' on a IndexHNSWFlat"):
        search(build_index(location, "HNSW32"), np.ones((2, 8), dtype=np.float32), 3, search_parameters="nprobe=4")


def test_search_command_sets_search_parameters(tmp_path):
    # The same two-cluster IVF index as above, saved and searched by `raytev search`: nprobe=1 sees the query's list
    # only (100 hits: columns no query filled are dropped), nprobe=2 both lists (the exact ranking).
    from raytev.config.fields import from_flags
    from raytev.config.stages import SearchConfig
    from raytev.index.files import search_files

    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal(5, 1, (300, 8)), rng.normal(-5, 1, (100, 8))]).astype(np.float32)
    index_dir = tmp_path / "index"
    save_index(build_index(write_embeddings(tmp_path / "emb", vectors, [400]), "IVF2,Flat"), index_dir)
    query_reps = write_embeddings(tmp_path / "queries", vectors[[350]], [1])
    found = {}
    for parameters in ("nprobe=1", "nprobe=2"):
        config = from_flags(SearchConfig, {"query_reps": query_reps, "passage_reps": str(index_dir), "depth": 150,
                                           "save_ranking_to": str(tmp_path / "run.txt"),
                                           "search_parameters": parameters}, "test")
        found[parameters] = search_files(config).docids[0].tolist()
    assert len(found["nprobe=1"]) == 100 and len(found["nprobe=2"]) == 150 and None not in found["nprobe=2"]
    assert found["nprobe=2"][:100] == search(str(tmp_path / "emb"), vectors[[350]], 100)[1][0].tolist()


def test_a_collapsed_model_does_not_rescore_the_whole_corpus(tmp_path, monkeypatch):
    # Every passage vector the same up to rounding (an untrained or collapsed model): every score ties within the
    # rounding slack, so settling ties exactly would fetch all 20,000 rows for every query; the fetch stops at 4096.
    import raytev.index.search as search_module

    rng = np.random.default_rng(0)
    vectors = (1 + 1e-7 * rng.standard_normal((20_000, 16))).astype(np.float32)
    index = build_index(write_embeddings(tmp_path / "emb", vectors, [20_000]))
    fetched = []
    rescore = search_module.exact_scores
    monkeypatch.setattr(search_module, "exact_scores",
                        lambda queries, rows, candidates: fetched.append(candidates.shape[1]) or
                        rescore(queries, rows, candidates))
    scores, docids = search(index, rng.standard_normal((30, 16)).astype(np.float32), 10)
    assert docids.shape == (30, 10) and None not in docids.tolist()
    assert max(fetched) == 4096 and np.all(np.diff(scores, axis=1) <= 0)
