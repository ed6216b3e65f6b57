"""Batch search of one index or many parts (embedding shards, saved indexes), merged into one global ranking.

A part is searched alone, its top-depth kept and merged into the running top-depth, so only one part is in
memory at a time. Hits are ranked by score, ties going to the lower global position (the order the parts
are given, then add order inside a part), the same ranking for one index and for any split of it.
Flat parts are searched exactly (exact_flat_search), so a split corpus gives the same docids and scores as
one flat index over it; ANN parts (HNSW, IVF) rank what FAISS returns.

Exact search: Exact top-k over a flat index whose scores do not depend on how the corpus was split into shards.

FAISS's flat search multiplies through BLAS, whose rounding depends on the matrix shapes: the same query and
vector can score a few float32 ulps apart in one big index and in a shard (seen at dim 768 with 300 queries).
So FAISS only proposes candidates, a few more than asked, and every candidate is rescored as
float32(float64 dot product), which depends on the two vectors alone. A query's list is accepted once its
depth-th exact score beats the weakest FAISS score by more than FAISS's worst-case rounding error (nothing
left out can then rank in, ties included); otherwise it is fetched again twice as deep.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import numpy as np

from raytev.encoding.embeddings import find_shards
from raytev.errors import RaytevError
from raytev.index.build import index_shards
from raytev.index.dense_index import DenseIndex, set_parameters
from raytev.index.storage import is_index_folder, load_index
from raytev.progress import progress_bar

Source = DenseIndex | str | os.PathLike
UNIT_ROUNDOFF = 2.0 ** -24  # float32
ELEMENTS_PER_BLOCK = 1 << 20  # rescoring gathers candidates in blocks of 8 MiB of float64 (cache-sized)
MAX_FETCH_GROWTH, MIN_FETCH_LIMIT = 16, 4096  # candidates a query may fetch to settle ties: 16x the first, or 4096


def top_hits(scores: np.ndarray, positions: np.ndarray, depth: int, *carried: np.ndarray) -> tuple[np.ndarray, ...]:
    """The best `depth` columns of each row of (scores, positions, *carried); position -1 marks a missing hit."""
    order = np.lexsort((positions, -scores, positions < 0), axis=-1)[:, :depth]
    return tuple(np.take_along_axis(values, order, axis=1) for values in (scores, positions, *carried))


def search(index_or_embeddings: Source, query_vectors: np.ndarray, depth: int, batch_size: int = -1,
           search_parameters: str = "", mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scores [nq, depth], docids [nq, depth]) from an index, a saved index folder, or embeddings.

    Embeddings (a folder, shard file or glob) become one flat index in memory, searched once; `shard_search`
    searches them one shard at a time instead (memory for one shard, the same ranking).
    """
    if not isinstance(index_or_embeddings, DenseIndex) and not is_index_folder(index_or_embeddings):
        location = str(index_or_embeddings)
        index_or_embeddings = index_shards(find_shards(location), progress=False, location=location)
    return shard_search([index_or_embeddings], query_vectors, depth, batch_size, search_parameters, mmap)


