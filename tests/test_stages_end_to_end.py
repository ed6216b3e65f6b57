"""The retrieval commands end to end through the CLI on real Ray: pipeline, search, index, eval, mine."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from helpers import make_tiny_beir, save_tiny_bert

from raytev.cli import main
from raytev.data.embeddings import load_embeddings
from raytev.data.relevance import read_run
from raytev.errors import ProblemLog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_output(tmp_path_factory, ray_session):
    """A tiny model evaluated on a tiny BEIR folder by `raytev pipeline`."""
    root = tmp_path_factory.mktemp("stages")
    # The token cache of these tests stays in their folder (the autouse cache fixture is per test).
    patch = pytest.MonkeyPatch()
    patch.setenv("RAYTEV_CACHE_DIR", str(root / "cache"))
    beir = make_tiny_beir(root)
    model = save_tiny_bert(root / "model")
    out = root / "out"
    assert main(["pipeline", "--model_name_or_path", str(model), "--dataset_path", str(beir), "--split", "train",
                 "--output_dir", str(out), "--depth", "5", "--num_actors", "1"]) == 0
    yield {"root": root, "beir": beir, "model": model, "out": out}
    patch.undo()


def rankings(path):
    """{query: [(docid, score rounded)]} of a run file."""
    problems = ProblemLog()
    run = read_run(path, problems)
    problems.raise_if_any()
    return {qid: [(entry.docid, round(entry.score, 5)) for entry in entries] for qid, entries in run.items()}


def test_pipeline_writes_every_stage_and_metrics(pipeline_output, capsys):
    out = pipeline_output["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"nDCG@10", "MRR@10", "R@100", "MAP"}
    run = rankings(out / "run.txt")
    assert set(run) == {"q0", "q1"} and all(len(ranked) == 5 for ranked in run.values())
    ids, vectors = load_embeddings(str(out / "corpus_embeddings"))
    assert len(ids) == 12 and vectors.shape[0] == 12
    assert (out / "index" / "index.json").exists()


def test_search_and_shard_search_reproduce_the_pipeline_run(pipeline_output, tmp_path):
    out = pipeline_output["out"]
    expected = rankings(out / "run.txt")
    for extra, name in (([], "flat.txt"), (["--shard_search"], "shards.txt"), (["--batch_size", "1"], "b1.txt")):
        assert main(["search", "--query_reps", str(out / "query_embeddings"), "--passage_reps",
                     str(out / "corpus_embeddings"), "--depth", "5", "--save_ranking_to", str(tmp_path / name),
                     *extra]) == 0
        assert rankings(tmp_path / name) == expected
    # A saved index is a passage source too.
    assert main(["search", "--query_reps", str(out / "query_embeddings"), "--passage_reps", str(out / "index"),
                 "--depth", "5", "--save_ranking_to", str(tmp_path / "index.txt")]) == 0
    assert rankings(tmp_path / "index.txt") == expected


def test_search_reads_tevatron_pickles(pipeline_output, tmp_path):
    out = pipeline_output["out"]
    for name in ("query_embeddings", "corpus_embeddings"):
        ids, vectors = load_embeddings(str(out / name))
        with open(tmp_path / f"{name}.pkl", "wb") as handle:
            pickle.dump((vectors, ids.tolist()), handle)
    assert main(["search", "--query_reps", str(tmp_path / "query_embeddings.pkl"), "--passage_reps",
                 str(tmp_path / "corpus_embeddings.pkl"), "--input_format", "tevatron-pickle", "--depth", "5",
                 "--save_ranking_to", str(tmp_path / "run.txt")]) == 0
    assert rankings(tmp_path / "run.txt") == rankings(out / "run.txt")


def test_eval_json_equals_the_pipeline_metrics(pipeline_output, capsys):
    out, beir = pipeline_output["out"], pipeline_output["beir"]
    capsys.readouterr()
    assert main(["eval", "--run", str(out / "run.txt"), "--qrels", str(beir / "qrels" / "train.tsv"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads((out / "metrics.json").read_text())
    assert printed.keys() >= expected.keys()
    assert all(printed[key] == pytest.approx(expected[key]) for key in expected)


def test_ann_index_command_and_mismatched_queries(pipeline_output, tmp_path, capsys):
    out = pipeline_output["out"]
    assert main(["index", "--passage_reps", str(out / "corpus_embeddings"), "--index_output_path",
                 str(tmp_path / "hnsw"), "--index_factory", "HNSW8"]) == 0
    assert json.loads((tmp_path / "hnsw" / "index.json").read_text())["spec"] == "HNSW8"
    # Queries of another dimension are refused with the reason, and no run is written.
    from raytev.data.embeddings import EmbeddingsManifest, EmbeddingsWriter

    writer = EmbeddingsWriter(tmp_path / "q7", EmbeddingsManifest(model="other", dim=7, kind="queries",
                                                                  planned_shards=1))
    writer.write_shard(0, ["q0"], np.ones((1, 7), dtype=np.float32))
    capsys.readouterr()
    assert main(["search", "--query_reps", str(tmp_path / "q7"), "--passage_reps", str(tmp_path / "hnsw"),
                 "--save_ranking_to", str(tmp_path / "bad.txt")]) == 1
    assert "7" in capsys.readouterr().err and not (tmp_path / "bad.txt").exists()


def test_mine_writes_groups_that_train_on(pipeline_output, tmp_path):
    beir, model = pipeline_output["beir"], pipeline_output["model"]
    mined = tmp_path / "mined.jsonl"
    assert main(["mine", "--model_name_or_path", str(model), "--dataset_path", str(beir), "--split", "train",
                 "--save_to", str(mined), "--negative_rank_start", "1", "--negative_rank_end", "4",
                 "--n_sample", "3", "--num_actors", "1"]) == 0
    groups = [json.loads(line) for line in mined.read_text().splitlines()]
    original, fresh = groups[:len(groups) // 2], groups[len(groups) // 2:]
    assert [g["query_id"] for g in original] == [g["query_id"] for g in fresh]
    for group in fresh:
        positives = {p["docid"] for p in group["positive_passages"]}
        negatives = [p["docid"] for p in group["negative_passages"]]
        assert len(negatives) == 3 and not positives & set(negatives)
    # The file is valid training data for raytev itself.
    assert main(["data", "validate", "--dataset_path", str(mined)]) == 0


def test_python_api_gives_what_the_commands_give(pipeline_output, tmp_path):
    import raytev

    out, beir, model = pipeline_output["out"], pipeline_output["beir"], pipeline_output["model"]
    result = raytev.encode(model_name_or_path=str(model), dataset_path=str(beir), dataset_split="train",
                           encode_is_query=True, encode_output_path=str(tmp_path / "queries"), num_actors=1)
    assert result.rows == 2
    info = raytev.build_index(passage_reps=str(out / "corpus_embeddings"), index_output_path=str(tmp_path / "index"))
    assert (info.spec, info.ntotal) == ("Flat", 12)
    ranked = raytev.search(query_reps=str(tmp_path / "queries"), passage_reps=str(tmp_path / "index"), depth=5,
                           save_ranking_to=str(tmp_path / "run.txt"))
    expected = rankings(out / "run.txt")
    assert {qid: [(d, round(s, 5)) for d, s in hits] for qid, hits in ranked.items()} == expected
    assert rankings(tmp_path / "run.txt") == expected
    metrics = raytev.evaluate(run=str(tmp_path / "run.txt"), qrels=str(beir / "qrels" / "train.tsv"))
    assert metrics["nDCG@10"] == pytest.approx(json.loads((out / "metrics.json").read_text())["nDCG@10"])
    with pytest.raises(raytev.errors.RaytevError, match="unknown keys"):
        raytev.search(query_reps="q", passage_reps="p", top_k=3)
