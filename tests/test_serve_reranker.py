"""The served reranker without a Ray cluster: its scores are CrossEncoder's (1e-4) and `raytev rerank`'s pair scorer's
(exactly); the ingress rescores the top --rerank_depth of text queries and labels every hit with its stage; the
request's `rerank` is taken only where there is a reranker; configs, swaps and refusals."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from helpers import save_tiny_bert, tiny_tokenizer
from ray.exceptions import ActorDiedError
from test_serve_faults import KEY, Method
from test_serve_units import exchange, search_body_schema

from raytev.config.sections import ModelSection
from raytev.data.pairs import PairTemplate
from raytev.errors import RaytevError
from raytev.model.resolved import resolve_reranker
from raytev.modeling.reranker import Reranker
from raytev.reranking.scorer import PairScorer
from raytev.serving.app import config_from_args, serve_config, swapped
from raytev.serving.http import make_api
from raytev.serving.ingress import SearchIngress
from raytev.serving.replica import EncodeAnswer, RerankAnswer, SearchAnswer
from raytev.serving.reranker import load_reranker
from raytev.serving.swaps import HeldPart, HeldVersion, ReplicaView, user_configs
from raytev.serving.validation import Limits, RequestError, SearchQuery, parse_search_request

DOCIDS = [f"d{i}" for i in range(8)]
TEXTS = {docid: (f"title {i}", " ".join(["cat", "dog", "small", "barks", "animal"][: 1 + i % 5])) for i, docid in
         enumerate(DOCIDS)}
QUERY = "what small dog barks"


@pytest.fixture(scope="module")
def reranker_folder(tmp_path_factory):
    """A tiny BERT cross-encoder with a random (seeded) head, saved as `raytev train --task rerank` saves one."""
    root = tmp_path_factory.mktemp("served-reranker")
    torch.manual_seed(0)
    reranker = Reranker.from_pretrained(str(save_tiny_bert(root / "encoder")), trained=False)
    reranker.save_pretrained(root / "reranker", tokenizer=tiny_tokenizer())
    return str(root / "reranker")


def user_config(folder: str, **flags) -> dict:
    config = config_from_args({"index": "/index", "model_name_or_path": "/model", "corpus": "/corpus.jsonl",
                               "reranker_name_or_path": folder, **flags})
    return user_configs(config)["Reranker"]


def test_served_scores_are_cross_encoders_and_the_rerank_stages(reranker_folder):
    from sentence_transformers import CrossEncoder

    loaded = load_reranker(user_config(reranker_folder, rerank_max_len=24))
    passages = [[f"{title} {text}" for title, text in TEXTS.values()], ["a cat", "the animal " * 30]]
    scores = loaded.rerank([QUERY, "a cat"], passages)
    pairs = [(query, passage) for query, group in zip([QUERY, "a cat"], passages) for passage in group]
    theirs = CrossEncoder(reranker_folder, device="cpu", max_length=24).predict(pairs, batch_size=4)
    np.testing.assert_allclose(np.concatenate(scores), theirs, rtol=0, atol=1e-4)
    # `raytev rerank`'s path: the texts tokenized into bare segments at the pair length, joined by the template.
    model = resolve_reranker(ModelSection(model_name_or_path=reranker_folder), rerank_max_len=24)
    tokenizer = model.load_tokenizer()
    scorer = PairScorer(model, PairTemplate.from_tokenizer(tokenizer, 24), batch_size=32)
    bare = [tokenizer(text, add_special_tokens=False, truncation=True, max_length=24)["input_ids"]
            for text in [QUERY, "a cat"] + [passage for group in passages for passage in group]]
    stage = scorer([bare[0]] * 8 + [bare[1]] * 2, bare[2:])
    assert np.array_equal(np.concatenate(scores), stage)  # the same batches: the same floats
    assert [len(row) for row in loaded.rerank(["x"], [[]])] == [0]


def test_a_folder_without_a_classification_head_is_refused(tmp_path):
    encoder = save_tiny_bert(tmp_path / "encoder")
    with pytest.raises(RaytevError, match="no sequence-classification head"):
        load_reranker(user_config(str(encoder)))


class Shard:
    """One shard over DOCIDS with descending retriever scores."""

    def __init__(self):
        self.describe = Method(lambda: ReplicaView((HeldPart(KEY, "", 2, 8, "Flat", "/index", "m", (0, 8)),),
                                                   None, 0, 0, shard=0))
        scores, docids = np.linspace(1, 0.3, 8, dtype=np.float32)[None], np.array([DOCIDS], object)
        self.search = Method(lambda call: SearchAnswer(KEY, KEY, np.repeat(scores, len(call.vectors), 0)[:, :call.k],
                                                       np.repeat(docids, len(call.vectors), 0)[:, :call.k]))


class Encoder:
    def __init__(self):
        self.describe = Method(lambda: ReplicaView((HeldVersion("m1", "m", 2),), None, 0, 0))
        self.encode = Method(lambda call: EncodeAnswer("m1", "m1", np.ones((len(call.texts), 2), np.float32)))


class StandInReranker:
    """The reranker deployment's handle over a loaded reranker in this process, dying `deaths` times first."""

    def __init__(self, loaded, deaths=()):
        self.calls = []

        def rerank(call):
            self.calls.append(call)
            return RerankAnswer("r1", "r1", loaded.rerank(call.texts, call.passages))

        self.rerank = Method(rerank, deaths)
        self.describe = Method(lambda: ReplicaView((HeldVersion("r1", "the-reranker", 0),), None, 0, 0))


