"""The shards' top-k merged into the top-k one index over all their rows would give."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raytev.index.ranking import top_hits


def merge_shard_hits(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [nq, <=k], docids) of the best k over every shard's (scores, docids), shards given in row order.

    Each shard ranks its hits the raytev way (score, then its lower position first), and shard i's rows all
    precede shard i+1's, so ranking by (score, shard, rank in the shard) is ranking by (score, global
    position): exactly the order of one flat index over all rows, ties included. None docids are misses.
    """
    if len(parts) == 1:  # one shard's hits are already ranked, misses last
        return parts[0][0][:, :k], parts[0][1][:, :k]
    width = max((scores.shape[1] for scores, _ in parts), default=0)
    queries = parts[0][0].shape[0] if parts else 0
    scores = np.full((queries, width * len(parts)), -np.inf, dtype=np.float32)
    order = np.full(scores.shape, -1, dtype=np.int64)
    docids = np.full(scores.shape, None, dtype=object)
    for number, (part_scores, part_docids) in enumerate(parts):
        columns = slice(number * width, number * width + part_scores.shape[1])
        scores[:, columns], docids[:, columns] = part_scores, part_docids
        found = np.not_equal(part_docids, None)
        order[:, columns] = np.where(found, number * width + np.arange(part_scores.shape[1]), -1)
    scores, order, docids = top_hits(scores, order, k, docids)
    depth = int((order >= 0).sum(axis=1).max(initial=0))
    return scores[:, :depth], docids[:, :depth]
