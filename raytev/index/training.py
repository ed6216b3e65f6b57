"""How many vectors an index trains on, and drawing that random sample across shards one shard at a time.

Sample size: max(40 x the largest number of centroids the index trains, 100,000), capped at the corpus.
FAISS's k-means wants 39-256 points per centroid (it warns below 39 and subsamples above 256), and 100k
keeps small nlist values and product quantizers well fed. The sample is uniform over the whole corpus and
seeded, so the same embeddings and seed train the same index.
"""

from __future__ import annotations

import faiss
import numpy as np
from tqdm.auto import tqdm

from raytev.data.embeddings import EmbeddingShard
from raytev.errors import RaytevError

POINTS_PER_CENTROID = 40
MIN_SAMPLE = 100_000


def centroids_needed(index: faiss.Index) -> int:
    """The most centroids any quantizer of `index` trains (IVF lists, PQ codebooks): FAISS needs that many vectors."""
    needed = 1
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needed = ivf.nlist
    inner = ivf if ivf is not None else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if hasattr(inner, "storage"):  # HNSW over PQ codes
        inner = faiss.downcast_index(inner.storage)
    if getattr(inner, "pq", None) is not None:
        needed = max(needed, inner.pq.ksub)
    return needed


def training_sample_size(index: faiss.Index, spec: str, total: int, location: str) -> int:
    """Vectors to train `index` on; a RaytevError when the corpus has fewer than FAISS needs."""
    centroids = centroids_needed(index)
    if total < centroids:
        fitting = 1 << max(0, (total // POINTS_PER_CENTROID).bit_length() - 1)
        raise RaytevError(
            f"index spec {spec!r} trains {centroids:,} centroids, so it needs at least {centroids:,} vectors "
            f"(about {POINTS_PER_CENTROID * centroids:,} for good clusters), but {location} holds {total:,}: "
            f"use a smaller nlist (e.g. IVF{fitting},... for {total:,} vectors) or an index that needs no "
            "training (Flat, HNSW32).")
    return min(total, max(POINTS_PER_CENTROID * centroids, MIN_SAMPLE))


def draw_training_sample(shards: list[EmbeddingShard], counts: list[int], size: int, seed: int,
                         progress: bool = True) -> np.ndarray:
    """`size` vectors drawn uniformly without replacement across shards; only one shard is in memory at a time."""
    offsets = np.concatenate([[0], np.cumsum(counts)])
    chosen = np.sort(np.random.default_rng(seed).choice(int(offsets[-1]), size=size, replace=False))
    bounds = np.searchsorted(chosen, offsets)
    sample = np.empty((size, shards[0].dim), dtype=np.float32)
    for number, shard in enumerate(tqdm(shards, desc="training sample", unit="shard",
                                        disable=None if progress else True)):
        rows = chosen[bounds[number]:bounds[number + 1]] - offsets[number]
        if len(rows):  # shards the sample misses are not read at all
            _, vectors = shard.read()
            sample[bounds[number]:bounds[number + 1]] = vectors[rows]
    return sample
