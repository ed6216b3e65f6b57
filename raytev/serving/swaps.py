"""Hot swaps as the Serve config (app.py), the replicas and the ingress share them: which flags swap into which
deployment's user_config (their `swap` metadata, raytev/config/fields.py), how a loaded version is named, what a
replica says it holds, and which versions a request is answered from.

During a hot swap replicas switch one by one. Each holds its current and previous version (replica.py); the ingress
picks a key that every shard holds, preferring the newest, and a query-encoder model that the index was built for (the
shards' model tag), so one answer never mixes two indexes or a model with another model's index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from raytev.config.fields import flag_fields, to_flags
from raytev.config.stages import ServeConfig
from raytev.errors import RaytevError

_FLAGS = {name: field.metadata for name, (_, field) in flag_fields(ServeConfig).items()}
SWAPPABLE = frozenset(name for name, metadata in _FLAGS.items() if metadata["swap"])  # the rest needs a redeploy
LIVE_FLAGS = frozenset(name for name in SWAPPABLE if _FLAGS[name]["live"])  # applied at once, never loaded
# The kind of swap each deployment serves, and so the swappable flags its user_config holds.
DEPLOYMENT_KINDS = {"QueryEncoder": "model", "IndexShard": "index", "Ingress": "corpus", "Reranker": "reranker"}
DEPLOYMENT_SWAPS = {deployment: tuple(name for name, metadata in _FLAGS.items() if kind in metadata["swap"])
                    for deployment, kind in DEPLOYMENT_KINDS.items()}
# A shard's user_config also names the model its index was encoded with: a label the ingress matches against the
# query encoder's model during swaps, never loaded by the shard.
MODEL_TAG = "model_name_or_path"


def version_key(user_config: dict, labels: frozenset[str] = frozenset()) -> str:
    """What names a loaded version: the user_config's settings but the live ones (and `labels`, which are not
    loaded)."""
    return json.dumps({name: value for name, value in user_config.items()
                       if name not in LIVE_FLAGS and name not in labels}, sort_keys=True)


def user_configs(config: ServeConfig) -> dict[str, dict]:
    """Each deployment's user_config by deployment name: the swappable flags of the kind it serves."""
    flags = to_flags(config)
    served = {deployment: {name: flags[name] for name in names} for deployment, names in DEPLOYMENT_SWAPS.items()}
    configs = {f"IndexShard{shard}": {**served["IndexShard"], MODEL_TAG: flags[MODEL_TAG]}
               for shard in range(config.num_shards)}
    if config.model.model_name_or_path:
        configs["QueryEncoder"] = served["QueryEncoder"]
    if config.reranker_name_or_path:
        configs["Reranker"] = served["Reranker"]
    return {**configs, "Ingress": served["Ingress"]}


@dataclass(frozen=True)
class HeldVersion:
    """A version a replica holds: its key, the model it is for (a shard's tag, "" untold), its vectors' dimension."""

    key: str
    model: str
    dim: int


@dataclass(frozen=True)
class HeldPart(HeldVersion):
    """A shard's version: its part's size, FAISS type, location, its index's model, rows (None: a folder a shard)."""

    ntotal: int
    spec: str
    index: str
    index_model: str
    rows: tuple[int, int] | None


@dataclass(frozen=True)
class ReplicaView:
    """A replica's describe(): the versions held (current first), the last failed swap, the batches and requests
    run; a shard's number and time inside FAISS searches."""

    held: tuple[HeldVersion, ...]
    error: str | None
    batches: int
    requests: int
    shard: int | None = None
    search_seconds: float = 0.0


class SwapInProgress(Exception):
    """No version is held by every shard right now (several swaps in a row); the request may be retried."""


@dataclass(frozen=True)
class AgreedVersions:
    """The index version every shard answers from, the model version that encodes text, and what they hold."""

    index_key: str
    model_key: str | None
    model: str
    dim: int
    shards: list[HeldPart]  # in row order

    @property
    def ntotal(self) -> int:
        """Vectors in the index, over all shards."""
        return sum(part.ntotal for part in self.shards)


def choose_versions(shards: list[ReplicaView], encoder: ReplicaView | None) -> AgreedVersions:
    """The newest index version held by every shard, with a model version the encoder holds for it.

    `shards` are the shards' describe() answers in order and `encoder` the encoder's (None without one). When no
    held model fits the index's tag (configs that name the model differently), the current model is used.
    """
    common = [entry for entry in shards[0].held
              if all(any(other.key == entry.key for other in view.held) for view in shards[1:])]
    if not common:
        raise SwapInProgress("the index shards hold no common version: a swap is in progress")
    chosen, model = common[0], None
    if encoder is not None:
        for entry in common:
            fitting = [held for held in encoder.held if entry.model in ("", held.model)]
            if fitting:
                chosen, model = entry, fitting[0]
                break
        else:
            model = encoder.held[0]
    parts = [next(held for held in view.held if held.key == chosen.key) for view in shards]
    dims = {part.dim for part in parts}
    if len(dims) > 1:
        raise RaytevError(f"the index shards hold vectors of different dimensions {sorted(dims)}: serve parts of "
                          "one encoding together.")
    return AgreedVersions(index_key=chosen.key, model_key=model.key if model else None, dim=chosen.dim, shards=parts,
                          model=model.model if model else chosen.index_model or chosen.model)
