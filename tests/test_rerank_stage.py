"""`raytev rerank`: every pair scored as CrossEncoder scores it (1e-4), each query's candidates best first, metrics
before and after; a killed actor loses and repeats no query; bad runs and folders refused with nothing written."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_bert, tiny_tokenizer, write_jsonl

import raytev
from raytev.errors import DataError, RaytevError
from raytev.modeling.reranker import Reranker

WORDS = "the cat dog animal small what is barks a".split()
QUERIES, PASSAGES, RUN_DEPTH = 150, 300, 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A BEIR folder, a run of 12 candidates per query, and a reranker folder with a random (seeded) head."""
    root = tmp_path_factory.mktemp("rerank")
    rng = random.Random(0)
    corpus = {f"d{i}": (f"t {i}", " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))) for i in range(PASSAGES)}
    queries = {f"q{i}": " ".join(rng.choices(WORDS, k=5)) for i in range(QUERIES)}
    beir = root / "beir"
    write_jsonl(beir / "corpus.jsonl", [{"_id": docid, "title": title, "text": text}
                                        for docid, (title, text) in corpus.items()])
    write_jsonl(beir / "queries.jsonl", [{"_id": qid, "text": text} for qid, text in queries.items()])
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{(i * 7 + 13 * (i % 10)) % PASSAGES}\t1\n" for i in range(QUERIES)))
    run = root / "run.txt"
    run.write_text("".join(f"q{i}\td{(i * 7 + j * 13) % PASSAGES}\t{10 - j * 0.5}\n"
                           for i in range(QUERIES) for j in range(RUN_DEPTH)))
    torch.manual_seed(0)
    reranker = Reranker.from_pretrained(str(save_tiny_bert(root / "encoder")), trained=False)
    reranker.save_pretrained(root / "reranker", tokenizer=tiny_tokenizer())
    return {"root": root, "beir": beir, "run": run, "reranker": root / "reranker", "corpus": corpus,
            "queries": queries}


def rerank(world, output: Path, **flags):
    options = dict(model_name_or_path=str(world["reranker"]), dataset_path=str(world["beir"]), dataset_split="test",
                   run=str(world["run"]), save_ranking_to=str(output), rerank_depth=10, rerank_max_len=32,
                   num_actors=0)
    return raytev.rerank(**{**options, **flags})


def outputs(folder: Path) -> list[str]:
    """What a test's folder holds besides its token cache."""
    return sorted(path.name for path in folder.iterdir() if path.name != "raytev-cache")


def read_lines(path: Path) -> dict[str, list[tuple[str, float]]]:
    ranked = defaultdict(list)
    for line in path.read_text().splitlines():
        query_id, docid, score = line.split()
        ranked[query_id].append((docid, float(score)))
    return dict(ranked)


def test_every_pair_is_scored_as_cross_encoder_scores_it(world, tmp_path):
    from sentence_transformers import CrossEncoder

    result = rerank(world, tmp_path / "reranked.txt")
    ranked = read_lines(tmp_path / "reranked.txt")
    assert result.queries == QUERIES and result.pairs == QUERIES * 10 and len(ranked) == QUERIES
    first_stage = {f"q{i}": {f"d{(i * 7 + j * 13) % PASSAGES}" for j in range(10)} for i in range(QUERIES)}
    assert all({docid for docid, _ in hits} == first_stage[qid] for qid, hits in ranked.items())  # its top 10 only
    assert all([score for _, score in hits] == sorted((score for _, score in hits), reverse=True)
               for hits in ranked.values())
    pairs = [(world["queries"][qid], " ".join(world["corpus"][docid])) for qid, hits in ranked.items()
             for docid, _ in hits]
    theirs = CrossEncoder(str(world["reranker"]), device="cpu", max_length=32).predict(pairs, batch_size=64)
    ours = [score for hits in ranked.values() for _, score in hits]
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-4
    # Each query's one relevant passage is in its top 10: reranking moves it, never loses it.
    assert result.first_stage["R@100"] == result.reranked["R@100"] == 1.0
    assert result.first_stage["nDCG@10"] != pytest.approx(result.reranked["nDCG@10"])
    assert "nDCG@10" in result.summary() and "reranked" in result.summary()
    assert outputs(tmp_path) == ["reranked.txt"]  # the parts are gone


def kill_reranker_after_first_part(parts: Path, kills: list, timeout: float = 120) -> None:
    """SIGKILL the reranking actor once its first part file is in place (mid-way through the run)."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        done = list(parts.glob("part-*.tsv")) if parts.is_dir() else []
        victims = [child for child in psutil.Process().children(recursive=True) if done and
                   (child.cmdline() or [""])[0].startswith("ray::ShardReranker")]
        if victims:
            for victim in victims:
                os.kill(victim.pid, signal.SIGKILL)
            kills.append(len(done))
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_a_killed_reranking_actor_loses_and_repeats_no_query(ray_session, world, tmp_path):
    reference = read_lines(rerank(world, tmp_path / "in-process.txt").output)
    output, kills = tmp_path / "killed.txt", []
    killer = threading.Thread(target=kill_reranker_after_first_part,
                              args=(output.with_name("killed.txt.parts"), kills))
    killer.start()
    result = rerank(world, output, num_actors=1, cpus_per_actor=0.5, per_device_eval_batch_size=16)
    killer.join()
    assert kills and kills[0] < 3, f"the actor was not killed mid-run: {kills}"
    lines = output.read_text().splitlines()
    assert len(lines) == QUERIES * 10 and result.queries == QUERIES
    ranked = read_lines(output)
    assert list(ranked) == list(reference)  # every query once, in the run's order
    for qid, hits in ranked.items():
        assert [docid for docid, _ in hits] == [docid for docid, _ in reference[qid]] or \
            {docid for docid, _ in hits} == {docid for docid, _ in reference[qid]}
        assert max(abs(a[1] - b[1]) for a, b in zip(sorted(hits), sorted(reference[qid]))) <= 1e-5


def test_bad_runs_and_folders_are_refused_with_nothing_written(world, tmp_path):
    output = tmp_path / "out.txt"
    bad_run = tmp_path / "bad-run.txt"
    bad_run.write_text(world["run"].read_text() + "q999\td1\t1.0\nq0\tmissing-doc\t99.0\n")
    with pytest.raises(DataError) as error:
        rerank(world, output, run=str(bad_run))
    text = str(error.value)
    assert f"{bad_run}:{QUERIES * RUN_DEPTH + 1}" in text and "query id 'q999' is not in" in text
    assert f"{bad_run}:{QUERIES * RUN_DEPTH + 2}" in text and "docid 'missing-doc' is not in" in text
    with pytest.raises(RaytevError, match=f"at most {RUN_DEPTH} passages per query.*--rerank_depth {RUN_DEPTH}"):
        rerank(world, output, rerank_depth=50)
    with pytest.raises(RaytevError, match="no sequence-classification head"):
        rerank(world, output, model_name_or_path=str(world["root"] / "encoder"))
    assert outputs(tmp_path) == [bad_run.name]  # no run, no parts folder


@pytest.mark.slow
def test_the_pipeline_reranks_its_run_when_given_a_reranker(ray_session, world, tmp_path):
    from helpers import make_tiny_beir

    from raytev.cli import main

    beir, out = make_tiny_beir(tmp_path), tmp_path / "out"
    assert main(["pipeline", "--model_name_or_path", str(world["root"] / "encoder"), "--dataset_path", str(beir),
                 "--split", "train", "--output_dir", str(out), "--depth", "5", "--num_actors", "0",
                 "--reranker_name_or_path", str(world["reranker"]), "--rerank_depth", "4",
                 "--rerank_max_len", "32"]) == 0
    reranked = read_lines(out / "reranked.txt")
    first = read_lines(out / "run.txt")
    assert set(reranked) == set(first) and all(len(hits) == 4 for hits in reranked.values())
    assert all({docid for docid, _ in hits} == {docid for docid, _ in first[qid][:4]} for qid, hits in reranked.items())
    import json

    assert set(json.loads((out / "reranked_metrics.json").read_text())) >= {"nDCG@10", "MAP"}


def test_the_demo_table_and_chart_show_the_reranked_column(tmp_path):
    from raytev.workflows.demo import DemoResult, comparison_table, save_chart

    metrics = {name: value for name, value in (("nDCG@10", 0.6), ("MRR@10", 0.5), ("R@100", 0.9), ("MAP", 0.5))}
    result = DemoResult("scifact", metrics, {**metrics, "nDCG@10": 0.7}, tmp_path / "chart.png", tmp_path, tmp_path,
                        1.0, [], {**metrics, "nDCG@10": 0.75})
    table = comparison_table(result.columns).splitlines()
    assert table[0].split() == ["scifact", "test", "zero-shot", "fine-tuned", "reranked", "change"]
    assert table[1].split() == ["nDCG@10", "0.6000", "0.7000", "0.7500", "+0.1000"]
    assert save_chart(result.columns, result.chart, "t").read_bytes()[:4] == b"\x89PNG"
