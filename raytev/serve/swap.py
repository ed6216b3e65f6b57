"""Hot swapping: what a replica serves is loaded in full beside the old one, then the reference is switched.

A replica keeps the current version and the one before it, each under a key naming what was loaded (paths,
revision). Keeping the previous one lets a request that started against it finish, and lets the ingress
answer from one version everywhere while some replicas have switched and others have not (see plan.py);
it is released `grace_s` after the switch. Serve takes a replica out of routing while `reconfigure` runs,
so only the first load happens there; later ones run in the background while the old version answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
logger = logging.getLogger("ray.serve")

GRACE_S = 120.0  # how long the previous version stays after a switch (other shards may still be loading)


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
