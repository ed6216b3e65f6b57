"""The index-shard deployment: its part of the index, loaded by path in the replica, searched in batches."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, replace

import numpy as np
from ray import serve

from raytev.index.dense_index import DenseIndex
from raytev.index.search import search
from raytev.serve.batching import BatchRunner
from raytev.serve.messages import SearchAnswer, SearchCall
from raytev.serve.parts import load_part
from raytev.serve.swap import Swapper


@dataclass
class ShardPart:
    """A loaded part and what it answers for: the model its index was encoded with (the config's tag)."""

    index: DenseIndex
    location: str
    model: str
    rows: tuple[int, int] | None  # global rows [low, high); None for one folder per shard


def index_key(config: dict) -> str:
    """What names a loaded part: the index location and the revision label."""
    return json.dumps({"index": config["index"], "revision": config.get("revision", "")}, sort_keys=True)


@serve.deployment(name="IndexShard")
class IndexShard:
    """Shard `shard` of `num_shards`: loads its rows of the index its user_config names and searches them."""

    def __init__(self, shard: int, num_shards: int):
        self.shard, self.num_shards = shard, num_shards
        self.parts: Swapper[ShardPart] = Swapper(self._load, f"index shard {shard}")
        self.search_parameters = ""
        self.batches = self.requests = 0  # what batching achieved, for /info
        self.search_seconds = 0.0  # time inside FAISS searches: the rest of a request's latency is serving
        self.runner: BatchRunner[SearchCall, SearchAnswer] = BatchRunner(self._search_batch)

    def _load(self, config: dict) -> ShardPart:
        index, rows = load_part(config["index"], self.shard, self.num_shards)
        return ShardPart(index, config["index"], config.get("model") or "", rows)

    async def reconfigure(self, config: dict) -> None:
        """Apply batching and search settings now; load a new index (in the background once serving)."""
        self._queue.set_max_batch_size(config["max_batch_size"])
        self._queue.set_batch_wait_timeout_s(config["batch_wait_timeout_s"])
        self.runner.max_size = config["max_batch_size"]
        self.search_parameters = config.get("search_parameters", "")
        key, model = index_key(config), config.get("model") or ""
        if not await self.parts.configure(key, config):
            held = self.parts.versions.get(key)
            if held is not None and held[1].model != model:  # the same index, now said to be for another model
                self.parts.versions.replace(key, replace(held[1], model=model))

    async def describe(self) -> dict:
        """The versions held (current first) and the last failed swap."""
        held = [{"key": key, "model": part.model, "dim": part.index.info.dim, "ntotal": part.index.faiss_index.ntotal,
                 "spec": part.index.info.spec, "index": part.location, "index_model": part.index.info.model,
                 "shard": self.shard, "rows": list(part.rows) if part.rows else None}
                for key, part in self.parts.versions.items()]
        return {"shard": self.shard, "held": held, "error": self.parts.error, "batches": self.batches,
                "requests": self.requests, "search_seconds": round(self.search_seconds, 6)}

    async def search(self, call: SearchCall) -> SearchAnswer:
        """One request's hits on this shard (what the ingress calls)."""
        return await (await self._queue(call))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # reconfigure sets both
    async def _queue(self, calls: list[SearchCall]) -> list[asyncio.Future]:
        """Serve's batch of requests, queued to be searched with all others waiting (see batching.py)."""
        return self.runner.submit(calls)

    async def _search_batch(self, calls: list[SearchCall]) -> list[SearchAnswer]:
        """Every call's hits; calls for the same version and k share one FAISS search."""
        current = self.parts.versions.current_key
        self.batches, self.requests = self.batches + 1, self.requests + len(calls)
        answers: list[SearchAnswer | None] = [None] * len(calls)
        groups: dict[tuple[str, int], tuple[ShardPart, list[int]]] = {}
        for number, call in enumerate(calls):
            held = self.parts.versions.get(call.index_key)
            if held is None:
                answers[number] = SearchAnswer(None, current)
            else:
                groups.setdefault((held[0], call.k), (held[1], []))[1].append(number)
        for (key, k), (part, members) in groups.items():
            vectors = np.concatenate([calls[number].vectors for number in members])
            # In a thread: FAISS releases the GIL, so the replica keeps taking requests meanwhile (one search at
            # a time: the BatchRunner waits for it).
            started = time.perf_counter()
            scores, docids = await asyncio.to_thread(search, part.index, vectors, k,
                                                     search_parameters=self.search_parameters)
            self.search_seconds += time.perf_counter() - started
            start = 0
            for number in members:
                size = len(calls[number].vectors)
                answers[number] = SearchAnswer(key, current, scores[start:start + size], docids[start:start + size])
                start += size
        return answers
