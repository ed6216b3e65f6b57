"""Serving with a reranker: p50 / p99 latency of retrieve+rerank (top --depth) against retrieve only, at 1 and 16
clients, on SciFact, in one run of one service.

The service: a query encoder (the model), one flat index shard, the corpus, and a reranker deployment of one replica,
on a local Ray. Clients send one SciFact test query each (k=10) and wait for the answer (closed loop), first with
`"rerank": false` (the retriever's ranking: the peer), then reranked. The in-process peer is
sentence-transformers' `CrossEncoder.predict` on one query's --depth pairs (the reranker's floor per request).
The served reranked order is checked against `raytev.serving.reranker.load_reranker` in this process, and bad inputs
are checked to still get their 4xx.

    python benchmarks/serve_rerank.py --model out/demo/fine-tuned/model --index out/demo/fine-tuned/index \\
        --reranker out/reranker [--depth 20] [--duration 15] [--concurrency 1,16] [--bf16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from serve_load import closed_loop, free_port  # noqa: E402

K = 10


def scifact_queries(count: int) -> list[str]:
    """The first `count` SciFact test queries' texts (bundled)."""
    from raytev.bundled import bundled_dataset_path

    folder = bundled_dataset_path("scifact")
    test = {line.split("\t")[0] for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    texts = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines()]
    return [record["text"] for record in texts if record["_id"] in test][:count]


def cross_encoder_p50(reranker: str, query: str, passages: list[str], max_len: int, seconds: float) -> float:
    """p50 ms of CrossEncoder.predict on one query's pairs, in this process (fp32)."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # a replica's share of this machine
    model = CrossEncoder(reranker, device="cpu", max_length=max_len)
    pairs = [(query, passage) for passage in passages]
    model.predict(pairs, batch_size=32)
    timings, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(timings) < 5:
        started = time.perf_counter()
        model.predict(pairs, batch_size=32)
        timings.append(time.perf_counter() - started)
    return float(np.percentile(timings, 50) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the retriever (query encoder) the index was encoded with")
    parser.add_argument("--index", required=True, help="its saved index or embeddings folder")
    parser.add_argument("--reranker", required=True, help="a cross-encoder folder")
    parser.add_argument("--corpus", default="scifact")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--max_len", type=int, default=192)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load point")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 weights in the encoder and the reranker")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]

    import ray
    import requests
    from ray import serve

    from raytev.serving import SearchClient
    from raytev.serving.app import config_from_args, serve_config
    from raytev.serving.reranker import load_reranker
    from raytev.serving.service import deploy

    texts = scifact_queries(args.queries)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    port = free_port()
    flags = {"index": args.index, "model_name_or_path": args.model, "corpus": args.corpus, "port": port,
             "reranker_name_or_path": args.reranker, "rerank_depth": args.depth, "rerank_max_len": args.max_len,
             "app_name": "rerank-bench", "bf16": args.bf16}
    started = time.perf_counter()
    deploy(serve_config(config_from_args(flags)))
    print(f"deployed in {time.perf_counter() - started:.1f} s", flush=True)
    url = f"http://127.0.0.1:{port}"
    client = SearchClient(url)

    # The served order is the reranker's, as this process scores the same passages.
    retrieved = client.search(texts[:8], k=args.depth, rerank=False)
    served = client.search(texts[:8], k=args.depth)
    loaded = load_reranker({"reranker_name_or_path": args.reranker, "rerank_max_len": args.max_len,
                            "bf16": args.bf16})
    mine = loaded.rerank(texts[:8], [[f"{hit['title']} {hit['text']}".strip() for hit in row] for row in retrieved])
    difference = max(float(np.max(np.abs(np.sort([hit["score"] for hit in row]) - np.sort(scores))))
                     for row, scores in zip(served, mine))
    print(f"served reranked scores vs in-process load_reranker: max |diff| {difference:.2e}", flush=True)
    bad = {name: requests.post(f"{url}/search", json=body, timeout=60).status_code
           for name, body in (("rerank not a boolean", {"queries": ["a"], "rerank": "yes"}),
                              ("no queries", {"queries": []}), ("k 0", {"queries": ["a"], "k": 0}))}
    print(f"bad inputs: {bad}", flush=True)

    results = []
    for mode, rerank in (("retrieve", False), ("retrieve+rerank", True)):
        bodies = [json.dumps({"queries": [text], "k": K, "rerank": rerank}).encode() for text in texts]
        asyncio.run(closed_loop(f"{url}/search", bodies, max(levels), 3.0))  # warm up
        for clients in levels:
            point = {"mode": mode, **asyncio.run(closed_loop(f"{url}/search", bodies, clients, args.duration))}
            point.pop("mean_s")
            results.append(point)
            print(f"  {mode:<16}{clients:>4} clients  {point['qps']:>7.1f} QPS  p50 {point['p50_ms']:>8.1f} ms  "
                  f"p99 {point['p99_ms']:>8.1f} ms  ({point['requests']} requests, {point['errors']} errors)",
                  flush=True)
    serve.shutdown()
    ray.shutdown()
    floor = cross_encoder_p50(args.reranker, texts[0], [f"{hit['title']} {hit['text']}".strip()
                                                        for hit in retrieved[0]], args.max_len, 5.0)

    def p50(mode: str, clients: int) -> float:
        return next(entry["p50_ms"] for entry in results if entry["mode"] == mode and entry["clients"] == clients)

    print(f"\nCrossEncoder.predict of one query's {args.depth} pairs in this process: p50 {floor:.1f} ms")
    for clients in levels:
        print(f"{clients:>3} clients: retrieve+rerank p50 / retrieve p50 = "
              f"{p50('retrieve+rerank', clients) / p50('retrieve', clients):.1f}x; retrieve+rerank p50 / "
              f"CrossEncoder.predict p50 = {p50('retrieve+rerank', clients) / floor:.2f}x")
    path = write_result("serve_rerank", {
        "settings": {"model": args.model, "index": args.index, "reranker": args.reranker, "depth": args.depth,
                     "max_len": args.max_len, "k": K, "duration_s": args.duration, "bf16": args.bf16,
                     "queries": len(texts)},
        "results": results, "cross_encoder_predict_p50_ms": round(floor, 2), "max_score_diff": difference,
        "bad_input_status": bad})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
