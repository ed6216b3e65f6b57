"""Build a FAISS index from embedding shards: flat by default or any index_factory spec, trained on a sample.

Training sample: How many vectors an index trains on, and drawing that random sample across shards one shard at a time.

Sample size: max(40 x the largest number of centroids the index trains, 100,000), capped at the corpus.
FAISS's k-means wants 39-256 points per centroid (it warns below 39 and subsamples above 256), and 100k
keeps small nlist values and product quantizers well fed. The sample is uniform over the whole corpus and
seeded, so the same embeddings and seed train the same index.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytev.encoding.embeddings import EmbeddingShard, find_shards
from raytev.errors import RaytevError
from raytev.index.dense_index import DenseIndex, IndexInfo, set_parameters
from raytev.index.faiss_setup import faiss
from raytev.progress import progress_bar

DEFAULT_SPEC = "Flat"
POINTS_PER_CENTROID = 40
MIN_SAMPLE = 100_000
AUTO_SPEC, AUTO_LISTS = "auto", "IVFauto"  # `auto` alone is IVFauto,Flat


def sized_spec(spec: str, total: int) -> str:
    """`spec` with IVFauto (or `auto`, IVFauto,Flat) replaced by IVF<nlist> for `total` vectors.

    nlist is the smallest power of two of at least 4 x sqrt(total), so within FAISS's advice of 4-16 x sqrt(N)
    lists: 4096 for 1M vectors, 8192 for 1.6M, 16384 for 8.8M (MS MARCO), 32768 for 21M (Wikipedia).
    """
    if spec.strip().lower() == AUTO_SPEC:
        spec = f"{AUTO_LISTS},Flat"
    if AUTO_LISTS not in spec:
        return spec
    lists = 1 << max(0, int(np.ceil(np.log2(4 * np.sqrt(max(total, 1))))))
    return spec.replace(AUTO_LISTS, f"IVF{lists}")


def make_faiss_index(spec: str, dim: int) -> faiss.Index:
    """An empty inner-product index: IndexFlatIP for "Flat", else faiss.index_factory(dim, spec, IP)."""
    if spec == DEFAULT_SPEC:
        return faiss.IndexFlatIP(dim)
    try:
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1].split(": ", 1)[-1]
        raise RaytevError(f"cannot make a FAISS index from spec {spec!r} (dim {dim}): {reason}. Examples: Flat, "
                          "HNSW32, IVF4096,Flat, IVF4096,PQ64 (PQ's m must divide the dimension).") from None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise RaytevError(f"FAISS builds {spec!r} for L2 distance only; raytev scores by inner product: choose "
                          "another spec (Flat, HNSW32, IVF...).")
    # Polysemous training only serves Hamming pre-filtering (polysemous_ht), which raytev's search never turns on;
    # it took 55 of the 79 s of training IVF1024,PQ48 on 100k vectors.
    ivf = faiss.try_extract_index_ivf(index)
    for inner in (faiss.downcast_index(index), faiss.downcast_index(ivf) if ivf is not None else None):
        if hasattr(inner, "do_polysemous_training"):
            inner.do_polysemous_training = False
    return index


def build_index(location: str, spec: str = DEFAULT_SPEC, use_gpu: bool = False, seed: int = 0,
                build_parameters: str = "", progress: bool = True) -> DenseIndex:
    """Index every embedding at `location` (folder, shard file or glob), adding one shard at a time."""
    return index_shards(find_shards(location), spec, use_gpu, seed, build_parameters, progress, location)


def index_shards(shards: list[EmbeddingShard], spec: str = DEFAULT_SPEC, use_gpu: bool = False, seed: int = 0,
                 build_parameters: str = "", progress: bool = True, location: str = "") -> DenseIndex:
    """Index the given shards (checked by find_shards) in order; `location` names them in messages and IndexInfo."""
    started = time.perf_counter()
    location = location or str(shards[0].path)
    dim = shards[0].dim
    counts = [pq.read_metadata(shard.path).num_rows for shard in shards]
    spec = sized_spec(spec, sum(counts))
    index = make_faiss_index(spec, dim)
    set_parameters(index, build_parameters)
    training_vectors = 0
    if not index.is_trained:
        training_vectors = training_sample_size(index, spec, sum(counts), location)
        sample = draw_training_sample(shards, counts, training_vectors, seed, progress)
    index, device = _on_device(index, spec, use_gpu)
    if training_vectors:
        _train(index, sample, spec)
        del sample
    ids = _add_shards(index, shards, sum(counts), spec, progress)
    if device == "gpu":
        index = faiss.index_gpu_to_cpu(index)
    manifest = shards[0].manifest
    info = IndexInfo(spec=spec, dim=dim, ntotal=index.ntotal, model=manifest.model if manifest else "",
                     kind=manifest.kind if manifest else "", embeddings=_absolute(location),
                     build_parameters=build_parameters, training_vectors=training_vectors, device=device,
                     build_seconds=round(time.perf_counter() - started, 3))
    return DenseIndex(index, ids, info)


def _on_device(index: faiss.Index, spec: str, use_gpu: bool) -> tuple[faiss.Index, str]:
    """The index moved to every GPU when asked for and FAISS sees one; else itself on the CPU."""
    if not use_gpu or faiss.get_num_gpus() == 0:
        return index, "cpu"
    try:
        return faiss.index_cpu_to_all_gpus(index), "gpu"
    except RuntimeError:
        raise RaytevError(f"FAISS has no GPU version of {spec!r} (HNSW is CPU only): build it without use_gpu.") \
            from None


def _train(index: faiss.Index, sample: np.ndarray, spec: str) -> None:
    try:
        index.train(sample)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1]
        raise RaytevError(f"FAISS could not train {spec!r} on {len(sample):,} vectors: {reason}") from None


def _add_shards(index: faiss.Index, shards: list[EmbeddingShard], total: int, spec: str, progress: bool) -> pa.Array:
    """Add every shard's vectors in order and return the ids, position i being FAISS id i."""
    ids = []
    with progress_bar(total=total, desc=f"indexing ({spec})", unit="vec", unit_scale=True,
                      disable=not progress) as bar:
        for shard in shards:
            shard_ids, vectors = shard.read()
            index.add(vectors)
            ids.append(pa.array(shard_ids, pa.large_string()))
            bar.update(len(vectors))
    return pa.concat_arrays(ids) if ids else pa.array([], pa.large_string())


def _absolute(location: str) -> str:
    return os.path.abspath(os.path.expanduser(location))


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
    for number, shard in enumerate(progress_bar(iterable=shards, desc="training sample", unit="shard",
                                                disable=None if progress else True)):
        rows = chosen[bounds[number]:bounds[number + 1]] - offsets[number]
        if len(rows):  # shards the sample misses are not read at all
            _, vectors = shard.read()
            sample[bounds[number]:bounds[number + 1]] = vectors[rows]
    return sample
