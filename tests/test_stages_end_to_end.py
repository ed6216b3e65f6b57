"""The retrieval commands end to end through the CLI on real Ray: pipeline, search, index, eval, mine."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from helpers import make_tiny_beir, save_tiny_bert

from raytev.cli import main
from raytev.data.runs import read_run
from raytev.encoding.embeddings import load_embeddings
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


@pytest.fixture(scope="module")
def mined_by_cli(pipeline_output):
    """`raytev mine` on the tiny BEIR folder's train split, encoding in-process (--num_actors 0)."""
    mined = pipeline_output["root"] / "mined.jsonl"
    beir, model = pipeline_output["beir"], pipeline_output["model"]
    assert main(["mine", "--model_name_or_path", str(model), "--dataset_path", str(beir), "--split", "train",
                 "--save_to", str(mined), "--negative_rank_start", "1", "--negative_rank_end", "4",
                 "--n_sample", "3", "--num_actors", "0"]) == 0
    return mined


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


def test_search_and_shard_search_reproduce_the_pipeline_run(pipeline_output, tmp_path, monkeypatch):
    import raytev.index.search as searching
    from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter

    out = pipeline_output["out"]
    expected = rankings(out / "run.txt")
    # The pipeline's 12 passages as 3 shards of 4, so that "one shard at a time" differs from "all at once".
    ids, vectors = load_embeddings(str(out / "corpus_embeddings"))
    writer = EmbeddingsWriter(tmp_path / "shards", EmbeddingsManifest(model="m", dim=vectors.shape[1], kind="passages",
                                                                      planned_shards=3))
    for shard in range(3):
        writer.write_shard(shard, ids[shard * 4:(shard + 1) * 4].tolist(), vectors[shard * 4:(shard + 1) * 4])
    built = []  # the rows of every in-memory index search builds
    index_shards = searching.index_shards
    monkeypatch.setattr(searching, "index_shards", lambda shards, *a, **k: built.append(
        sum(len(shard.read()[0]) for shard in shards)) or index_shards(shards, *a, **k))
    for extra, name, indexes in (([], "flat.txt", [12]), (["--shard_search"], "shards.txt", [4, 4, 4]),
                                 (["--batch_size", "1"], "b1.txt", [12])):
        built.clear()
        assert main(["search", "--query_reps", str(out / "query_embeddings"), "--passage_reps", str(tmp_path / "shards"),
                     "--depth", "5", "--save_ranking_to", str(tmp_path / name), *extra]) == 0
        assert rankings(tmp_path / name) == expected
        assert built == indexes, name  # --shard_search holds one shard at a time; without it, one index of all
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
    from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter

    writer = EmbeddingsWriter(tmp_path / "q7", EmbeddingsManifest(model="other", dim=7, kind="queries",
                                                                  planned_shards=1))
    writer.write_shard(0, ["q0"], np.ones((1, 7), dtype=np.float32))
    capsys.readouterr()
    assert main(["search", "--query_reps", str(tmp_path / "q7"), "--passage_reps", str(tmp_path / "hnsw"),
                 "--save_ranking_to", str(tmp_path / "bad.txt")]) == 1
    error = capsys.readouterr().err
    assert "holds 32-dimensional vectors but the queries have 7" in error and not (tmp_path / "bad.txt").exists()


