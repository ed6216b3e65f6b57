"""Run files: every format written as documented; Tevatron and TREC read back through read_run unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from raytev.data.runs import read_run
from raytev.errors import ProblemLog, RaytevError
from raytev.index.build import build_index
from raytev.data.runs import write_run
from raytev.index.search import search
from test_index_build import write_embeddings


@pytest.fixture
def results(tmp_path):
    """Search results with tied scores (integer vectors) and a row padded with a missing hit."""
    rng = np.random.default_rng(0)
    vectors = rng.integers(-1, 2, (50, 4)).astype(np.float32) * np.float32(0.1)
    queries = rng.integers(-1, 2, (6, 4)).astype(np.float32)
    scores, docids = search(build_index(write_embeddings(tmp_path / "emb", vectors, [20, 30])), queries, 12)
    docids[5, 11], scores[5, 11] = None, -np.inf
    return [f"q{i}" for i in range(6)], scores, docids


@pytest.mark.parametrize("format, name", [("tevatron", "run.tsv"), ("trec", "run.trec"), ("tevatron", "run.tsv.gz")])
def test_runs_read_back_with_identical_rankings(tmp_path, results, format, name):
    query_ids, scores, docids = results
    assert len(set(scores[0].tolist())) < 12  # the ranking has ties, which must keep their order
    assert write_run(tmp_path / name, query_ids, scores, docids, format) == 6 * 12 - 1
    problems = ProblemLog()
    run = read_run(tmp_path / name, problems)
    assert not problems and list(run) == query_ids
    for query_id, row_scores, row_docids in zip(query_ids, scores, docids):
        kept = [(docid, score) for docid, score in zip(row_docids, row_scores) if docid is not None]
        assert [(entry.docid, np.float32(entry.score)) for entry in run[query_id]] == kept
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_trec_and_msmarco_lines(tmp_path):
    scores = np.array([[2.5, 0.1]], dtype=np.float32)
    docids = np.array([["d7", "d3"]], dtype=object)
    write_run(tmp_path / "run.trec", ["q1"], scores, docids, "trec", tag="exp")
    assert (tmp_path / "run.trec").read_text() == "q1 Q0 d7 1 2.5 exp\nq1 Q0 d3 2 0.1 exp\n"
    write_run(tmp_path / "run.msmarco", ["q1"], scores, docids, "msmarco")
    assert (tmp_path / "run.msmarco").read_text() == "q1\td7\t1\nq1\td3\t2\n"
    write_run(tmp_path / "run.tsv", ["q1"], scores, docids)
    assert (tmp_path / "run.tsv").read_text() == "q1\td7\t2.5\nq1\td3\t0.1\n"


def test_unwritable_runs_are_refused_without_leaving_files(tmp_path):
    scores = np.array([[1.0]], dtype=np.float32)
    with pytest.raises(RaytevError, match="docid 'a b' contains whitespace"):
        write_run(tmp_path / "run.tsv", ["q1"], scores, np.array([["a b"]], dtype=object))
    with pytest.raises(RaytevError, match="unknown run format 'csv'"):
        write_run(tmp_path / "run.tsv", ["q1"], scores, np.array([["a"]], dtype=object), "csv")
    assert list(tmp_path.iterdir()) == []
