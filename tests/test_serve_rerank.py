"""Retrieve-then-rerank on a real Ray Serve on 127.0.0.1: text queries' top hits come back in the reranker's order
with its scores (those of the same reranker in this process, 1e-5), the rest and vector queries keep the retriever's;
bad requests get their 4xx; a hot swap of the reranker under load loses no request and restarts no replica."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import ray
import requests
import torch
from helpers import free_port, save_tiny_bert, tiny_tokenizer
from test_serve import QUERIES, write_index

from raytev.index.search import search
from raytev.modeling.reranker import Reranker
from raytev.serving import SearchClient
from raytev.serving.app import config_from_args, serve_config, swapped
from raytev.serving.reranker import load_reranker
from raytev.serving.service import deploy

pytestmark = pytest.mark.slow
DEPTH = 6


def save_reranker(root, seed: int) -> str:
    torch.manual_seed(seed)
    reranker = Reranker.from_pretrained(str(save_tiny_bert(root / f"encoder-{seed}")), trained=False)
    reranker.save_pretrained(root / f"reranker-{seed}", tokenizer=tiny_tokenizer())
    return str(root / f"reranker-{seed}")


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    """Query encoder, one flat shard, the corpus, and a reranker of --rerank_depth 6 in 2 replicas."""
    from ray import serve

    root = tmp_path_factory.mktemp("serve-rerank")
    model = str(save_tiny_bert(root / "model"))
    indexed = write_index(root, "first", model, "d", 40)
    rerankers = [save_reranker(root, seed) for seed in (1, 2)]
    port = free_port()
    config = serve_config(config_from_args({
        "index": indexed["index"], "model_name_or_path": model, "corpus": indexed["corpus"], "app_name": "rerank",
        "port": port, "reranker_name_or_path": rerankers[0], "rerank_depth": DEPTH, "rerank_max_len": 32,
        "reranker_replicas": 2}))
    deploy(config)
    yield {"url": f"http://127.0.0.1:{port}", "config": config, "rerankers": rerankers, "indexed": indexed,
           "model": model}
    serve.shutdown()


def expected(reranker: str, texts: list[str], retrieved: list[list[dict]]) -> list[np.ndarray]:
    loaded = load_reranker({"reranker_name_or_path": reranker, "rerank_max_len": 32})
    return loaded.rerank(texts, [[f"{hit['title']} {hit['text']}" for hit in row[:DEPTH]] for row in retrieved])


def test_text_queries_are_reranked_and_say_which_stage_scored(service):
    client = SearchClient(service["url"])
    retrieved = client.search(QUERIES, k=10, rerank=False)
    assert all(hit["stage"] == "retriever" for row in retrieved for hit in row)
    reranked = client.search(QUERIES, k=10)
    for row, before, scores in zip(reranked, retrieved, expected(service["rerankers"][0], QUERIES, retrieved)):
        assert [hit["stage"] for hit in row] == ["reranker"] * DEPTH + ["retriever"] * 4
        order = np.argsort(-scores, kind="stable")
        assert [hit["docid"] for hit in row[:DEPTH]] == [before[i]["docid"] for i in order]
        np.testing.assert_allclose([hit["score"] for hit in row[:DEPTH]], scores[order], rtol=0, atol=1e-5)
        assert row[DEPTH:] == before[DEPTH:]  # past the depth: the retriever's hits as they were
    # Vector queries have no text to rerank with: the retriever's ranking, as `raytev search` gives it.
    vectors = np.ones((1, 32), np.float32)
    scores, docids = search(service["indexed"]["index"], vectors, 5)
    row = client.search(vectors=vectors, k=5)[0]
    assert [hit["docid"] for hit in row] == docids[0].tolist() and {hit["stage"] for hit in row} == {"retriever"}
    info = client.info()
    assert (info["reranker"], info["rerank_depth"], info["swap_errors"]) == (service["rerankers"][0], DEPTH, [])


def test_bad_requests_still_get_a_4xx(service):
    url = f"{service['url']}/search"
    for body, says in (({"queries": ["cat"], "rerank": "yes"}, "rerank"), ({"queries": []}, "is empty"),
                       ({"queries": ["cat"], "k": 0}, "k must be between")):
        answer = requests.post(url, json=body, timeout=60)
        assert answer.status_code == 422 and says in answer.json()["error"], answer.text
    assert requests.post(url, data=b'{"queries": [', timeout=60).status_code == 400


def test_a_reranker_swap_under_load_loses_no_request(service):
    url, rerankers = service["url"], service["rerankers"]
    failures, answers, stop = [], [], threading.Event()

    def keep_asking():
        client = SearchClient(url)
        while not stop.is_set():
            try:
                answers.append(client.search(QUERIES[:2], k=DEPTH))
            except Exception as error:  # every failure counts
                failures.append(repr(error))

    def replicas() -> set[str]:
        return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                if actor["name"].startswith("SERVE_REPLICA::rerank#")}

    before_replicas = replicas()
    worker = threading.Thread(target=keep_asking)
    worker.start()
    client = SearchClient(url)
    try:
        time.sleep(1.0)
        before = len(answers)
        deploy(swapped(service["config"], "rerank", reranker_name_or_path=rerankers[1]))
        deadline = time.monotonic() + 60
        while client.info()["reranker"] != rerankers[1]:
            assert time.monotonic() < deadline, "the new reranker was not served within 60 s"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    assert not failures and len(answers) > before + 4, (failures[:3], before, len(answers))
    assert replicas() == before_replicas and len(before_replicas) == 5  # ingress, encoder, shard, 2 rerankers
    # Once both replicas switched, scores are the new reranker's.
    retrieved = client.search(QUERIES, k=DEPTH, rerank=False)
    new = expected(rerankers[1], QUERIES, retrieved)
    deadline = time.monotonic() + 30
    while True:
        scores = [sorted((hit["score"] for hit in row), reverse=True) for row in client.search(QUERIES, k=DEPTH)]
        if all(np.allclose(got, np.sort(want)[::-1], atol=1e-5) for got, want in zip(scores, new)):
            break
        assert time.monotonic() < deadline, "a replica still answers with the old reranker"
        time.sleep(0.5)
