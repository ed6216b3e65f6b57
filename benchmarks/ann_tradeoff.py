"""Recall@10 against queries per second for Flat, IVF-Flat, IVF-PQ and HNSW on the same corpus (1.6M by default).

Two data sets, each with its queries drawn the same way as its corpus:
  --data clustered (default): search_scale.py's, unit vectors around 1,000 fixed random centres (dim 32, the tiny
      test model's width). The clusters are far apart, so inverted lists find a query's neighbours easily.
  --data mixture: search.py's embedding-like set (dim 384 by default): a 1,000-centre gaussian mixture with its
      noise in a shared 32-dim subspace: far harder for ANN (search.py at 1M: HNSW32 recall@10 0.917).
IVF-PQ takes each set's own script's codes: PQ16 for clustered (search_scale.py's spec, 2 dims each), search.py's
rule for mixture (48 sub-quantizers at 384, 8 dims each); its `,RFlat` form
(FAISS's IndexRefineFlat) keeps the vectors too and rescores k_factor_rf x 10 PQ candidates exactly.
Each index is built by raytev (`build_index`, IVF lists sized by IVFauto: 8,192 at 1.6M,
trained on the documented sample) and searched by raytev's `search` for 10 hits, all queries in one batch; QPS is
the best of two searches, recall@10 the share of Flat's (exact) top 10 found.

    python benchmarks/ann_tradeoff.py [--data clustered|mixture] [--dim 384] [--passages 1600000] [--queries 2000]
        [--work /tmp/ann] [--name ann_tradeoff] [--indexes SPEC ...]   (Flat, the truth, is always run)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from search_scale import DIM, SPEC, clustered_unit_vectors, write_vectors  # noqa: E402

NPROBES = ["nprobe=8", "nprobe=32", "nprobe=128"]


def indexes(pq_codes: str) -> dict[str, list[str]]:
    """spec -> the search settings swept (one row each); Flat first, the exact answer the others are scored by."""
    pq = f"IVFauto,{pq_codes}"
    return {"Flat": [""], "IVFauto,Flat": NPROBES, pq: NPROBES,
            f"{pq},RFlat": ["nprobe=32,k_factor_rf=4", "nprobe=32,k_factor_rf=16"],  # PQ's candidates rescored exactly
            "HNSW32": ["efSearch=16", "efSearch=64", "efSearch=256"]}


def corpus_and_queries(args: argparse.Namespace) -> tuple[Path, np.ndarray, int, str]:
    """(embeddings folder, query vectors, dim, PQ codes) of the chosen data set, written under args.work."""
    folder = args.work / "passages"
    if args.data == "mixture":
        from search import pq_codes, synthetic

        return folder, synthetic(folder, args.passages, args.queries, args.dim), args.dim, pq_codes(args.dim)
    centres = np.random.default_rng(0).standard_normal((1000, DIM))
    embeddings = write_vectors(folder, clustered_unit_vectors(args.passages, 1, centres), "passages", "d")
    return embeddings, clustered_unit_vectors(args.queries, 2, centres), DIM, SPEC.split(",")[1]


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top 10 among the 10 found."""
    return float(np.mean([len(set(row) & set(expected)) / 10 for row, expected in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["clustered", "mixture"], default="clustered")
    parser.add_argument("--dim", type=int, default=384, help="dimension of --data mixture (clustered is 32)")
    parser.add_argument("--passages", type=int, default=1_600_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ann"))
    parser.add_argument("--name", default="ann_tradeoff")
    parser.add_argument("--indexes", nargs="+", help="only these specs of the sweep (as written there) after Flat")
    args = parser.parse_args()

    from raytev.index.build import build_index
    from raytev.index.search import search

    embeddings, queries, dim, pq_codes = corpus_and_queries(args)
    rows, truth = [], None
    for spec, settings in indexes(pq_codes).items():
        if args.indexes and spec != "Flat" and spec not in args.indexes:
            continue
        started = time.perf_counter()
        index = build_index(str(embeddings), spec, progress=False)
        built = time.perf_counter() - started
        for parameters in settings:
            timings = []
            for _ in range(2):
                started = time.perf_counter()
                _, docids = search(index, queries, 10, -1, parameters)
                timings.append(time.perf_counter() - started)
            truth = docids if truth is None else truth  # Flat comes first: the exact top 10
            rows.append({"index": index.info.spec, "search": parameters or "exact", "build_seconds": round(built, 1),
                         "qps": round(args.queries / min(timings), 1),
                         "recall_at_10": round(recall_at_10(docids, truth), 4)})
            print(f"{rows[-1]['index']:<14} {rows[-1]['search']:<13} build {built:7.1f} s  {rows[-1]['qps']:>10,.1f} "
                  f"queries/s  recall@10 {rows[-1]['recall_at_10']:.4f}", flush=True)
        del index
    shutil.rmtree(args.work / "passages")
    settings = {"data": args.data, "passages": args.passages, "queries": args.queries, "dim": dim, "depth": 10}
    print(f"-> {write_result(args.name, {'settings': settings, 'results': rows})}")


if __name__ == "__main__":
    main()
