"""Reranking throughput on SciFact: `raytev rerank` (1 and 2 actors, fp32 and bf16) against sentence-transformers'
`CrossEncoder.predict` on the same pairs, in one run.

The pairs are each test query's top --depth passages of a run (default: the demo's fine-tuned run). raytev is timed
as a whole `rerank` call in this process (one Ray for all configurations, the candidates table already cached by a
warm-up call, actors started and the model loaded inside the timing); the peer on `predict` alone, its model
loaded, fp32, the same batch size and maximum length. Each raytev row reports its largest score difference from
the peer's and nDCG@10 of the reranked run, so speed never hides a change in quality.

    python benchmarks/rerank_throughput.py --reranker out/reranker --run out/demo/fine-tuned/run.txt [--depth 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


def read_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    ranked: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        query_id, docid, score = line.split()[:3]
        ranked.setdefault(query_id, []).append((docid, float(score)))
    return ranked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reranker", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--queries", type=int, default=300, help="first N queries of the run")
    parser.add_argument("--max_len", type=int, default=192)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import raytev
    from raytev.bundled import bundled_dataset_path

    work = Path(tempfile.mkdtemp(prefix="rerank-bench-"))
    ranked = read_run(Path(args.run))
    chosen = list(ranked)[:args.queries]
    run = work / "run.txt"
    run.write_text("".join(f"{qid}\t{docid}\t{score}\n" for qid in chosen for docid, score in ranked[qid][:args.depth]))
    flags = dict(model_name_or_path=args.reranker, dataset_name="scifact", dataset_split="test", run=str(run),
                 rerank_depth=args.depth, rerank_max_len=args.max_len, per_device_eval_batch_size=args.batch)

    # The peer: CrossEncoder on the same texts (title + " " + text, as raytev reads a BEIR corpus).
    from sentence_transformers import CrossEncoder

    root = bundled_dataset_path("scifact")
    import gzip

    corpus = {}
    opener = gzip.open if (root / "corpus.jsonl.gz").exists() else open
    with opener(root / ("corpus.jsonl.gz" if (root / "corpus.jsonl.gz").exists() else "corpus.jsonl"), "rt") as handle:
        for line in handle:
            record = json.loads(line)
            corpus[record["_id"]] = f"{record.get('title', '')} {record['text']}".strip()
    queries = {}
    with open(root / "queries.jsonl") as handle:
        for line in handle:
            record = json.loads(line)
            queries[record["_id"]] = record["text"]
    keys = [(qid, docid) for qid in chosen for docid, _ in ranked[qid][:args.depth]]
    texts = [(queries[qid], corpus[docid]) for qid, docid in keys]
    model = CrossEncoder(args.reranker, device="cpu", max_length=args.max_len)
    model.predict(texts[:args.batch], batch_size=args.batch)  # warm
    started = time.perf_counter()
    theirs = model.predict(texts, batch_size=args.batch)
    peer_seconds = time.perf_counter() - started
    peer = dict(zip(keys, theirs.tolist()))
    rows = [{"name": "sentence-transformers CrossEncoder.predict (fp32)", "pairs": len(texts),
             "seconds": round(peer_seconds, 2), "pairs_per_second": round(len(texts) / peer_seconds, 1)}]

    raytev.rerank(**flags, save_ranking_to=str(work / "warm.txt"), num_actors=0)  # builds the candidates table
    for actors in (1, 2):
        for precision in ("fp32", "bf16"):
            output = work / f"reranked-{actors}-{precision}.txt"
            started = time.perf_counter()
            result = raytev.rerank(**flags, save_ranking_to=str(output), num_actors=actors, cpus_per_actor=0.5,
                                   bf16=precision == "bf16")
            seconds = time.perf_counter() - started
            ours = {(qid, docid): score for qid, hits in read_run(output).items() for docid, score in hits}
            rows.append({"name": f"raytev rerank, {actors} actor{'s' if actors > 1 else ''}, {precision}",
                         "pairs": result.pairs, "seconds": round(seconds, 2),
                         "pairs_per_second": round(result.pairs / seconds, 1),
                         "max_score_difference": max(abs(ours[key] - peer[key]) for key in keys),
                         "ndcg@10": round(result.reranked["nDCG@10"], 4)})
    for row in rows:
        row["ratio_to_peer"] = round(row["pairs_per_second"] / rows[0]["pairs_per_second"], 2)
    print(f"{'configuration':<52} {'pairs/s':>9} {'x peer':>7} {'max |diff|':>11} {'nDCG@10':>8}")
    for row in rows:
        print(f"{row['name']:<52} {row['pairs_per_second']:>9.1f} {row['ratio_to_peer']:>7.2f} "
              f"{row.get('max_score_difference', 0):>11.2e} {row.get('ndcg@10', float('nan')):>8.4f}")
    path = write_result("rerank_throughput", {"settings": vars(args), "rows": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
