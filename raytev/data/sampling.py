"""Which passages a query trains on in each epoch: the one place that decides, for torch and JAX alike."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def stable_seed(*keys: object) -> int:
    """A 64-bit seed from keys, the same in every process and run (unlike the salted built-in `hash`)."""
    digest = hashlib.blake2b("\x1f".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class GroupSampler:
    """Picks 1 positive + (train_group_size - 1) negatives per query and epoch, as Tevatron does.

    Deterministic in (seed, epoch, query id). The positive rotates through the positives epoch by epoch;
    negatives are shuffled once per query and read as a moving window, so successive epochs see different
    negatives; with fewer negatives than needed they are drawn with replacement.
    """

    train_group_size: int
    seed: int = 42
    positive_no_shuffle: bool = False
    negative_no_shuffle: bool = False

    @property
    def negatives_needed(self) -> int:
        """Negatives per query in a group."""
        return self.train_group_size - 1

    def sample(self, query_id: str, positives: Sequence[T], negatives: Sequence[T], epoch: int) -> list[T]:
        """The group for this epoch: its positive first, then its negatives."""
        if len(positives) == 0:
            raise ValueError(f"query {query_id} has no positive passage")
        query_seed = stable_seed(self.seed, query_id)
        if self.positive_no_shuffle:
            positive = positives[0]
        else:
            positive = positives[(query_seed + epoch) % len(positives)]
        return [positive, *self._negatives(query_id, query_seed, negatives, epoch)]

    def _negatives(self, query_id: str, query_seed: int, negatives: Sequence[T], epoch: int) -> list[T]:
        needed = self.negatives_needed
        if needed == 0:
            return []
        if len(negatives) == 0:
            raise ValueError(
                f"query {query_id} has no negative passage but --train_group_size {self.train_group_size} needs "
                f"{needed}: add negatives (or mine them) or use --train_group_size 1 (in-batch negatives only)"
            )
        if len(negatives) < needed:
            return random.Random(stable_seed(self.seed, query_id, epoch)).choices(negatives, k=needed)
        if self.negative_no_shuffle:
            return list(negatives[:needed])
        shuffled = list(negatives)
        random.Random(query_seed).shuffle(shuffled)
        offset = epoch * needed % len(shuffled)
        return (shuffled + shuffled)[offset:offset + needed]
