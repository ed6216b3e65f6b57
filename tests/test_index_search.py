"""Search: sharded search equals one flat index exactly (scores, docids, ties), depth past the corpus, batches."""

from __future__ import annotations

import numpy as np
import pytest
from test_index_build import brute_force, write_embeddings

from raytev.errors import RaytevError
from raytev.index.build import build_index
from raytev.index.search import search, shard_search
from raytev.index.storage import save_index


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
        found[parameters] = [docid for docid, _ in search_files(config).rankings["d0"]]
    assert len(found["nprobe=1"]) == 100 and len(found["nprobe=2"]) == 150
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


def retrieval(**options):
    """The --depth/--batch_size/--shard_search flags as the search stage reads them."""
    from raytev.config.sections import RetrievalSection

    return RetrievalSection(**options)


@pytest.mark.parametrize("run_format", ["tevatron", "trec"])
def test_a_streamed_run_has_the_bytes_of_the_run_ranked_at_once(tmp_path, run_format):
    # One flat index, embedding shards one at a time (scratch files), and an IVF index whose rows find fewer hits:
    # written 7 queries at a time, each is the run written from the whole result held in memory.
    from raytev.data.runs import write_run
    from raytev.index.files import write_searched_run

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    queries = rng.standard_normal((45, 16)).astype(np.float32)
    query_ids = np.array([f"q{row}" for row in range(45)], dtype=object)
    location = write_embeddings(tmp_path / "emb", vectors, [150, 3, 247])
    ivf = tmp_path / "ivf"
    save_index(build_index(location, "IVF8,Flat"), ivf)
    cases = {"flat": (location, {}, search), "shards": (location, {"shard_search": True}, shard_search),
             "ivf": (str(ivf), {"search_parameters": "nprobe=1"}, search)}
    for name, (passages, flags, whole) in cases.items():
        streamed, reference = tmp_path / f"{name}-streamed.txt", tmp_path / f"{name}-whole.txt"
        lines = write_searched_run(streamed, query_ids, queries, passages, retrieval(depth=80, batch_size=7, **flags),
                                   run_format)
        scores, docids = whole(passages, queries, 80, -1, flags.get("search_parameters", ""))
        assert lines == write_run(reference, query_ids, scores, docids, run_format) > 0
        assert streamed.read_bytes() == reference.read_bytes(), name
    assert np.equal(search(str(ivf), queries, 80, -1, "nprobe=1")[1], None).any()  # IVF rows do come up short
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []  # no scratch left


def test_search_memory_is_one_batch_whatever_the_query_count(tmp_path):
    # Held as arrays, 4x the queries held 4x the hits (object docids are the bulk); streamed, the peak is a batch.
    import tracemalloc

    from raytev.index.files import write_searched_run

    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((2000, 8)).astype(np.float32)
    location = write_embeddings(tmp_path / "emb", vectors, [1000, 1000])
    peaks = {}
    for count in (2000, 8000):
        queries = rng.standard_normal((count, 8)).astype(np.float32)
        query_ids = np.array([f"q{row}" for row in range(count)], dtype=object)
        for shards in (False, True):
            tracemalloc.start()
            write_searched_run(tmp_path / f"run-{count}-{shards}.txt", query_ids, queries, location,
                               retrieval(depth=50, batch_size=500, shard_search=shards))
            peaks[count, shards] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    for shards in (False, True):
        assert peaks[8000, shards] < 1.3 * peaks[2000, shards], peaks


def test_a_search_that_fails_midway_leaves_no_run_and_no_scratch(tmp_path):
    from raytev.index.files import write_searched_run

    rng = np.random.default_rng(1)
    first = write_embeddings(tmp_path / "a", rng.standard_normal((50, 8)).astype(np.float32), [50])
    second = write_embeddings(tmp_path / "b", rng.standard_normal((50, 4)).astype(np.float32), [50])
    run = tmp_path / "out" / "run.txt"
    with pytest.raises(RaytevError, match="4-dimensional vectors but the queries have 8"):
        write_searched_run(run, np.array(["q0", "q1"], dtype=object), rng.standard_normal((2, 8)).astype(np.float32),
                           [first, second], retrieval(depth=5, batch_size=1, shard_search=True))
    assert list((tmp_path / "out").iterdir()) == []
