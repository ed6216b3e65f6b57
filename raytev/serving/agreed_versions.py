"""Which versions a request is answered from, so that every shard (and the query encoder) agree.

During a hot swap replicas switch one by one. Each holds its current and previous version (replica.py); the
ingress picks a key that every shard holds, preferring the newest, and a query-encoder model that the index
was built for (the shards' model tag), so one answer never mixes two indexes or a model with another
model's index.
"""

from __future__ import annotations

from dataclasses import dataclass

from raytev.errors import RaytevError


class SwapInProgress(Exception):
    """No version is held by every shard right now (several swaps in a row); the request may be retried."""


@dataclass(frozen=True)
class AgreedVersions:
    """The index version every shard answers from, the model version that encodes text, and what they hold."""

    index_key: str
    model_key: str | None
    dim: int
    ntotal: int
    spec: str
    model: str
    index: str
    shards: list[dict]


def choose_versions(shards: list[dict], encoder: dict | None) -> AgreedVersions:
    """The newest index version held by every shard, with a model version the encoder holds for it.

    `shards` are the shards' describe() answers in order and `encoder` the encoder's (None without one):
    {"held": [{"key", "model", ...}, ...] current first}. When no held model fits the index's tag (configs
    that name the model differently), the current model is used.
    """
    common = [entry for entry in shards[0]["held"]
              if all(any(other["key"] == entry["key"] for other in view["held"]) for view in shards[1:])]
    if not common:
        raise SwapInProgress("the index shards hold no common version: a swap is in progress")
    chosen, model = common[0], None
    if encoder is not None:
        for entry in common:
            fitting = [held for held in encoder["held"] if entry["model"] in ("", held["model"])]
            if fitting:
                chosen, model = entry, fitting[0]
                break
        else:
            model = encoder["held"][0]
    parts = [next(held for held in view["held"] if held["key"] == chosen["key"]) for view in shards]
    dims = {part["dim"] for part in parts}
    if len(dims) > 1:
        raise RaytevError(f"the index shards hold vectors of different dimensions {sorted(dims)}: serve parts of "
                          "one encoding together.")
    return AgreedVersions(index_key=chosen["key"], model_key=model["key"] if model else None, dim=parts[0]["dim"],
                          ntotal=sum(part["ntotal"] for part in parts), spec=parts[0]["spec"],
                          model=model["model"] if model else parts[0]["index_model"] or chosen["model"],
                          index=chosen["index"], shards=parts)