def test_mine_writes_groups_that_train_on(mined_by_cli):
    mined = mined_by_cli
    groups = [json.loads(line) for line in mined.read_text().splitlines()]
    original, fresh = groups[:len(groups) // 2], groups[len(groups) // 2:]
    assert [g["query_id"] for g in original] == [g["query_id"] for g in fresh]
    for group in fresh:
        positives = {p["docid"] for p in group["positive_passages"]}
        negatives = [p["docid"] for p in group["negative_passages"]]
        assert len(negatives) == 3 and not positives & set(negatives)
    # The file is valid training data for raytev itself.
    assert main(["data", "validate", "--dataset_path", str(mined)]) == 0


def test_python_api_gives_what_the_commands_give(pipeline_output, mined_by_cli, tmp_path, capsys):
    """Every command through the Python API (keyword arguments named as the flags) against the CLI's output."""
    import raytev

    out, beir, model = pipeline_output["out"], pipeline_output["beir"], pipeline_output["model"]
    common = dict(model_name_or_path=str(model), dataset_path=str(beir), dataset_split="train")

    prepared = raytev.prepare(**common)
    assert prepared.corpus.rows == 12 and prepared.queries.rows == 2
    capsys.readouterr()
    assert main(["data", "prepare", "--model_name_or_path", str(model), "--dataset_path", str(beir)]) == 0
    printed = capsys.readouterr().out  # the same two tables, found in the cache
    assert str(prepared.corpus.path) in printed and str(prepared.queries.path) in printed
    assert "cache hit: nothing to do" in printed

    report = raytev.validate(dataset_path=str(beir), num_negatives=2)
    assert main(["data", "validate", "--dataset_path", str(beir), "--num_negatives", "2"]) == 0
    assert capsys.readouterr().out.split(" (")[0] == report.summary().split(" (")[0]  # all but the seconds

    result = raytev.encode(**common, encode_is_query=True, encode_output_path=str(tmp_path / "queries"), num_actors=1)
    assert result.rows == 2
    api_ids, api_vectors = load_embeddings(str(tmp_path / "queries"))
    cli_ids, cli_vectors = load_embeddings(str(out / "query_embeddings"))
    assert api_ids.tolist() == cli_ids.tolist() and np.array_equal(api_vectors, cli_vectors)

    built = raytev.build_index(passage_reps=str(out / "corpus_embeddings"), index_output_path=str(tmp_path / "index"))
    assert (built.info.spec, built.info.ntotal) == ("Flat", 12)
    assert json.loads((tmp_path / "index" / "index.json").read_text())["ntotal"] == json.loads(
        (out / "index" / "index.json").read_text())["ntotal"]

    ranked = raytev.search(query_reps=str(tmp_path / "queries"), passage_reps=str(tmp_path / "index"), depth=5,
                           save_ranking_to=str(tmp_path / "run.txt"))
    expected = rankings(out / "run.txt")
    assert {qid: [(d, round(s, 5)) for d, s in hits] for qid, hits in ranked.rankings.items()} == expected
    assert rankings(tmp_path / "run.txt") == expected

    metrics = raytev.evaluate(run=str(tmp_path / "run.txt"), qrels=str(beir / "qrels" / "train.tsv"))
    assert metrics["nDCG@10"] == pytest.approx(json.loads((out / "metrics.json").read_text())["nDCG@10"])

    mined = raytev.mine(**common, save_to=str(tmp_path / "mined.jsonl"), negative_rank_start=1, negative_rank_end=4,
                        n_sample=3, num_actors=0)
    assert mined.output.read_text() == mined_by_cli.read_text()

    served = raytev.serve(index=str(out / "index"), model_name_or_path=str(model), num_shards=1, print_config=True)
    capsys.readouterr()
    assert main(["serve", "--index", str(out / "index"), "--model_name_or_path", str(model), "--print_config"]) == 0
    assert capsys.readouterr().out.strip() == served.summary().strip()

    with pytest.raises(raytev.errors.RaytevError, match="unknown keys"):
        raytev.search(query_reps="q", passage_reps="p", top_k=3)
    with pytest.raises(raytev.errors.RaytevError, match="missing required flag:\n  --save_ranking_to"):
        raytev.search(query_reps="q", passage_reps="p")
    with pytest.raises(raytev.errors.RaytevError, match="depth must be a whole number, got '5'"):
        raytev.search(query_reps="q", passage_reps="p", save_ranking_to="r", depth="5")


def test_the_pipeline_api_and_the_demo_evaluate_as_the_pipeline_command_does(pipeline_output, tmp_path):
    """`raytev pipeline` (CLI) and `raytev.pipeline` on the test split with the demo's settings give the same run
    and metrics, and `raytev.demo` on the same tiny model and BEIR folder starts from exactly those metrics, then
    fine-tunes, evaluates again and charts. Encoding runs in-process here (--num_actors 0): the actor pool is
    what the other tests of this module run."""
    import raytev

    beir, model = pipeline_output["beir"], pipeline_output["model"]
    demo_settings = dict(passage_max_len=256, bf16=True, per_device_eval_batch_size=64, num_actors=0)
    assert main(["pipeline", "--model_name_or_path", str(model), "--dataset_name", str(beir), "--split", "test",
                 "--output_dir", str(tmp_path / "cli"),
                 *(word for name, value in demo_settings.items() for word in (f"--{name}", str(value)))]) == 0
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    piped = raytev.pipeline(model_name_or_path=str(model), dataset_name=str(beir), dataset_split="test",
                            output_dir=str(tmp_path / "api"), **demo_settings)
    assert dict(piped.metrics) == cli_metrics
    assert rankings(tmp_path / "api" / "run.txt") == rankings(tmp_path / "cli" / "run.txt")

    result = raytev.demo(output_dir=str(tmp_path / "demo"), model_name_or_path=str(model), dataset_name=str(beir),
                         per_device_train_batch_size=1, train_group_size=2, negative_rank_start=1,
                         negative_rank_end=5, num_actors=0)
    assert result.before == cli_metrics
    assert set(result.after) == set(result.before) and result.chart.read_bytes()[:4] == b"\x89PNG"
    assert (result.model_dir / "raytev_model.json").is_file() and (result.index_dir / "index.json").is_file()
    assert "raytev serve --model_name_or_path" in result.summary()
