"""Exact top-k over a flat index whose scores do not depend on how the corpus was split into shards.

FAISS's flat search multiplies through BLAS, whose rounding depends on the matrix shapes: the same query and
vector can score a few float32 ulps apart in one big index and in a shard (seen at dim 768 with 300 queries).
So FAISS only proposes candidates, a few more than asked, and every candidate is rescored as
float32(float64 dot product), which depends on the two vectors alone. A query's list is accepted once its
depth-th exact score beats the weakest FAISS score by more than FAISS's worst-case rounding error (nothing
left out can then rank in, ties included); otherwise it is fetched again twice as deep.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from raytev.index.dense_index import DenseIndex
from raytev.index.ranking import top_hits

UNIT_ROUNDOFF = 2.0 ** -24  # float32
ELEMENTS_PER_BLOCK = 1 << 20  # rescoring gathers candidates in blocks of 8 MiB of float64 (cache-sized)
# faiss-cpu 1.15 scans the whole index once per query unless a search holds distance_compute_blas_threshold
# queries (128,000 here). One BLAS product over 16 queries was 4.6x faster per query than 16 scans on 1M x 384,
# over 1,000 queries 1.3x; one query scans faster than it multiplies. BLAS only changes which candidates tie at
# float32 rounding, and candidates are rescored exactly, so the results are the same either way.
BLAS_FROM_QUERIES = 4


def exact_flat_search(index: DenseIndex, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [nq, min(depth, ntotal)], positions) of a flat index, ranked by top_hits."""
    vectors = index.flat_vectors()
    total, width = len(vectors), min(depth, len(vectors))
    scores = np.full((len(queries), width), -np.inf, dtype=np.float32)
    positions = np.full((len(queries), width), -1, dtype=np.int64)
    if width == 0:
        return scores, positions
    # |float32 dot - exact| <= d*u/(1-d*u) * |q| * |x| for any summation order; +2 covers the final roundings.
    slack = 1.01 * (queries.shape[1] + 2) * UNIT_ROUNDOFF * np.linalg.norm(queries, axis=1) * index.max_norm
    pending, fetch = np.arange(len(queries)), min(total, depth + max(16, depth // 8))
    while len(pending):
        with blas_for(len(pending)):
            faiss_scores, candidates = index.faiss_index.search(queries[pending], fetch)
        exact = exact_scores(queries[pending], vectors, candidates)
        best_scores, best_positions = top_hits(exact, candidates, width)
        settled = np.full(len(pending), fetch == total) | (best_scores[:, -1] > faiss_scores[:, -1] + slack[pending])
        scores[pending[settled]], positions[pending[settled]] = best_scores[settled], best_positions[settled]
        pending, fetch = pending[~settled], min(total, 2 * fetch)
    return scores, positions


@contextmanager
def blas_for(queries: int) -> Iterator[None]:
    """Let FAISS's flat search use BLAS for a search of this many queries (see BLAS_FROM_QUERIES).

    The threshold is process-wide: searches in one process are expected to run one at a time.
    """
    default = faiss.cvar.distance_compute_blas_threshold
    if queries >= BLAS_FROM_QUERIES:
        faiss.cvar.distance_compute_blas_threshold = 1
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = default


def exact_scores(queries: np.ndarray, vectors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float32(float64 inner product) of each query with its candidate rows: [nq, k]."""
    scores = np.empty(candidates.shape, dtype=np.float32)
    queries64 = queries.astype(np.float64)
    columns = max(1, ELEMENTS_PER_BLOCK // queries.shape[1])
    rows = max(1, ELEMENTS_PER_BLOCK // (min(columns, candidates.shape[1] or 1) * queries.shape[1]))
    for row in range(0, len(queries), rows):
        for column in range(0, candidates.shape[1], columns):
            block = vectors[candidates[row:row + rows, column:column + columns]].astype(np.float64)
            block *= queries64[row:row + rows, None, :]
            # A sum over the contiguous last axis: the same arithmetic for a pair wherever it sits in a block.
            scores[row:row + rows, column:column + columns] = block.sum(axis=-1)
    return scores
