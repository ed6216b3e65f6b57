"""Encoding throughput on the SciFact corpus (5,183 abstracts): `raytev encode` with 1 and 2 actors, fp32 and
bf16, torch and JAX (--backend jax, 1 and 2 devices per actor), against sentence-transformers `encode` (fp32,
same model, same maximum length), in one run. JAX rows also report their largest difference from the torch
1-actor fp32 vectors.

Each configuration also encodes the 300 test queries, searches a flat index and reports nDCG@10, so speed
never hides a change in quality. raytev is timed as a whole `encode` call (Ray Data start-up, actors loading
the model, writing shards); the peer is timed on `model.encode` alone, its model already loaded. Ray runs
once for all raytev configurations.

    python benchmarks/encode_throughput.py [--max_len 256] [--batch 32] [--rows "raytev 1 actor fp32,raytev jax ..."]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def ndcg_at_10(query_ids, query_vectors, corpus_location_or_pair) -> float:
    """nDCG@10 on SciFact test of these query vectors against a corpus (embeddings folder or (ids, vectors))."""
    import numpy as np

    from raytev.bundled import bundled_dataset_path
    from raytev.data.qrels import read_qrels
    from raytev.errors import ProblemLog
    from raytev.eval.metrics import evaluate_run
    from raytev.index.search import search

    if isinstance(corpus_location_or_pair, tuple):
        from raytev.index.faiss_setup import faiss

        ids, vectors = corpus_location_or_pair
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        scores, positions = index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), 10)
        docids = np.asarray(ids, dtype=object)[positions]
    else:
        scores, docids = search(corpus_location_or_pair, query_vectors, 10)
    run = {qid: [(str(d), float(s)) for d, s in zip(row_ids, row_scores)]
           for qid, row_ids, row_scores in zip(query_ids, docids, scores)}
    qrels = read_qrels(bundled_dataset_path("scifact") / "qrels" / "test.tsv", ProblemLog())
    return evaluate_run(run, qrels, ["nDCG@10"])["nDCG@10"]


def peer(args) -> tuple[float, float]:
    """(docs/s, nDCG@10) of sentence-transformers, fp32."""
    from sentence_transformers import SentenceTransformer

    from raytev.bundled import bundled_dataset_path, resolve_model_path

    root = bundled_dataset_path("scifact")
    with gzip.open(root / "corpus.jsonl.gz", "rt") as handle:
        records = [json.loads(line) for line in handle]
    texts = [(r["title"] + " " + r["text"]).strip() for r in records]
    test_ids = {line.split("\t")[0] for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    with open(root / "queries.jsonl") as handle:
        queries = [q for q in map(json.loads, handle) if q["_id"] in test_ids]
    model = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    model.max_seq_length = args.max_len
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=args.batch, normalize_embeddings=True, convert_to_numpy=True)
    seconds = time.perf_counter() - started
    query_vectors = model.encode([q["text"] for q in queries], batch_size=args.batch, normalize_embeddings=True)
    quality = ndcg_at_10([q["_id"] for q in queries], query_vectors, ([r["_id"] for r in records], vectors))
    return len(texts) / seconds, quality


def raytev_config(args, actors: int, bf16: bool, scratch: Path, backend: str = "torch",
                  devices: int = 1) -> tuple[float, float]:
    """(docs/s, nDCG@10) of `raytev encode` with this many actors, precision and backend."""
    import raytev
    from raytev.data.embeddings import load_embeddings

    label = corpus_label(actors, bf16, backend, devices)
    flags = dict(model_name_or_path=MODEL, dataset_name="scifact", dataset_split="test", passage_max_len=args.max_len,
                 query_max_len=args.max_len, num_negatives=0, per_device_eval_batch_size=args.batch,
                 num_actors=actors, bf16=bf16, backend=backend, jax_cpu_devices=devices)
    corpus = raytev.encode(**flags, encode_output_path=str(scratch / f"corpus-{label}"))
    raytev.encode(**flags, encode_is_query=True, encode_output_path=str(scratch / f"queries-{label}"))
    query_ids, query_vectors = load_embeddings(str(scratch / f"queries-{label}"))
    return corpus.rows / corpus.seconds, ndcg_at_10(query_ids.tolist(), query_vectors, str(scratch / f"corpus-{label}"))


def corpus_label(actors: int, bf16: bool, backend: str, devices: int) -> str:
    """The scratch folder name of one configuration's corpus vectors."""
    return f"{backend}-{actors}a-{devices}d-{'bf16' if bf16 else 'fp32'}"


# label -> (actors, bf16, backend, JAX devices per actor)
CONFIGS = {
    "raytev 1 actor fp32": (1, False, "torch", 1),
    "raytev 2 actors fp32": (2, False, "torch", 1),
    "raytev 1 actor bf16": (1, True, "torch", 1),
    "raytev 2 actors bf16": (2, True, "torch", 1),
    "raytev jax 1 actor fp32": (1, False, "jax", 1),
    "raytev jax 1 actor 2 devices fp32": (1, False, "jax", 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rows", default=",".join(CONFIGS), help="comma-separated raytev rows to run")
    args = parser.parse_args()

    import numpy as np
    import ray

    from raytev.data.embeddings import load_embeddings

    results = {"sentence-transformers fp32 (peer)": peer(args)}
    differences = {}
    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as scratch:
        for label in args.rows.split(","):
            results[label] = raytev_config(args, *CONFIGS[label][:2], Path(scratch),
                                           *CONFIGS[label][2:])
        reference = Path(scratch) / f"corpus-{corpus_label(*CONFIGS['raytev 1 actor fp32'])}"
        for label in args.rows.split(","):
            if CONFIGS[label][2] == "jax" and reference.exists():
                jax_vectors = load_embeddings(str(Path(scratch) / f"corpus-{corpus_label(*CONFIGS[label])}"))[1]
                differences[label] = float(np.abs(jax_vectors - load_embeddings(str(reference))[1]).max())
    peer_speed, peer_quality = results["sentence-transformers fp32 (peer)"]

    print(f"all-MiniLM-L6-v2, SciFact corpus (5,183 abstracts), max_len {args.max_len}, batch {args.batch}")
    print(f"{'encoder':<36}{'docs/s':>8}{'x peer':>8}{'nDCG@10':>9}")
    for label, (speed, quality) in results.items():
        print(f"{label:<36}{speed:>8.1f}{speed / peer_speed:>8.2f}{quality:>9.4f}")
    for label, difference in differences.items():
        print(f"{label}: max |jax - torch fp32| = {difference:.2e}")
    path = write_result("encode_throughput", {
        "settings": {"model": MODEL, "corpus": "scifact (5,183 abstracts)", "max_len": args.max_len,
                     "batch": args.batch, "raytev_timing": "whole encode() call incl. Ray Data start-up and model load",
                     "peer_timing": "model.encode() only", "quality": "nDCG@10 on SciFact test, flat index"},
        "docs_per_second": {label: round(speed, 2) for label, (speed, _) in results.items()},
        "ratio_to_peer": {label: round(speed / peer_speed, 3) for label, (speed, _) in results.items()},
        "ndcg_at_10": {label: round(quality, 4) for label, (_, quality) in results.items()},
        "peer_ndcg_at_10": round(peer_quality, 4),
        "jax_max_abs_difference_to_torch_fp32": differences,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
