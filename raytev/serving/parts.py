"""The part of an index one shard serves, loaded by path inside the shard's replica, and the parts' hits merged.

`index` names a saved index folder, an embeddings folder (or glob), or one saved index folder per shard
separated by commas. Shard i of N serves rows [i*n/N, (i+1)*n/N) of a flat index or of the embeddings, in
their order, so merging the shards' top-k (merge_shard_hits) gives exactly the ranking of one flat index. An ANN
index (HNSW, IVF) is one graph or one set of lists and cannot be cut by rows: it is served whole by one
shard, or as one folder per shard (built with `raytev index` from parts of the embeddings), whose merged
ranking is that of `raytev search` over the same list of folders.

A saved index is memory-mapped (load_index(mmap=True)), a flat shard being a view of its rows of the file: no copy
in the replica, and its pages are shared through the page cache by every replica on the node. Embeddings are read
into a flat index in the replica's memory (Parquet cannot be mapped as vectors): save an index to serve big ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytev.encoding.embeddings import find_shards
from raytev.errors import RaytevError
from raytev.index.build import DEFAULT_SPEC, make_faiss_index
from raytev.index.dense_index import DenseIndex, IndexInfo
from raytev.index.search import top_hits
from raytev.index.storage import is_index_folder, load_index


def row_range(rows: int, shard: int, num_shards: int) -> tuple[int, int]:
    """The contiguous rows [low, high) shard `shard` of `num_shards` serves."""
    return rows * shard // num_shards, rows * (shard + 1) // num_shards


def index_locations(index: str) -> list[str]:
    """The locations `index` names: one, or one per shard (comma-separated)."""
    return [part.strip() for part in index.split(",") if part.strip()]


def check_index(index: str | None, num_shards: int) -> None:
    """Fail early, before any replica starts, when `index` cannot give `num_shards` parts."""
    if not index:
        raise RaytevError("pass --index: a saved index folder, an embeddings folder, or one index folder per shard.")
    locations = index_locations(index)
    if len(locations) > 1:
        if len(locations) != num_shards:
            raise RaytevError(f"--index names {len(locations)} folders but --num_shards is {num_shards}: give "
                              "one folder per shard.")
        missing = [location for location in locations if not is_index_folder(location)]
        if missing:
            raise RaytevError(f"not saved index folders (no index.json): {', '.join(missing)}; a list names the "
                              "folders `raytev index` wrote, one per shard.")
    elif not is_index_folder(locations[0]):
        if not any(char in locations[0] for char in "*?[") and not os.path.exists(os.path.expanduser(locations[0])):
            raise RaytevError(f"--index {locations[0]}: no such file or folder; give a saved index folder (`raytev "
                              "index`), an embeddings folder (`raytev encode`), or one index folder per shard.")
        find_shards(locations[0])  # raises what is wrong with it as embeddings


def load_part(index: str, shard: int, num_shards: int) -> tuple[DenseIndex, tuple[int, int] | None]:
    """The rows of `index` that shard `shard` of `num_shards` serves, as an index of their own, and which rows
    of the whole they are (None for one folder per shard)."""
    locations = index_locations(index)
    if len(locations) > 1:
        if len(locations) != num_shards:
            raise RaytevError(f"{index!r} names {len(locations)} index folders for {num_shards} shards: give one "
                              "folder per shard.")
        return load_index(locations[shard], mmap=True), None
    location = locations[0]
    if is_index_folder(location):
        return _index_rows(location, shard, num_shards)
    return _embedding_rows(location, shard, num_shards)


def _index_rows(folder: str, shard: int, num_shards: int) -> tuple[DenseIndex, tuple[int, int]]:
    # The file is mapped, not read, and a flat shard is a view of its rows there: the replica copies nothing, touches
    # only its rows' pages, and replicas of a node share those pages through the page cache.
    whole = load_index(folder, mmap=True)
    if num_shards == 1:
        return whole, (0, whole.faiss_index.ntotal)
    if whole.flat_vectors() is None:
        raise RaytevError(
            f"{folder} is a {whole.info.spec} index, which cannot be cut into {num_shards} shards by rows (an ANN "
            "index is one graph or one set of lists). Serve it with --num_shards 1, or build one index per shard "
            "from parts of the embeddings and pass the folders comma-separated.")
    low, high = row_range(whole.faiss_index.ntotal, shard, num_shards)
    return whole.row_slice(low, high), (low, high)


def _embedding_rows(location: str, shard: int, num_shards: int) -> tuple[DenseIndex, tuple[int, int]]:
    shards = find_shards(location)
    counts = [pq.read_metadata(part.path).num_rows for part in shards]
    low, high = row_range(sum(counts), shard, num_shards)
    ids, vectors, start = [], [], 0
    for part, count in zip(shards, counts):
        if start < high and start + count > low:  # only the files that hold some of this shard's rows
            part_ids, part_vectors = part.read()
            first, last = max(low - start, 0), min(high - start, count)
            ids.extend(part_ids[first:last].tolist())
            vectors.append(part_vectors[first:last])
        start += count
    dim = shards[0].dim
    manifest = shards[0].manifest
    info = IndexInfo(spec=DEFAULT_SPEC, dim=dim, ntotal=0, model=manifest.model if manifest else "",
                     kind=manifest.kind if manifest else "", embeddings=os.path.abspath(os.path.expanduser(location)))
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
    return _flat_part(stacked, pa.array(ids, pa.large_string()), info), (low, high)


def _flat_part(vectors: np.ndarray, ids: pa.Array, info: IndexInfo) -> DenseIndex:
    index = make_faiss_index(DEFAULT_SPEC, vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return DenseIndex(index, ids, replace(info, ntotal=index.ntotal))


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
