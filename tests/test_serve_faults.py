"""The ingress when a replica dies under it (no Ray cluster: stand-in shards and encoder): a search is asked again,
answered once the call reaches a living replica, and a 503 with Retry-After only when none answers in time."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from ray.exceptions import ActorDiedError, ActorUnavailableError
from test_serve_units import exchange

from raytev.serving.http import make_api
from raytev.serving.ingress import SearchIngress
from raytev.serving.replica import SearchAnswer
from raytev.serving.swaps import HeldPart, ReplicaView
from raytev.serving.validation import Limits, SearchQuery

KEY = "v1"
PART = HeldPart(KEY, "", 2, 2, "Flat", "/index", "m", (0, 2))


class Method:
    """A handle's method: `.remote(...)` awaited, raising the queued errors first."""

    def __init__(self, answer, errors=()):
        self.answer, self.errors, self.calls = answer, list(errors), 0

    async def remote(self, *args):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.answer(*args)


class StandInShard:
    """A one-shard index of two passages whose search dies `deaths` times first."""

    def __init__(self, deaths: list[Exception]):
        self.describe = Method(lambda: ReplicaView((PART,), None, 0, 0, shard=0))
        self.search = Method(lambda call: SearchAnswer(KEY, KEY, np.array([[0.9, 0.1]], np.float32)[:, :call.k],
                                                       np.array([["d1", "d2"]], object)[:, :call.k]), deaths)


def ingress(deaths: list[Exception]):
    """An Ingress over a stand-in shard (vector queries only), outside Serve."""
    service = SearchIngress([StandInShard(deaths)], None, {"max_queries": 4, "max_k": 10})
    return service


def vector_query() -> SearchQuery:
    return SearchQuery(None, np.array([[1.0, 0.0]], np.float32), 2)


def test_a_search_on_a_lost_replica_is_asked_again_and_answered():
    service = ingress([ActorUnavailableError("gone", b"1" * 16), ActorDiedError()])
    hits = asyncio.run(service.search(vector_query()))
    assert hits == [[{"docid": "d1", "score": np.float32(0.9), "stage": "retriever"},
                     {"docid": "d2", "score": np.float32(0.1), "stage": "retriever"}]]
    assert service.shards[0].search.calls == 3


def test_a_replica_lost_on_every_try_gets_a_503_with_retry_after():
    service = ingress([ActorDiedError() for _ in range(10)])
    api = make_api(service, Limits(max_queries=4, max_k=10))
    status, headers, body = exchange(api, "POST", "/search", json.dumps({"vectors": [[1.0, 0.0]], "k": 2}).encode())
    assert status == 503 and headers["retry-after"] == "1"
    assert "replica of the service was lost (ActorDiedError)" in json.loads(body)["error"]
