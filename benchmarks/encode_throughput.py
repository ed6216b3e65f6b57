"""Encoding throughput on the SciFact corpus (5,183 abstracts), in two parts, in one run.

1. Whole process against the model: `raytev encode` run as a command (wall clock from start to exit: Python and Ray
   start-up, actors loading the model, encoding, writing shards) against the same BatchEncoder forward over the same
   rows (the same shards, sorted by length the same way) in a plain loop in this process, model loaded and warm, at
   the same precision (--precision, default bf16) and --actors. `--corpus_copies N` repeats the corpus N times under
   new docids, so fixed start-up weighs less. The two alternate --repeats times; the best of each is compared.
   Written to benchmarks/results/encode_whole_process.json.
2. `raytev encode` with 1 and 2 actors, fp32 and bf16, torch and JAX (--backend jax, 1 and 2 devices per actor),
   against sentence-transformers `encode` (fp32, same model, same maximum length). JAX rows also report their largest
   difference from the torch 1-actor fp32 vectors. Each configuration also encodes the 300 test queries, searches a
   flat index and reports nDCG@10, so speed never hides a change in quality. raytev is timed as a whole `encode`
   call in this process (one Ray for all configurations); the peer on `model.encode` alone, its model loaded.
   Written to benchmarks/results/encode_throughput.json; `--rows ""` skips this part.

    python benchmarks/encode_throughput.py [--max_len 256] [--batch 32] [--corpus_copies 4] [--rows ""]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
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


def write_corpus_copies(copies: int, path: Path) -> int:
    """SciFact's corpus repeated `copies` times as a corpus JSONL (copy k's docids end in -k); returns the rows."""
    from raytev.bundled import bundled_dataset_path

    with gzip.open(bundled_dataset_path("scifact") / "corpus.jsonl.gz", "rt") as handle:
        records = [json.loads(line) for line in handle]
    with open(path, "w") as out:
        for copy in range(copies):
            for record in records:
                docid = record["_id"] if copy == 0 else f"{record['_id']}-{copy}"
                out.write(json.dumps({"docid": docid, "title": record["title"], "text": record["text"]}) + "\n")
    return copies * len(records)


def whole_process_flags(args, corpus: Path) -> dict:
    """`raytev encode`'s flags for part 1 (the output path aside)."""
    return dict(model_name_or_path=MODEL, dataset_path=str(corpus), passage_max_len=args.max_len,
                per_device_eval_batch_size=args.batch, num_actors=args.actors,
                **({args.precision: True} if args.precision != "fp32" else {}))


