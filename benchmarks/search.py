"""Search: exact flat vs HNSW32 vs IVF-PQ on a synthetic 1M x 384 set (and SciFact embeddings when given).

Per index: build time, queries per second of one batched search of all queries (depth 10), recall@10
against the flat index, the FAISS file's size, and the RSS the build added (after it, and at its peak).
Each index is built and searched in a fresh process, so the memory figures are its own; RSS growth also
holds what reading the Parquet shards leaves resident (~70-100 MB, seen with a 2.4 MB index on 30k vectors).

Specs (for 384 dims):
  Flat          raytev's exact search: FAISS proposes candidates, each rescored in float64.
  HNSW32        32 links per node; efConstruction 40 (FAISS's default; 20 built 1M vectors twice as fast
                but dropped recall@10 from 0.97 to 0.82 at 200k), efSearch 128.
  IVF<n>,PQ48   48 sub-quantizers of 8 bits (48 bytes a vector, 8 dims each); nlist 1024 on 1M vectors
                (N/64 as a power of two, at most 1024, on smaller sets), nprobe 16. Trained on the sample
                raytev's build draws (max(40 x nlist, 100k) vectors).
Synthetic set: a seeded gaussian mixture of 1,000 centres; each point is its centre plus noise in a shared
32-dimensional subspace plus small isotropic noise, unit-normalized (real embeddings have a low intrinsic
dimension, which is what lets ANN indexes work); queries come from the same mixture.
SciFact: --scifact_embeddings is an embeddings folder of the corpus; queries are --scifact_query_embeddings
or, without it, 300 corpus vectors drawn at random.

faiss-cpu 1.15.1 ships OpenBLAS 0.3.15, which does not know CPUs newer than it (this one: Sapphire Rapids)
and falls back to generic kernels: flat search and k-means run ~7x slower. On such CPUs run with
OPENBLAS_CORETYPE=SkylakeX; the JSON records the setting.

    python benchmarks/search.py [--scifact_embeddings PATH] [--rows 1000000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import write_result  # noqa: E402

DEPTH = 10
HNSW = ("HNSW32", "efConstruction=40", "efSearch=128")
SUBSPACE = 32
SHARD_ROWS = 100_000


def pq_codes(dim: int) -> str:
    """The PQ part of the IVF-PQ spec for `dim`: 48 sub-quantizers where they divide it (8 dims each at 384), else
    one per 8 dims."""
    return f"PQ{48 if dim % 48 == 0 else dim // 8}"


def ivf_pq(rows: int, dim: int) -> tuple[str, str, str]:
    """(spec, build parameters, search parameters) of the IVF-PQ index for a corpus of `rows` x `dim`."""
    nlist = min(1024, 1 << max(0, (rows // 64).bit_length() - 1))
    return f"IVF{nlist},{pq_codes(dim)}", "", "nprobe=16"


def synthetic(folder: Path, rows: int, queries: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """Write the synthetic corpus as embedding shards into `folder`; return the query vectors."""
    from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)) / np.sqrt(dim)
    basis = np.linalg.qr(rng.standard_normal((dim, SUBSPACE)))[0].T  # orthonormal directions of the noise

    def draw(count: int, draw_rng: np.random.Generator) -> np.ndarray:
        points = (centres[draw_rng.integers(0, len(centres), count)]
                  + 0.5 / np.sqrt(SUBSPACE) * (draw_rng.standard_normal((count, SUBSPACE)) @ basis)
                  + 0.1 * draw_rng.standard_normal((count, dim)) / np.sqrt(dim))
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    shards = -(-rows // SHARD_ROWS)
    writer = EmbeddingsWriter(folder, EmbeddingsManifest(model="synthetic-mixture", dim=dim, kind="passages",
                                                         planned_shards=shards), overwrite=True)
    for number in range(shards):
        start, end = number * SHARD_ROWS, min(rows, (number + 1) * SHARD_ROWS)
        writer.write_shard(number, [f"s{row}" for row in range(start, end)], draw(end - start, rng))
    return draw(queries, np.random.default_rng(seed + 1))


def measure(job: dict) -> dict:
    """Build, save and search one index in this (fresh) process; its figures and the docids found."""
    import psutil
    import pyarrow as pa

    from raytev.index.build import build_index
    from raytev.index.faiss_setup import faiss  # raytev's faiss: OpenBLAS's kernels chosen before it loads
    from raytev.index.search import search
    from raytev.index.storage import save_index

    faiss.omp_set_num_threads(os.cpu_count())
    process = psutil.Process()
    queries = np.load(job["queries"])
    rss_before = process.memory_info().rss
    index = build_index(job["location"], job["spec"], build_parameters=job["build"], progress=False)
    pa.default_memory_pool().release_unused()  # Arrow keeps freed shard buffers pooled otherwise
    rss_built = process.memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    folder = save_index(index, job["folder"])
    search(index, queries[:10], DEPTH, search_parameters=job["search"])  # warm-up
    started = time.perf_counter()
    _, docids = search(index, queries, DEPTH, search_parameters=job["search"])
    seconds = time.perf_counter() - started
    return {"spec": job["spec"], "build_parameters": job["build"], "search_parameters": job["search"],
            "build_seconds": index.info.build_seconds, "training_vectors": index.info.training_vectors,
            "search_seconds": round(seconds, 3), "qps": round(len(queries) / seconds, 1),
            "index_bytes": (folder / "index.faiss").stat().st_size,
            "ids_bytes": (folder / "ids.parquet").stat().st_size,
            "rss_growth_bytes": rss_built - rss_before, "peak_rss_growth_bytes": peak - rss_before,
            "docids": docids.tolist()}


def run_dataset(name: str, location: str, queries: np.ndarray, rows: int, dim: int, work: Path) -> list[dict]:
    """Every spec on one dataset, each in its own process; recall@10 against the flat index."""
    np.save(work / f"{name}-queries.npy", queries)
    results = []
    for spec, build, search_parameters in (("Flat", "", ""), HNSW, ivf_pq(rows, dim)):
        job = {"location": location, "queries": str(work / f"{name}-queries.npy"), "spec": spec, "build": build,
               "search": search_parameters, "folder": str(work / f"{name}-index")}
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh_process:
            result = fresh_process.submit(measure, job).result()
        print(f"  {name} {spec}: built in {result['build_seconds']:.1f} s, {result['qps']:.0f} queries/s", flush=True)
        results.append(result)
    truth = results[0]["docids"]
    for result in results:
        found = result.pop("docids")
        result["recall_at_10"] = round(float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])), 4)
    return results


def scifact(args: argparse.Namespace) -> tuple[str, np.ndarray, int, int] | None:
    """(location, queries, rows, dim) of the SciFact embeddings, or None when not given."""
    if not args.scifact_embeddings:
        print("SciFact: skipped (no --scifact_embeddings given)")
        return None
    from raytev.encoding.embeddings import find_shards, load_embeddings

    shards = find_shards(args.scifact_embeddings)
    rows = sum(shard.manifest.shards[shard.path.name] if shard.manifest else len(shard.read()[0]) for shard in shards)
    if args.scifact_query_embeddings:
        queries = load_embeddings(args.scifact_query_embeddings)[1]
    else:
        vectors = load_embeddings(args.scifact_embeddings)[1]
        queries = vectors[np.random.default_rng(0).choice(len(vectors), min(300, len(vectors)), replace=False)]
    return args.scifact_embeddings, queries, rows, shards[0].dim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact_embeddings", default="")
    parser.add_argument("--scifact_query_embeddings", default="")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    datasets = {}
    with tempfile.TemporaryDirectory(prefix="raytev-search-bench-") as temporary:
        work = Path(temporary)
        given = scifact(args)
        if given:
            location, queries, rows, dim = given
            datasets["scifact"] = {"rows": rows, "dim": dim, "queries": len(queries),
                                   "results": run_dataset("scifact", location, queries, rows, dim, work)}
        started = time.perf_counter()
        queries = synthetic(work / "synthetic", args.rows, args.queries)
        print(f"synthetic: {args.rows:,} x 384 written in {time.perf_counter() - started:.0f} s", flush=True)
        datasets["synthetic"] = {"rows": args.rows, "dim": 384, "queries": args.queries,
                                 "results": run_dataset("synthetic", str(work / "synthetic"), queries, args.rows,
                                                        384, work)}

    print(f"\n{'dataset':<10}{'index':<15}{'build s':>9}{'QPS':>9}{'recall@10':>11}{'index MiB':>11}"
          f"{'RSS+ MiB':>10}{'peak+ MiB':>11}")
    for name, dataset in datasets.items():
        for result in dataset["results"]:
            print(f"{name:<10}{result['spec']:<15}{result['build_seconds']:>9.1f}{result['qps']:>9.0f}"
                  f"{result['recall_at_10']:>11.4f}{result['index_bytes'] / 2**20:>11.1f}"
                  f"{result['rss_growth_bytes'] / 2**20:>10.0f}{result['peak_rss_growth_bytes'] / 2**20:>11.0f}")
    path = write_result("search", {
        "settings": {"depth": DEPTH, "threads": os.cpu_count(), "hnsw": " ".join(HNSW),
                     "ivf_pq": "IVF<nlist>,PQ48 nprobe=16, nlist = N/64 as a power of two, at most 1024",
                     "synthetic": "1,000-centre gaussian mixture, noise 0.5 in a 32-dim subspace + 0.1 isotropic, "
                                  "unit-normalized, seed 0; queries seed 1",
                     "timing": "build: whole build_index (reading shards, training, adding); QPS: one batched "
                               "search of all queries after a 10-query warm-up; each index in a fresh process",
                     "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "")},
        "datasets": datasets,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
