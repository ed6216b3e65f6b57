"""The search service on a real Ray Serve on 127.0.0.1: text and vector search equal the batch path, two shards
equal one flat index, bad requests get their 4xx, the token is enforced, a killed replica and a hot swap lose no
request, a swap to a bad index is refused, and a one-minute soak has no error and flat memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import requests
from helpers import free_port, save_tiny_bert, write_jsonl

from raytev.config.sections import DataSection, ModelSection
from raytev.data.prepare import prepare_data
from raytev.encoding.batch_encoder import BatchEncoder
from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter
from raytev.index.build import build_index
from raytev.index.search import search
from raytev.index.storage import save_index
from raytev.model.resolved import resolve_model
from raytev.serving import SearchClient, SearchError
from raytev.serving.app import config_from_args, serve_config, swapped
from raytev.serving.service import deploy

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # soak.py

TOKEN = "s3cret-token"
WORDS = ["cat", "dog", "animal", "small", "barks", "the"]
QUERIES = ["what is a cat", "small dog barks", "the animal", "a dog and a cat"]


def encode_path(model: str, path, cache, is_query: bool) -> tuple[list[str], np.ndarray]:
    """ids and vectors as `raytev encode` makes them: its tokenization (token cache) and its BatchEncoder."""
    resolved = resolve_model(ModelSection(model_name_or_path=model))
    prepared = prepare_data(DataSection(dataset_path=str(path), encode_is_query=is_query, dataset_cache_dir=str(cache)),
                            resolved)
    table = prepared.queries if is_query else prepared.corpus
    column = "query_id" if is_query else "docid"
    rows = table.read(["row", column, "input_ids"])
    encoder = BatchEncoder(resolved, is_query, column, 32, table.manifest["settings"]["pad_token_id"])
    out = encoder({"row": rows.column("row").to_numpy(), column: rows.column(column).to_numpy(zero_copy_only=False),
                   "input_ids": rows.column("input_ids").to_pylist()})
    return [str(i) for i in out["id"]], out["embedding"]


def write_index(root, name: str, model: str, prefix: str, count: int) -> dict:
    """A corpus of `count` passages (many with the same text: exact score ties across shard boundaries), its
    embeddings in two files and its saved flat index."""
    texts = [f"{WORDS[i % 4]} {WORDS[(i * 3) % 6]}" for i in range(count)]
    corpus = write_jsonl(root / f"{name}.jsonl", [{"docid": f"{prefix}{i}", "title": f"title {i}", "text": text}
                                                  for i, text in enumerate(texts)])
    ids, vectors = encode_path(model, corpus, root / "cache", is_query=False)
    writer = EmbeddingsWriter(root / f"{name}-emb", EmbeddingsManifest(model=model, dim=vectors.shape[1],
                                                                       kind="passages", planned_shards=2))
    half = count // 3  # uneven files, so that shard rows cross a file boundary
    writer.write_shard(0, ids[:half], vectors[:half])
    writer.write_shard(1, ids[half:], vectors[half:])
    folder = save_index(build_index(str(root / f"{name}-emb"), progress=False), root / f"{name}-index")
    return {"corpus": str(corpus), "embeddings": str(root / f"{name}-emb"), "index": str(folder)}



@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    """One application (model, corpus, a saved flat index cut into 2 shards, a token) on 127.0.0.1."""
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    model = str(save_tiny_bert(root / "model"))
    first, second = write_index(root, "first", model, "d", 60), write_index(root, "second", model, "n", 45)
    queries = write_jsonl(root / "queries.jsonl", [{"query_id": f"q{i}", "query": q} for i, q in enumerate(QUERIES)])
    _, query_vectors = encode_path(model, queries, root / "cache", is_query=True)
    port = free_port()
    config = serve_config(config_from_args({
        "index": first["index"], "num_shards": 2, "model_name_or_path": model, "corpus": first["corpus"],
        "app_name": "search", "route_prefix": "/search-app", "port": port, "auth_token": TOKEN, "max_batch_size": 8}))
    started = time.perf_counter()
    deploy(config)
    print(f"serve deployed in {time.perf_counter() - started:.1f} s")
    yield {"url": f"http://127.0.0.1:{port}/search-app", "config": config, "model": model, "first": first,
           "second": second, "query_vectors": query_vectors}
    serve.shutdown()


def post(url: str, body=None, data=None, token: str | None = None, **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(url, json=body, data=data, headers=headers, timeout=60)


def hits_of(results) -> tuple[list, list]:
    return [[hit["docid"] for hit in row] for row in results], [[hit["score"] for hit in row] for row in results]


def test_text_and_vector_queries_get_the_batch_search_results(service):
    # Two shards, each holding half of the saved flat index, against `raytev search` on the whole index.
    url, first, vectors = service["url"], service["first"], service["query_vectors"]
    client = SearchClient(url, token=TOKEN)
    for k in (7, 25, 100):  # 25 cuts through runs of tied passages; 100 is past the 60 there are
        expected_scores, expected_docids = search(first["index"], vectors, k)
        answer = post(f"{url}/search", {"vectors": vectors.tolist(), "k": k}, token=TOKEN)
        assert answer.status_code == 200, answer.text
        docids, scores = hits_of(answer.json()["results"])
        assert docids == expected_docids.tolist() and np.array_equal(np.float32(scores), expected_scores)
        # Texts are encoded by the service as `raytev encode --encode_is_query` encodes them.
        results = client.search(QUERIES, k=k)
        docids, scores = hits_of(results)
        assert docids == expected_docids.tolist()
        np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-5)
    assert len(docids[0]) == 60
    assert results[0][0]["title"].startswith("title ") and results[0][0]["text"].split()[0] in WORDS


def test_info_describes_model_index_and_shards(service):
    info = SearchClient(service["url"], token=TOKEN).info()
    assert (info["model"], info["shards"], info["ntotal"], info["dim"], info["index_type"]) == \
        (service["model"], 2, 60, 32, "Flat")
    assert [part["rows"] for part in info["shard_parts"]] == [[0, 30], [30, 60]]
    assert info["corpus"] == service["first"]["corpus"] and info["text_queries"] and info["swap_errors"] == []


def test_bad_requests_get_a_4xx_and_the_service_keeps_serving(service):
    url = f"{service['url']}/search"
    cases = [
        (dict(data=b'{"queries": ["a cat"'), 400, "malformed JSON"),
        (dict(body={"k": 5}), 422, "either"),
        (dict(body={"queries": ["  "]}), 422, "empty or only whitespace"),
        (dict(body={"queries": []}), 422, "is empty"),
        (dict(body={"queries": ["cat"] * 65}), 422, "at most 64"),
        (dict(body={"queries": ["cat"], "k": 0}), 422, "k must be between 1 and 1000"),
        (dict(body={"queries": ["cat"], "k": 1001}), 422, "k must be between 1 and 1000"),
        (dict(body={"queries": ["cat"], "k": "3"}), 422, "k: Input should be a valid integer"),
        (dict(body={"vectors": [[0.5] * 31]}), 422, "have 31 dimensions but the index holds 32"),
        (dict(data=b'{"vectors": [[' + b"NaN, " * 31 + b"1.0]]}"), 422, "NaN or infinity"),
        (dict(data=b'{"vectors": [[' + b"1.0, " * 31 + b"Infinity]]}"), 422, "NaN or infinity"),
        (dict(data=b" " * (5 << 20)), 413, "at most 4,194,304"),
    ]
    for request, status, says in cases:
        answer = post(url, **request, token=TOKEN)
        assert answer.status_code == status and says in answer.json()["error"], (request.get("body"), answer.text)
        good = post(url, {"queries": ["what is a cat"], "k": 3}, token=TOKEN)
        assert good.status_code == 200 and len(good.json()["results"][0]) == 3
    with pytest.raises(SearchError, match="HTTP 422: k must be between"):
        SearchClient(service["url"], token=TOKEN).search(["cat"], k=0)


def test_the_token_is_required_when_set(service):
    url, vectors = service["url"], service["query_vectors"][:1].tolist()
    assert post(f"{url}/search", {"vectors": vectors}).status_code == 401
    assert post(f"{url}/search", {"vectors": vectors}, token="wrong").status_code == 401
    assert requests.get(f"{url}/info", timeout=30).status_code == 401
    for path in ("/docs", "/openapi.json", "/redoc"):  # what the API looks like is not told without the token
        assert requests.get(f"{url}{path}", timeout=30).status_code == 401, path
    assert requests.get(f"{url}/docs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).status_code == 200
    assert post(f"{url}/search", {"vectors": vectors}, token=TOKEN).status_code == 200
    assert SearchClient(url).healthz() == {"status": "ok"}  # health probes carry no token
    with pytest.raises(SearchError, match="HTTP 401"):
        SearchClient(url, token="wrong").search(vectors=vectors)


def replica_pids(app: str, deployment: str) -> dict[str, int]:
    """Actor name -> pid of the living replicas of one deployment."""
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
             if actor["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#")]
    # __ray_call__ runs the function in the actor's process; a replica not yet started answers later.
    pids = ray.get([ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda _: os.getpid())
                    for name in names], timeout=60)
    return dict(zip(names, pids))


def test_a_killed_shard_replica_loses_no_request(service):
    # One replica per deployment: requests that reach the killed one are asked again by the ingress, and Serve holds
    # them until the replacement runs. Answers afterwards equal those before.
    url, vectors = service["url"], service["query_vectors"]
    client = SearchClient(url, token=TOKEN)
    before = client.search(vectors=vectors, k=20), client.search(QUERIES, k=20)
    failures, answered, stop = [], [], threading.Event()

    def keep_asking():
        asking = SearchClient(url, token=TOKEN)
        while not stop.is_set():
            try:
                answered.append(asking.search(QUERIES[:1], k=5))
            except Exception as error:  # every failure counts
                failures.append(repr(error))

    victims = replica_pids("search", "IndexShard1")
    assert len(victims) == 1
    workers = [threading.Thread(target=keep_asking) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)
        os.kill(next(iter(victims.values())), signal.SIGKILL)
        killed_at, replaced = time.monotonic(), {}
        while not replaced:
            assert time.monotonic() - killed_at < 90, "no replacement replica within 90 s"
            time.sleep(0.5)
            replaced = {actor: pid for actor, pid in replica_pids("search", "IndexShard1").items()
                        if actor not in victims}
        served_before = len(answered)
        time.sleep(2.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert not failures and len(answered) > served_before, (failures[:3], served_before, len(answered))
    assert (client.search(vectors=vectors, k=20), client.search(QUERIES, k=20)) == before


def test_a_swap_to_a_missing_truncated_or_wrong_dimension_index_is_refused(service, tmp_path):
    url, first, model, vectors = service["url"], service["first"], service["model"], service["query_vectors"]
    client = SearchClient(url, token=TOKEN)
    expected = client.search(vectors=vectors, k=10)
    truncated = tmp_path / "truncated"
    shutil.copytree(first["index"], truncated)
    with open(truncated / "index.faiss", "r+b") as file:
        file.truncate(os.path.getsize(truncated / "index.faiss") // 2)
    narrow = EmbeddingsWriter(tmp_path / "narrow-emb", EmbeddingsManifest(model=model, dim=16, kind="passages",
                                                                          planned_shards=1))
    narrow.write_shard(0, [f"x{i}" for i in range(20)], np.random.default_rng(0).random((20, 16), np.float32))
    wrong_dimension = save_index(build_index(str(tmp_path / "narrow-emb"), progress=False), tmp_path / "narrow")
    for bad, says in ((tmp_path / "nowhere", "nowhere"), (truncated, "not a readable FAISS index"),
                      (wrong_dimension, "16-dimensional vectors but")):
        deploy(swapped(service["config"], "search", index=str(bad)))
        deadline = time.monotonic() + 60
        while not client.info()["swap_errors"]:
            assert time.monotonic() < deadline, f"the swap to {bad} was neither refused nor done within 60 s"
            time.sleep(0.2)
        info = client.info()
        assert info["index"] == first["index"] and len(info["swap_errors"]) == 2, info
        assert all(str(bad) in error and says in error for error in info["swap_errors"]), info["swap_errors"]
        assert client.search(vectors=vectors, k=10) == expected  # the old index keeps answering
        deploy(service["config"])  # the operator's roll back: the index served now, so nothing reloads
        assert client.info()["swap_errors"] == []


def test_a_one_minute_soak_has_no_error_and_flat_memory(service):
    # benchmarks/soak.py for one minute at 10 requests/s (text and vector queries alternating); the 10-minute run on
    # 100k passages is in the README.
    from soak import RSS_GROWTH_LIMIT, soak

    vectors = service["query_vectors"]
    bodies = [json.dumps({"queries": [text], "k": 10}).encode() for text in QUERIES] + \
        [json.dumps({"vectors": [vector.tolist()], "k": 10}).encode() for vector in vectors]
    processes = {deployment: pid for deployment in ("Ingress", "QueryEncoder", "IndexShard0", "IndexShard1")
                 for pid in replica_pids("search", deployment).values()}  # one replica each
    result = soak(service["url"], bodies, processes, seconds=60, rate=10, window_s=20, warmup_s=2,
                  headers={"Authorization": f"Bearer {TOKEN}"}, gcs_address=ray.get_runtime_context().gcs_address)
    print({key: result[key] for key in ("requests", "errors", "p50_ms", "p99_ms", "rss_growth", "fds_growth",
                                        "object_store_mib")})
    assert result["requests"] == 600 and result["errors"] == 0, result["error_examples"]
    assert all(growth <= RSS_GROWTH_LIMIT for growth in result["rss_growth"].values()), result["rss_growth"]
    assert len(result["rss_growth"]) == len(processes) == 4
    assert all(growth <= 2 for growth in result["fds_growth"].values()), result["fds_growth"]
    start_store, end_store = result["object_store_mib"]
    assert start_store is not None and end_store <= start_store + 1, result["object_store_mib"]


def test_a_hot_swap_under_load_loses_no_request(service):
    # The new index is an embeddings folder (45 passages, other docids): each shard reads its rows of it.
    url, second, vectors = service["url"], service["second"], service["query_vectors"]
    failures, answers, stop = [], [], threading.Event()

    def keep_asking():
        client = SearchClient(url, token=TOKEN)
        while not stop.is_set():
            try:
                answers.append(client.search(QUERIES[:2], k=5))
                answers.append(client.search(vectors=vectors[2:], k=5))
            except Exception as error:  # every failure counts
                failures.append(repr(error))

    def replicas() -> set[str]:
        return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                if actor["name"].startswith("SERVE_REPLICA::search#")}

    replicas_before = replicas()
    worker = threading.Thread(target=keep_asking)
    worker.start()
    client = SearchClient(url, token=TOKEN)
    try:
        time.sleep(1.0)
        before = len(answers)
        deploy(swapped(service["config"], "search", index=second["embeddings"], corpus=second["corpus"]))
        deadline = time.monotonic() + 60
        while client.info()["index"] != second["embeddings"]:
            assert time.monotonic() < deadline, "the new index was not served within 60 s"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    assert not failures and len(answers) > before + 4, (failures[:3], before, len(answers))
    assert replicas() == replicas_before and len(replicas_before) == 4  # reconfigured in place, not restarted
    assert answers[0][0][0]["docid"].startswith("d") and answers[-1][0][0]["docid"].startswith("n")
    expected_scores, expected_docids = search(second["index"], vectors, 50)
    docids, scores = hits_of(client.search(vectors=vectors, k=50))
    assert docids == expected_docids.tolist() and np.array_equal(np.float32(scores), expected_scores)
    info = client.info()
    assert (info["ntotal"], info["corpus"], info["swap_errors"]) == (45, second["corpus"], [])
    assert [part["rows"] for part in info["shard_parts"]] == [[0, 22], [22, 45]]