def in_loop(args, corpus: Path) -> float:
    """docs/s of the encoding actor's BatchEncoder over the same shards of the same token table, in a plain loop."""
    from raytev.config.fields import from_flags
    from raytev.config.stages import EncodeConfig
    from raytev.data.prepare import prepare_data
    from raytev.encoding.batch_encoder import BatchEncoder
    from raytev.encoding.encoder import shard_ranges
    from raytev.model.resolved import resolve_model

    flags = {**whole_process_flags(args, corpus), "encode_output_path": "unused"}
    config = from_flags(EncodeConfig, flags, "benchmark")
    model = resolve_model(config.model, config.text, config.precision)
    table = prepare_data(config.data, model).corpus  # fills the token cache the command then finds
    rows = table.read(["row", "docid", "input_ids"])
    shards = [{name: rows.slice(low, high - low).column(name).to_numpy(zero_copy_only=False)
               for name in rows.column_names}
              for low, high in shard_ranges(rows.num_rows, 0, 1, config.rows_per_shard)]
    # As one actor of args.actors gets it: the node's cores shared out (raytev.encoding.encoder).
    encoder = BatchEncoder(model, False, "docid", args.batch, table.manifest["settings"]["pad_token_id"],
                           torch_threads=max(1, (os.cpu_count() or 1) // args.actors))
    encoder({name: column[:args.batch] for name, column in shards[0].items()})  # warm: kernels chosen, memory grown
    started = time.perf_counter()
    for shard in shards:
        encoder(shard)
    return rows.num_rows / (time.perf_counter() - started)


def whole_process(args, corpus: Path, rows: int, output: Path) -> float:
    """docs/s of `raytev encode` as a command: rows over the wall clock from its start to its exit."""
    command = [sys.executable, "-m", "raytev", "encode", "--encode_output_path", str(output), "--overwrite_output"]
    for flag, value in whole_process_flags(args, corpus).items():
        command += [f"--{flag}", str(value).lower() if isinstance(value, bool) else str(value)]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return rows / (time.perf_counter() - started)


def compare_whole_process(args, scratch: Path) -> dict:
    """Part 1: in-loop and whole-process docs/s, alternated args.repeats times, and the ratio of the best of each."""
    corpus = scratch / "corpus.jsonl"
    rows = write_corpus_copies(args.corpus_copies, corpus)
    print(f"all-MiniLM-L6-v2, {rows:,} passages (SciFact x {args.corpus_copies}), max_len {args.max_len}, "
          f"batch {args.batch}, {args.precision}, {args.actors} actor(s); docs/s:", flush=True)
    loop_speeds, process_speeds = [], []
    for _ in range(args.repeats):
        loop_speeds.append(in_loop(args, corpus))
        process_speeds.append(whole_process(args, corpus, rows, scratch / "whole-process"))
        print(f"  in-loop BatchEncoder {loop_speeds[-1]:7.1f}   raytev encode (whole process) {process_speeds[-1]:7.1f}"
              f"   ratio {process_speeds[-1] / loop_speeds[-1]:.3f}", flush=True)
    ratio = max(process_speeds) / max(loop_speeds)
    print(f"  best of each: in-loop {max(loop_speeds):.1f}, whole process {max(process_speeds):.1f}, "
          f"ratio {ratio:.3f}")
    return {"passages": rows, "corpus_copies": args.corpus_copies, "precision": args.precision, "actors": args.actors,
            "in_loop_docs_per_second": [round(speed, 2) for speed in loop_speeds],
            "whole_process_docs_per_second": [round(speed, 2) for speed in process_speeds],
            "ratio_best_of_each": round(ratio, 3)}


def raytev_config(args, actors: int, bf16: bool, scratch: Path, backend: str = "torch",
                  devices: int = 1) -> tuple[float, float]:
    """(docs/s, nDCG@10) of `raytev encode` with this many actors, precision and backend."""
    import raytev
    from raytev.encoding.embeddings import load_embeddings

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
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16", help="part 1's precision")
    parser.add_argument("--actors", type=int, default=1, help="part 1's --num_actors")
    parser.add_argument("--corpus_copies", type=int, default=1, help="part 1's corpus: SciFact repeated this often")
    parser.add_argument("--repeats", type=int, default=2, help="part 1's alternations of in-loop and whole process")
    parser.add_argument("--rows", default=",".join(CONFIGS), help="comma-separated part 2 rows ('' for none)")
    args = parser.parse_args()

    settings = {"model": MODEL, "max_len": args.max_len, "batch": args.batch}
    with tempfile.TemporaryDirectory() as scratch:
        # Part 1 first, while this process holds no Ray that the command could join; a cache of its own, warmed by
        # the in-loop run, so the command's preparation is a cache look-up as a rerun's would be.
        os.environ["RAYTEV_CACHE_DIR"] = str(Path(scratch) / "cache")
        part1 = compare_whole_process(args, Path(scratch))
        part1["timing"] = ("in-loop: BatchEncoder calls only (model loaded and warmed, rows in memory); whole process: "
                           "wall clock of `python -m raytev encode` from start to exit")
        print(f"wrote {write_result('encode_whole_process', {'settings': settings, **part1})}")
        labels = [label for label in args.rows.split(",") if label]
        if labels:
            part2 = compare_configurations(args, labels, Path(scratch))
            print(f"wrote {write_result('encode_throughput', {'settings': settings, **part2})}")


def compare_configurations(args, labels: list[str], scratch: Path) -> dict:
    """Part 2: raytev configurations against sentence-transformers, speed and nDCG@10."""
    import numpy as np
    import ray

    from raytev.encoding.embeddings import load_embeddings

    results = {"sentence-transformers fp32 (peer)": peer(args)}
    differences = {}
    ray.init(include_dashboard=False, log_to_driver=False)
    for label in labels:
        results[label] = raytev_config(args, *CONFIGS[label][:2], scratch, *CONFIGS[label][2:])
    reference = scratch / f"corpus-{corpus_label(*CONFIGS['raytev 1 actor fp32'])}"
    for label in labels:
        if CONFIGS[label][2] == "jax" and reference.exists():
            jax_vectors = load_embeddings(str(scratch / f"corpus-{corpus_label(*CONFIGS[label])}"))[1]
            differences[label] = float(np.abs(jax_vectors - load_embeddings(str(reference))[1]).max())
    peer_speed, peer_quality = results["sentence-transformers fp32 (peer)"]

    print(f"all-MiniLM-L6-v2, SciFact corpus (5,183 abstracts), max_len {args.max_len}, batch {args.batch}")
    print(f"{'encoder':<36}{'docs/s':>8}{'x peer':>8}{'nDCG@10':>9}")
    for label, (speed, quality) in results.items():
        print(f"{label:<36}{speed:>8.1f}{speed / peer_speed:>8.2f}{quality:>9.4f}")
    for label, difference in differences.items():
        print(f"{label}: max |jax - torch fp32| = {difference:.2e}")
    return {
        "configurations": {"corpus": "scifact (5,183 abstracts)",
                           "raytev_timing": "whole encode() call incl. Ray Data start-up and model load",
                           "peer_timing": "model.encode() only", "quality": "nDCG@10 on SciFact test, flat index"},
        "docs_per_second": {label: round(speed, 2) for label, (speed, _) in results.items()},
        "ratio_to_peer": {label: round(speed / peer_speed, 3) for label, (speed, _) in results.items()},
        "ndcg_at_10": {label: round(quality, 4) for label, (_, quality) in results.items()},
        "peer_ndcg_at_10": round(peer_quality, 4),
        "jax_max_abs_difference_to_torch_fp32": differences,
    }


if __name__ == "__main__":
    main()