class Corpus:
    def passages(self, docids):
        return [TEXTS[docid] for docid in docids]


def ingress(loaded, depth: int, deaths=()) -> SearchIngress:
    service = SearchIngress([Shard()], Encoder(), {"max_queries": 4, "max_k": 10}, None,
                            StandInReranker(loaded, deaths), depth)
    service.corpora.versions.install("c", ("corpus", Corpus()))
    return service


def test_the_ingress_reranks_the_top_of_text_queries_and_says_which_stage_scored(reranker_folder):
    loaded = load_reranker(user_config(reranker_folder))
    service = ingress(loaded, depth=5, deaths=[ActorDiedError()])  # the first reranker call is lost: asked again
    hits = asyncio.run(service.search(SearchQuery([QUERY, "a cat"], None, 7)))
    expected = loaded.rerank([QUERY, "a cat"], [[f"title {i} {TEXTS[f'd{i}'][1]}" for i in range(5)]] * 2)
    for row, scores in zip(hits, expected):
        assert len(row) == 7 and [hit["stage"] for hit in row] == ["reranker"] * 5 + ["retriever"] * 2
        top = sorted(range(5), key=lambda i: -scores[i])
        assert [hit["docid"] for hit in row[:5]] == [f"d{i}" for i in top]
        np.testing.assert_array_equal([hit["score"] for hit in row[:5]], scores[top])
        assert [hit["docid"] for hit in row[5:]] == ["d5", "d6"]  # past the depth: the retriever's order and scores
        assert row[5]["score"] == pytest.approx(np.linspace(1, 0.3, 8)[5]) and row[0]["title"].startswith("title")
    assert service.reranker.rerank.calls == 2
    # The shards were asked for the depth even though k is smaller; k cuts the reranked list.
    hits = asyncio.run(service.search(SearchQuery([QUERY], None, 2)))
    assert [hit["stage"] for hit in hits[0]] == ["reranker"] * 2 and service.shards[0].search.calls == 3
    # rerank: false and vector queries keep the retriever's ranking; the reranker is not called.
    calls = service.reranker.rerank.calls
    for query in (SearchQuery([QUERY], None, 3, rerank=False), SearchQuery(None, np.ones((1, 2), np.float32), 3)):
        row = asyncio.run(service.search(query))[0]
        assert [hit["docid"] for hit in row] == DOCIDS[:3] and {hit["stage"] for hit in row} == {"retriever"}
    assert service.reranker.rerank.calls == calls
    info = asyncio.run(service.info())
    assert info["reranker"] == "the-reranker" and info["rerank_depth"] == 5


