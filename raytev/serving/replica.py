"""The base of the query encoder, the index shards and the reranker: versions swapped in whole, requests run in batches.

Hot swapping: what a replica serves is loaded in full beside the old one, then the reference is switched. A
replica keeps the current version and the one before it, each under a key naming what was loaded (its
user_config less the live settings). Keeping the previous one lets a request that started against it finish,
and lets the ingress answer from one version everywhere while some replicas have switched and others have not
(swaps.py); it is released `grace_s` after the switch. Serve takes a replica out of routing while
`reconfigure` runs, so only the first load happens there; later ones run in the background while the old
version answers.

Batching: `@serve.batch` gathers the requests that arrive within `batch_wait_timeout_s` and hands them over as
one batch. Ray Serve 2.60 closes a batch when that time is up even while the previous batch still runs (later
batches queue for their turn), so with a short timeout a busy shard ran one small batch after another: a mean
of 1.3 requests per FAISS search at 64 clients on a 100k x 384 flat index. A timeout as long as a search would
fix that under load and add its length to every request when idle. So Serve's batch is only queued here
(BatchRunner) and futures return at once; one worker runs what is queued in batches of up to `max_batch_size`
requests, each taking everything that arrived while the previous one ran.

The messages between the ingress and these replicas are plain picklable dataclasses (here and in swaps.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from ray import serve

from raytev.serving.swaps import HeldVersion, ReplicaView, version_key

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")
logger = logging.getLogger("ray.serve")

GRACE_S = 120.0  # how long the previous version stays after a switch (other shards may still be loading)


# --- Messages ----------------------------------------------------------------------------------------------------

@dataclass
class EncodeCall:
    """Query texts and the model version to encode them with (None: the current one)."""

    texts: list[str]
    version: str | None = None


@dataclass
class SearchCall:
    """Query vectors [n, dim], k, and the index version to answer from (None: the current one)."""

    vectors: np.ndarray
    k: int
    version: str | None = None


@dataclass
class RerankCall:
    """Query texts, each with the passage texts to score against it, and the reranker version (None: current)."""

    texts: list[str]
    passages: list[list[str]]
    version: str | None = None


@dataclass
class EncodeAnswer:
    """Vectors [n, dim] of one call; version None when the version asked for is no longer held."""

    version: str | None
    current: str | None
    vectors: np.ndarray | None = None


@dataclass
class SearchAnswer:
    """One call's hits on one shard; version None when the version asked for is no longer held."""

    version: str | None
    current: str | None
    scores: np.ndarray | None = None
    docids: np.ndarray | None = None


@dataclass
class RerankAnswer:
    """One call's scores, an array per query in its passages' order; version None when no longer held."""

    version: str | None
    current: str | None
    scores: list[np.ndarray] | None = None


# --- Versions and their swaps ------------------------------------------------------------------------------------

class Versions(Generic[T]):
    """The current value and the previous one, by key (the current first)."""

    def __init__(self) -> None:
        self._items: dict[str, T] = {}

    def install(self, key: str, value: T) -> None:
        """Make `value` current; the current one becomes the previous, an older one is released."""
        self._items.pop(key, None)
        self._items[key] = value
        while len(self._items) > 2:
            del self._items[next(iter(self._items))]

    def replace(self, key: str, value: T) -> None:
        """Change the value held under `key` (keeping its place)."""
        if key in self._items:
            self._items[key] = value

    def keep_only(self, key: str) -> None:
        """Release everything but `key`, if `key` is still current."""
        if self.current_key == key:
            self._items = {key: self._items[key]}

    @property
    def current_key(self) -> str | None:
        """The key of the current value; None before the first load."""
        return next(reversed(self._items), None)

    def get(self, key: str | None = None) -> tuple[str, T] | None:
        """(key, value) of `key`, or of the current value when `key` is None; None when not held."""
        key = self.current_key if key is None else key
        return (key, self._items[key]) if key in self._items else None

    def items(self) -> list[tuple[str, T]]:
        """Every (key, value) held, the current first."""
        return list(reversed(self._items.items()))


class Swapper(Generic[T]):
    """Loads what a configuration names and installs it in `versions`: at once the first time, later in the
    background while the old version keeps answering."""

    def __init__(self, load: Callable[[dict], T], what: str, grace_s: float = GRACE_S):
        self.load, self.what, self.grace_s = load, what, grace_s
        self.versions: Versions[T] = Versions()
        self.wanted: str | None = None
        self.error: str | None = None  # why the last background load failed
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    async def configure(self, key: str, config: dict) -> bool:
        """Start loading `config` under `key` unless it is already wanted; False when nothing changes."""
        if key == self.wanted:
            return False
        self.wanted = key
        if key == self.versions.current_key:  # back to what is served (a failed swap rolled back): nothing to load
            self.error = None
            return False
        if self.versions.current_key is None:
            # The replica is not routed to before its first reconfigure returns: load now, and let a failure
            # fail the deployment, so that Serve reports it.
            self.versions.install(key, await asyncio.to_thread(self.load, config))
            return True
        task = asyncio.create_task(self._load_in_background(key, config))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _load_in_background(self, key: str, config: dict) -> None:
        async with self._lock:  # one load at a time: two big indexes at once could run out of memory
            if key != self.wanted:
                return  # superseded before it began
            try:
                value = await asyncio.to_thread(self.load, config)
            except Exception as error:  # the old version keeps answering; /info shows why the swap failed
                self.error = f"loading {self.what} {key} failed: {error}"
                logger.error(self.error)
                return
            if key != self.wanted:
                return
            self.versions.install(key, value)
            self.error = None
            logger.info(f"now serving {self.what} {key}")
            asyncio.get_running_loop().call_later(self.grace_s, self.versions.keep_only, key)


