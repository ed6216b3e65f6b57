"""The index-shard deployment: one part of the index (parts.py), concurrent searches answered in one FAISS call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass, replace

import numpy as np
from ray import serve

from raytev.errors import RaytevError
from raytev.index.dense_index import DenseIndex
from raytev.index.search import search
from raytev.serving.parts import load_part
from raytev.serving.replica import SearchAnswer, SearchCall, VersionedBatchReplica, split_rows
from raytev.serving.swaps import MODEL_TAG, HeldPart, ReplicaView, version_key


@dataclass
class ShardPart:
    """A loaded part and what it answers for: the model its index was encoded with (the config's tag)."""

    index: DenseIndex
    location: str
    model: str
    rows: tuple[int, int] | None  # global rows [low, high); None for one folder per shard


@serve.deployment(name="IndexShard")
class IndexShard(VersionedBatchReplica[ShardPart, SearchCall, SearchAnswer]):
    """Shard `shard` of `num_shards`: loads its rows of the index its user_config names and searches them."""

    answer_type = SearchAnswer
    labels = frozenset({MODEL_TAG})  # changing only the tag relabels the part held, without reloading it

    def __init__(self, shard: int, num_shards: int):
        self.shard, self.num_shards = shard, num_shards
        self.search_parameters = ""
        self.search_seconds = 0.0  # time inside FAISS searches: the rest of a request's latency is serving
        super().__init__(f"index shard {shard}")

    def load(self, user_config: dict) -> ShardPart:
        """This shard's rows of the index the user_config names."""
        index, rows = load_part(user_config["index"], self.shard, self.num_shards)
        model, current = user_config.get(MODEL_TAG) or "", self.held.versions.get()
        if current is not None and current[1].model == model and current[1].index.info.dim != index.info.dim:
            # Queries for the same model (or the same clients' vectors) would no longer fit: the swap is refused and
            # the index served now keeps answering.
            raise RaytevError(f"{user_config['index']} holds {index.info.dim}-dimensional vectors but "
                              f"{current[1].location}, served now for the same model, holds "
                              f"{current[1].index.info.dim}-dimensional ones: swap the model with its index.")
        return ShardPart(index, user_config["index"], model, rows)

    async def reconfigure(self, user_config: dict) -> None:
        """Apply batching and search settings now; load a new index (in the background once serving)."""
        self.search_parameters = user_config.get("search_parameters", "")
        await super().reconfigure(user_config)
        key, model = version_key(user_config, self.labels), user_config.get(MODEL_TAG) or ""
        held = self.held.versions.get(key)
        if held is not None and held[1].model != model:  # the same index, now said to be for another model
            self.held.versions.replace(key, replace(held[1], model=model))

    def describe_version(self, key: str, part: ShardPart) -> HeldPart:
        """The part's size, type, location, model tag and rows."""
        return HeldPart(key, part.model, part.index.info.dim, part.index.faiss_index.ntotal, part.index.info.spec,
                        part.location, part.index.info.model, part.rows)

    async def describe(self) -> ReplicaView:
        """The parts held (current first), the last failed swap, and the searches run."""
        return replace(await super().describe(), shard=self.shard, search_seconds=round(self.search_seconds, 6))

    async def search(self, call: SearchCall) -> SearchAnswer:
        """One request's hits on this shard (what the ingress calls)."""
        return await self.answer(call)

    def group_of(self, call: SearchCall) -> Hashable:
        """Calls with the same k share one FAISS search."""
        return call.k

    async def run_group(self, key: str, current: str | None, part: ShardPart,
                        calls: list[SearchCall]) -> list[SearchAnswer]:
        """The calls' vectors searched together."""
        vectors = np.concatenate([call.vectors for call in calls])
        # In a thread: FAISS releases the GIL, so the replica keeps taking requests meanwhile (one search at a
        # time: the BatchRunner waits for it).
        started = time.perf_counter()
        scores, docids = await asyncio.to_thread(search, part.index, vectors, calls[0].k,
                                                 search_parameters=self.search_parameters)
        self.search_seconds += time.perf_counter() - started
        sizes = [len(call.vectors) for call in calls]
        return [SearchAnswer(key, current, part_scores, part_docids)
                for part_scores, part_docids in zip(split_rows(scores, sizes), split_rows(docids, sizes))]