def shard_search(sources: Source | Sequence[Source], query_vectors: np.ndarray, depth: int, batch_size: int = -1,
                 search_parameters: str = "", mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Search every part alone and merge into the global top-`depth`; one part in memory at a time.

    Sources: embeddings (a folder, shard file or glob: each shard becomes an in-memory flat index), saved
    index folders, or DenseIndex objects. Queries go to FAISS `batch_size` at a time (-1: all at once).
    `search_parameters` such as "nprobe=32" or "efSearch=128" are set on each part. Columns beyond what any
    query found are dropped (depth > ntotal); an ANN index that finds fewer for some queries leaves None
    docids and -inf scores at the end of those rows.
    """
    queries = _checked_queries(query_vectors)
    if depth < 1:
        raise RaytevError(f"depth must be at least 1, got {depth}.")
    parts = _part_loaders([sources] if isinstance(sources, (str, os.PathLike, DenseIndex)) else sources, mmap)
    scores = np.full((len(queries), depth), -np.inf, dtype=np.float32)
    positions = np.full((len(queries), depth), -1, dtype=np.int64)
    docids = np.full((len(queries), depth), None, dtype=object)
    offset, model = 0, ""
    step = batch_size if batch_size and batch_size > 0 else max(1, len(queries))
    with progress_bar(total=len(parts) * len(queries), desc="searching", unit="query") as bar:
        for name, load in parts:
            part = load()
            model = _checked_part(part, name, queries.shape[1], model)
            set_parameters(part.faiss_index, search_parameters)
            for start in range(0, len(queries), step):
                batch = slice(start, start + step)
                found_scores, found = _search_part(part, queries[batch], depth)
                merged = top_hits(np.concatenate([scores[batch], found_scores], axis=1),
                                  np.concatenate([positions[batch], np.where(found >= 0, found + offset, -1)], axis=1),
                                  depth, np.concatenate([docids[batch], part.docids(found)], axis=1))
                scores[batch], positions[batch], docids[batch] = merged
                bar.update(len(found))
            offset += part.faiss_index.ntotal
            del part
    width = int((positions >= 0).sum(axis=1).max(initial=0))
    return scores[:, :width], docids[:, :width]


def _search_part(part: DenseIndex, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions within the part) of one batch; exact for flat parts."""
    if part.flat_vectors() is not None:
        return exact_flat_search(part, queries, depth)
    scores, positions = part.faiss_index.search(queries, depth)
    scores[positions < 0] = -np.inf
    return top_hits(scores, positions, depth)


def _part_loaders(sources: Sequence[Source], mmap: bool) -> list[tuple[str, Callable[[], DenseIndex]]]:
    """(name, loader) for every part, loaded only when its turn comes."""
    parts: list[tuple[str, Callable[[], DenseIndex]]] = []
    for source in sources:
        if isinstance(source, DenseIndex):
            parts.append((source.info.embeddings or "an index", functools.partial(lambda index: index, source)))
        elif is_index_folder(source):
            parts.append((str(source), functools.partial(load_index, source, mmap)))
        else:
            parts.extend((str(shard.path), functools.partial(index_shards, [shard], progress=False))
                         for shard in find_shards(str(source)))
    return parts


def _checked_queries(query_vectors: np.ndarray) -> np.ndarray:
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    if queries.ndim != 2:
        raise RaytevError(f"query vectors must be a [queries, dim] array, got shape {queries.shape}.")
    return queries


def _checked_part(part: DenseIndex, name: str, dim: int, model: str) -> str:
    """The model of the parts so far, after checking that `part` fits the queries and the parts before it."""
    if part.faiss_index.d != dim:
        raise RaytevError(f"{name} holds {part.faiss_index.d}-dimensional vectors but the queries have {dim}: "
                          "encode the queries with the model that encoded the passages.")
    if model and part.info.model and part.info.model != model:
        raise RaytevError(f"{name} was encoded with {part.info.model}, earlier parts with {model}: search parts "
                          "of one encoding together.")
    return model or part.info.model


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
    # Where more passages than this tie (within rounding) at the cut, FAISS's order among them stands: a collapsed
    # model, whose vectors all tie, would otherwise rescore the whole corpus for every query.
    limit = min(total, max(MAX_FETCH_GROWTH * fetch, MIN_FETCH_LIMIT))
    while len(pending):
        faiss_scores, candidates = index.faiss_index.search(queries[pending], fetch)
        exact = exact_scores(queries[pending], vectors, candidates)
        best_scores, best_positions = top_hits(exact, candidates, width)
        settled = np.full(len(pending), fetch >= limit) | (best_scores[:, -1] > faiss_scores[:, -1] + slack[pending])
        scores[pending[settled]], positions[pending[settled]] = best_scores[settled], best_positions[settled]
        pending, fetch = pending[~settled], min(limit, 2 * fetch)
    return scores, positions


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