def test_rerank_is_a_request_field_only_where_there_is_a_reranker():
    limits = Limits(max_queries=4, max_k=10)
    query = parse_search_request(json.dumps({"queries": ["a"], "rerank": False}).encode(), limits, True, True)
    assert query.rerank is False and parse_search_request(b'{"queries": ["a"]}', limits, True, True).rerank
    with pytest.raises(RequestError, match="this service has no reranker"):
        parse_search_request(json.dumps({"queries": ["a"], "rerank": True}).encode(), limits, True, False)
    with pytest.raises(RequestError, match="rerank"):
        parse_search_request(json.dumps({"queries": ["a"], "rerank": "yes"}).encode(), limits, True, True)

    class Service:
        text_queries, reranks = True, True

        async def search(self, query):
            return [[{"docid": "d1", "score": 0.5, "stage": "reranker"}]]

        async def info(self):
            return {"dim": 2}

    import jsonschema_rs

    api = make_api(Service(), limits)
    status, _, body = exchange(api, "GET", "/openapi.json")
    schema = search_body_schema(json.loads(body))
    assert schema["properties"]["rerank"]["type"] == "boolean"
    assert json.loads(body)["components"]["schemas"]["Hit"]["properties"]["stage"]["type"] == "string"
    for request in ({"queries": ["a"], "rerank": False}, {"queries": ["a"], "rerank": 1}, {"vectors": [[1, 2]]}):
        status, _, _ = exchange(api, "POST", "/search", json.dumps(request).encode())
        assert jsonschema_rs.validator_for(schema).is_valid(request) == (status == 200), request


def test_the_reranker_has_its_own_deployment_replicas_and_swaps(tmp_path):
    args = {"index": "/index", "model_name_or_path": "/model", "corpus": "/corpus.jsonl",
            "reranker_name_or_path": "/reranker", "rerank_max_len": 64, "bf16": True, "reranker_replicas": 3,
            "num_replicas": 2, "rerank_depth": 30}
    config = serve_config(config_from_args(args))
    assert config["applications"][0]["args"]["reranker_replicas"] == 3
    served = user_configs(config_from_args(args))
    assert {"reranker_name_or_path": "/reranker", "rerank_max_len": 64, "bf16": True}.items() <= \
        served["Reranker"].items()
    assert "reranker_name_or_path" not in served["QueryEncoder"] and "rerank_max_len" not in served["IndexShard0"]
    changed = swapped(config, "raytev", reranker_name_or_path=str(tmp_path), rerank_max_len=128)
    deployments = {entry["name"]: entry["user_config"] for entry in changed["applications"][0]["deployments"]}
    assert deployments["Reranker"]["reranker_name_or_path"] == str(tmp_path)
    assert deployments["Reranker"]["rerank_max_len"] == 128 and changed["applications"][0]["args"] == \
        config["applications"][0]["args"]  # a swap changes user_configs only: no replica restarts
    without = serve_config(config_from_args({"index": "/index", "model_name_or_path": "/model"}))
    with pytest.raises(RaytevError, match="without a reranker: adding or removing"):
        swapped(without, "raytev", reranker_name_or_path="/reranker")
    with pytest.raises(RaytevError, match="with a reranker: adding or removing"):
        swapped(config, "raytev", reranker_name_or_path=None)
    with pytest.raises(RaytevError, match="give --corpus too"):
        config_from_args({"index": "/index", "model_name_or_path": "/model", "reranker_name_or_path": "/r"})
    with pytest.raises(RaytevError, match="give --model_name_or_path and --corpus too"):
        config_from_args({"index": "/index", "reranker_name_or_path": "/r"})
