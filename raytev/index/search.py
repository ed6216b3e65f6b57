"""Batch search of one index or many parts (embedding shards, saved indexes), merged into one global ranking.

A part is searched alone, its top-depth kept and merged into the running top-depth, so only one part is in
memory at a time. `ranked_batches` hands each query batch on when it is ranked (the stages write it to the run
at once, so their memory is one batch x depth whatever the query count); `search` and `shard_search` gather the
batches for callers that want the whole result as arrays. Hits are ranked by score, ties going to the lower
global position (the order the parts are given, then add order inside a part), the same ranking for one index
and for any split of it.
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

import dataclasses
import functools
import glob
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytev.encoding.embeddings import find_shards
from raytev.errors import RaytevError
from raytev.index.build import index_shards
from raytev.index.dense_index import DenseIndex, docids_at, set_parameters
from raytev.index.storage import is_index_folder, load_index, read_info
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
    return shard_search([one_part(index_or_embeddings)], query_vectors, depth, batch_size, search_parameters, mmap)


def one_part(source: Source) -> Source:
    """`source` as one searchable part: embeddings (a folder, shard file or glob) become one in-memory flat index."""
    if isinstance(source, DenseIndex) or is_index_folder(source):
        return source
    return index_shards(find_shards(str(source)), progress=False, location=str(source))


def shard_search(sources: Source | Sequence[Source], query_vectors: np.ndarray, depth: int, batch_size: int = -1,
                 search_parameters: str = "", mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Search every part alone and merge into the global top-`depth`, held in memory for every query.

    Columns beyond what any query found are dropped (depth > ntotal); an ANN index that finds fewer for some
    queries leaves None docids and -inf scores at the end of those rows. `ranked_batches` has the arguments.
    """
    queries = _checked_queries(query_vectors)
    scores = np.full((len(queries), depth), -np.inf, dtype=np.float32)
    docids = np.full((len(queries), depth), None, dtype=object)
    for start, batch_scores, batch_docids in ranked_batches(sources, queries, depth, batch_size, search_parameters,
                                                            mmap):
        rows, width = batch_scores.shape
        scores[start:start + rows, :width], docids[start:start + rows, :width] = batch_scores, batch_docids
    width = int(np.not_equal(docids, None).sum(axis=1).max(initial=0))
    return scores[:, :width], docids[:, :width]


def ranked_batches(sources: Source | Sequence[Source], query_vectors: np.ndarray, depth: int, batch_size: int = -1,
                   search_parameters: str = "", mmap: bool = False, scratch_dir: str | os.PathLike | None = None,
                   rank_groups: RankGroups | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first query, scores, docids) of each batch of `batch_size` queries (-1: all at once), in query order,
    ranked over every part: the global top-`depth` (fewer columns where the parts hold fewer passages).

    Sources: embeddings (a folder, shard file or glob: each shard becomes an in-memory flat index), saved
    index folders, or DenseIndex objects, one loaded at a time. `search_parameters` such as "nprobe=32" or
    "efSearch=128" are set on each part. One part is searched batch by batch and each batch handed on as it is
    done. Several parts are searched one after another, each against every batch; the running top-`depth` of
    every query waits in two scratch files under `scratch_dir` (read and written a batch at a time, so memory
    holds one part and one batch) and the batches are handed on after the last part, with the docids of every
    part (ids only, not vectors) kept to name them. `rank_groups` searches groups of consecutive parts elsewhere
    (raytev.index.distributed: Ray tasks), each into its own scratch files, merged here batch by batch.
    """
    queries = _checked_queries(query_vectors)
    if depth < 1:
        raise RaytevError(f"depth must be at least 1, got {depth}.")
    parts = index_parts([sources] if isinstance(sources, (str, os.PathLike, DenseIndex)) else sources, mmap)
    step = batch_size if batch_size and batch_size > 0 else max(1, len(queries))
    batches = [slice(start, min(start + step, len(queries))) for start in range(0, len(queries), step)]
    if len(parts) == 1 and rank_groups is None:
        with progress_bar(total=len(queries), desc="searching", unit="query") as bar:
            part = _loaded(parts[0], queries.shape[1], search_parameters)
            for batch in batches:
                scores, positions = _search_part(part, queries[batch], depth)
                bar.update(len(scores))
                yield batch.start, scores, part.docids(positions)
        return
    with tempfile.TemporaryDirectory(prefix="raytev-search-", dir=scratch_dir) as scratch:
        if rank_groups is None:
            with progress_bar(total=len(parts) * len(queries), desc="searching", unit="query") as bar:
                folders = [Path(scratch) / "top-0"]
                ids = rank_into(folders[0], parts, queries, depth, batches, search_parameters, bar.update)
        else:
            folders, ids = rank_groups(parts, queries, depth, batches, search_parameters, Path(scratch))
        every_id = pa.concat_arrays(ids)
        tops = [RunningTop(folder, depth, write=False) for folder in folders]
        try:
            for batch in batches:
                found = [top.read(batch) for top in tops]
                scores, positions = top_hits(np.concatenate([scores for scores, _ in found], axis=1),
                                             np.concatenate([positions for _, positions in found], axis=1), depth)
                yield batch.start, scores, docids_at(every_id, positions)
        finally:
            for top in tops:
                top.close()


@dataclass(frozen=True)
class Part:
    """One part of what is searched: its name in messages, how to load it, where its rows start globally, its size
    and the model that encoded it ("" when unknown)."""

    name: str
    load: Callable[[], DenseIndex]
    offset: int
    size: int
    model: str
    in_memory: bool = False  # a DenseIndex object of this process: no other process can load it


RankGroups = Callable[[list[Part], np.ndarray, int, list[slice], str, Path], tuple[list[Path], list[pa.Array]]]


def rank_into(folder: Path, parts: Sequence[Part], queries: np.ndarray, depth: int, batches: Sequence[slice],
              search_parameters: str, progress: Callable[[int], object] = lambda _: None) -> list[pa.Array]:
    """Search `parts` one after another against every batch, leaving each query's top-`depth` over them (global
    positions) in `folder`'s RunningTop files; return the parts' ids. Rewrites the files whole when run again."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    with RunningTop(folder, depth, write=True) as best:
        for number, spec in enumerate(parts):
            part = _loaded(spec, queries.shape[1], search_parameters)
            for batch in batches:
                found_scores, found = _search_part(part, queries[batch], depth)
                kept_scores, kept = best.read(batch) if number else (found_scores[:, :0], found[:, :0])
                best.write(batch, *top_hits(np.concatenate([kept_scores, found_scores], axis=1),
                                            np.concatenate([kept, np.where(found >= 0, found + spec.offset, -1)],
                                                           axis=1), depth))
                progress(len(found))
            ids.append(part.ids)
            del part
    return ids


