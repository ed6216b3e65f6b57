"""What the ingress sends to the query encoder and the index shards, and what they answer (picklable, no Ray)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EncodeCall:
    """Query texts and the model version to encode them with (None: the current one)."""

    texts: list[str]
    model_key: str | None = None


@dataclass
class EncodeAnswer:
    """Vectors [n, dim] of one call; model_key None when the version asked for is no longer held."""

    model_key: str | None
    current: str
    vectors: np.ndarray | None = None


@dataclass
class SearchCall:
    """Query vectors [n, dim], k, and the index version to answer from (None: the current one)."""

    vectors: np.ndarray
    k: int
    index_key: str | None = None


@dataclass
class SearchAnswer:
    """One call's hits on one shard; index_key None when the version asked for is no longer held."""

    index_key: str | None
    current: str
    scores: np.ndarray | None = None
    docids: np.ndarray | None = None