# --- Batches -----------------------------------------------------------------------------------------------------

class BatchRunner(Generic[Item, Result]):
    """Runs `run` on the queued items, one batch at a time, up to `max_size` items a batch."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]], max_size: int = 32):
        self.run, self.max_size = run, max_size
        self._queued: list[tuple[Item, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    def submit(self, items: list[Item]) -> list[asyncio.Future]:
        """Queue items; each future gets its item's result (or the batch's exception)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._queued.extend(zip(items, futures))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return futures

    async def _drain(self) -> None:
        while self._queued:
            batch, self._queued = self._queued[:self.max_size], self._queued[self.max_size:]
            try:
                results = await self.run([item for item, _ in batch])
            except Exception as error:  # every caller of the batch learns why it failed
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


def split_rows(array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """`array` cut into consecutive row blocks of the given sizes (one call's share of a batch each)."""
    return np.split(array, np.cumsum(sizes)[:-1])


# --- The base deployment -----------------------------------------------------------------------------------------

Version = TypeVar("Version")
Call = TypeVar("Call", EncodeCall, SearchCall, RerankCall)
Answer = TypeVar("Answer", EncodeAnswer, SearchAnswer, RerankAnswer)


class VersionedBatchReplica(Generic[Version, Call, Answer]):
    """A deployment serving versions its user_config names (loaded by `load`) and answering calls in batches:
    calls for the same version (and `group_of`) share one `run_group`, calls for a released version get an
    answer without one (version None) and the ingress asks again."""

    answer_type: type  # EncodeAnswer, SearchAnswer or RerankAnswer: what a call for a released version gets
    labels: frozenset[str] = frozenset()  # user_config settings that name something but are not loaded

    def __init__(self, what: str):
        self.held: Swapper[Version] = Swapper(self.load, what)
        self.runner: BatchRunner[Call, Answer] = BatchRunner(self._run_batch)
        self.batches = self.requests = 0  # what batching achieved, for /info
        # Serve's batch queue, made per replica: a decorated method would share one queue with every instance of
        # the class in the process (all deployments share one process in Serve's local testing mode).
        self._queue = serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)(self._submit)  # reconfigure sets both

    def load(self, user_config: dict) -> Version:
        """The version a user_config names, loaded (in a thread)."""
        raise NotImplementedError

    def describe_version(self, key: str, version: Version) -> HeldVersion:
        """What /info and the ingress's choice of versions need to know of the version loaded under `key`."""
        raise NotImplementedError

    def group_of(self, call: Call) -> Hashable:
        """What calls must share besides their version to run in one group."""
        return None

    async def run_group(self, key: str, current: str | None, version: Version, calls: list[Call]) -> list[Answer]:
        """The answers to calls for one version (and group), in order."""
        raise NotImplementedError

    async def reconfigure(self, user_config: dict) -> None:
        """Apply the batching settings now; load a new version (in the background once serving)."""
        self._queue.set_max_batch_size(user_config["max_batch_size"])
        self._queue.set_batch_wait_timeout_s(user_config["batch_wait_timeout_s"])
        self.runner.max_size = user_config["max_batch_size"]
        await self.held.configure(version_key(user_config, self.labels), user_config)

    async def describe(self) -> ReplicaView:
        """The versions held (current first), the last failed swap, and the batches run."""
        held = tuple(self.describe_version(key, version) for key, version in self.held.versions.items())
        return ReplicaView(held, self.held.error, self.batches, self.requests)

    async def answer(self, call: Call) -> Answer:
        """One call's answer, once its batch has run."""
        return await (await self._queue(call))

    async def _submit(self, calls: list[Call]) -> list[asyncio.Future]:
        """Serve's batch of calls, queued to run with all others waiting (see the module's docstring)."""
        return self.runner.submit(calls)

    async def _run_batch(self, calls: list[Call]) -> list[Answer]:
        current = self.held.versions.current_key
        self.batches, self.requests = self.batches + 1, self.requests + len(calls)
        answers: list[Answer | None] = [None] * len(calls)
        groups: dict[tuple[str, Hashable], tuple[Version, list[int]]] = {}
        for number, call in enumerate(calls):
            held = self.held.versions.get(call.version)
            if held is None:
                answers[number] = self.answer_type(None, current)
            else:
                groups.setdefault((held[0], self.group_of(call)), (held[1], []))[1].append(number)
        for (key, _), (version, members) in groups.items():
            results = await self.run_group(key, current, version, [calls[number] for number in members])
            for number, result in zip(members, results):
                answers[number] = result
        return answers