class RunningTop:
    """Every query's best (scores, global positions) so far, [queries, depth] in two files of a folder, read and
    written a batch of rows at a time with pread/pwrite (no map, so none of it stays in memory)."""

    def __init__(self, folder: Path, depth: int, write: bool):
        self.depth = depth
        mode = "w+b" if write else "rb"
        self.files = {np.float32: open(folder / "scores.f32", mode), np.int64: open(folder / "positions.i64", mode)}

    def __enter__(self) -> RunningTop:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        """Close both files."""
        for file in self.files.values():
            file.close()

    def read(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """The (scores, positions) of `rows`, as last written."""
        return tuple(self._read(kind, rows) for kind in self.files)

    def write(self, rows: slice, scores: np.ndarray, positions: np.ndarray) -> None:
        """Store the (scores, positions) of `rows`, padded to the depth with (-inf, -1)."""
        for kind, values, missing in ((np.float32, scores, -np.inf), (np.int64, positions, -1)):
            padded = np.full((len(values), self.depth), missing, dtype=kind)
            padded[:, :values.shape[1]] = values
            os.pwrite(self.files[kind].fileno(), padded.tobytes(), self._offset(kind, rows))

    def _read(self, kind, rows: slice) -> np.ndarray:
        size = np.dtype(kind).itemsize * self.depth
        data = os.pread(self.files[kind].fileno(), (rows.stop - rows.start) * size, self._offset(kind, rows))
        return np.frombuffer(data, dtype=kind).reshape(-1, self.depth)

    def _offset(self, kind, rows: slice) -> int:
        return rows.start * self.depth * np.dtype(kind).itemsize


def _loaded(spec: Part, dim: int, search_parameters: str) -> DenseIndex:
    """A part loaded, checked against the queries, its search parameters set."""
    part = spec.load()
    if part.faiss_index.d != dim:
        raise RaytevError(f"{spec.name} holds {part.faiss_index.d}-dimensional vectors but the queries have {dim}: "
                          "encode the queries with the model that encoded the passages.")
    set_parameters(part.faiss_index, search_parameters)
    return part


def _search_part(part: DenseIndex, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions within the part) of one batch; exact for flat parts."""
    if part.flat_vectors() is not None:
        return exact_flat_search(part, queries, depth)
    scores, positions = part.faiss_index.search(queries, depth)
    scores[positions < 0] = -np.inf
    return top_hits(scores, positions, depth)


def index_parts(sources: Sequence[Source], mmap: bool) -> list[Part]:
    """Every part of `sources` in order, loaded only when its turn comes; their models checked to agree."""
    parts: list[Part] = []
    for source in (named for source in sources for named in _index_folders_of(source)):
        if isinstance(source, DenseIndex):
            parts.append(Part(source.info.embeddings or "an index", functools.partial(lambda index: index, source),
                              0, source.faiss_index.ntotal, source.info.model, in_memory=True))
        elif is_index_folder(source):
            info = read_info(source)
            parts.append(Part(str(source), functools.partial(load_index, source, mmap), 0, info.ntotal, info.model))
        else:
            parts.extend(Part(str(shard.path), functools.partial(index_shards, [shard], progress=False), 0,
                              pq.read_metadata(shard.path).num_rows, shard.manifest.model if shard.manifest else "")
                         for shard in find_shards(str(source)))
    models = dict.fromkeys(part.model for part in parts if part.model)
    if len(models) > 1:
        first, other = list(models)[:2]
        named = next(part.name for part in parts if part.model == other)
        raise RaytevError(f"{named} was encoded with {other}, earlier parts with {first}: search parts of one "
                          "encoding together.")
    offsets = np.cumsum([0] + [part.size for part in parts]).tolist()
    return [dataclasses.replace(part, offset=offset) for part, offset in zip(parts, offsets)]


def _index_folders_of(source: Source) -> list[Source]:
    """A glob naming saved index folders as the folders (in name order); any other source as itself."""
    if isinstance(source, DenseIndex) or not any(char in str(source) for char in "*?["):
        return [source]
    matches = sorted(glob.glob(os.path.expanduser(str(source))))
    return matches if matches and all(is_index_folder(match) for match in matches) else [source]


def _checked_queries(query_vectors: np.ndarray) -> np.ndarray:
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    if queries.ndim != 2:
        raise RaytevError(f"query vectors must be a [queries, dim] array, got shape {queries.shape}.")
    return queries


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
