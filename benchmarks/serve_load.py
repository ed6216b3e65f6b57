"""Serving: queries per second and latency of `raytev serve` under closed-loop load on loopback.

The service (one ingress, one index shard, no query encoder: vector queries) runs on a local Ray; N clients
(1, 16, 64) each send one query vector (k=10), wait for the answer, and send the next, for a fixed time.
Reported per point: QPS and p50 / p99 latency, with batching on (--max_batch_size, default 64) and off
(max_batch_size 1; switched by a hot reconfigure of the same replicas, no restart). The peer: raytev's exact
search of one query on the same index in this process (what the shard runs per batch), and bare FAISS; the
serving overhead is the served p50 at one client minus that in-process p50.

Index: --embeddings (an embeddings folder, e.g. SciFact encoded by `raytev encode`; queries are corpus
vectors drawn at random) or, by default, a synthetic 100k x 384 set of unit vectors (the gaussian mixture of
benchmarks/search.py). The flat index is searched exactly, as `raytev search` does.

Everything (clients, proxy, replicas) shares this machine's cores, so on a small machine the client's own
CPU time is part of what is measured; the CPU time Serve's proxy and each replica spend per request is
reported beside the latencies (psutil), which says where the time goes.

    python benchmarks/serve_load.py [--embeddings PATH] [--rows 100000] [--duration 10] [--concurrency 1,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import write_result  # noqa: E402

K = 10


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def closed_loop(url: str, bodies: list[bytes], clients: int, duration: float) -> dict:
    """`clients` workers each sending one request after the other for `duration` seconds."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(number: int, session) -> None:
        nonlocal errors
        position = number
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.post(url, data=bodies[position % len(bodies)],
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)
            position += clients

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(number, session) for number in range(clients)))
        elapsed = time.perf_counter() - started
    milliseconds = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "mean_s": float(np.mean(latencies)),
            "qps": round(len(latencies) / elapsed, 1), "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 2)}


def serve_cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by Serve's proxy and by this benchmark's replicas (via psutil)."""
    import psutil

    used = {}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        # "proxy": whatever fronts HTTP (Serve's proxy actor, or HAProxy and the actor that manages it).
        for name, marker in (("proxy", "ray::ProxyActor"), ("proxy", "ray::HAProxyManager"), ("proxy", "/haproxy"),
                             ("ingress", "ServeReplica:load:Ingress"), ("shard", "ServeReplica:load:IndexShard0")):
            if marker in command:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                used[name] = used.get(name, 0.0) + times.user + times.system
    return used


def searches(info_url: str) -> tuple[int, int, float]:
    """(FAISS searches, requests, seconds in FAISS searches) of the shard's replica so far."""
    import requests

    part = requests.get(info_url, timeout=60).json()["shard_parts"][0]
    return part["batches"], part["requests"], part["search_seconds"]


def in_process(location: str, queries: np.ndarray, seconds: float) -> dict:
    """p50 of one-query searches in this process: raytev's exact search (the shard's) and bare FAISS, on one
    thread as in a replica (Ray sets OMP_NUM_THREADS to a replica's whole CPUs, at least 1)."""
    from raytev.index.build import build_index
    from raytev.index.faiss_setup import faiss
    from raytev.index.search import search

    faiss.omp_set_num_threads(1)

    index = build_index(location, progress=False)
    timings = {"raytev_search": [], "faiss": []}
    for name, run in (("raytev_search", lambda q: search(index, q, K)),
                      ("faiss", lambda q: index.faiss_index.search(q, K))):
        run(queries[:1])
        deadline = time.perf_counter() + seconds
        position = 0
        while time.perf_counter() < deadline or position < 20:
            started = time.perf_counter()
            run(queries[position % len(queries)][None])
            timings[name].append(time.perf_counter() - started)
            position += 1
    return {f"{name}_p50_ms": round(float(np.percentile(values, 50)) * 1000, 3) for name, values in timings.items()}


def main() -> None:
    """Build or read the index, serve it, load it at each concurrency with and without batching, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", default="", help="embeddings folder to serve (default: synthetic)")
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic corpus size")
    parser.add_argument("--dim", type=int, default=384, help="synthetic dimension")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--max_batch_size", type=int, default=64)
    parser.add_argument("--batch_wait_timeout_s", type=float, default=None,
                        help="default: raytev serve's own")
    parser.add_argument("--queries", type=int, default=1000, help="distinct query vectors cycled through")
    parser.add_argument("--http_ingress", default="auto", choices=["auto", "haproxy", "proxy"],
                        help="Serve's HTTP front, as `raytev serve --http_ingress`")
    parser.add_argument("--result_name", default="serve_load", help="benchmarks/results/<name>.json")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar in the timed in-process searches
    levels = [int(level) for level in args.concurrency.split(",")]

    import ray
    from ray import serve

    from raytev.encoding.embeddings import load_embeddings
    from raytev.serving.app import config_from_args, serve_config, swapped
    from raytev.serving.front import set_front_for_local_ray
    from raytev.serving.service import deploy

    work = Path(tempfile.mkdtemp(prefix="raytev-serve-load-"))
    if args.embeddings:
        location = args.embeddings
        _, vectors = load_embeddings(location)
        rows, dim = vectors.shape
        queries = vectors[np.random.default_rng(0).choice(rows, min(args.queries, rows), replace=False)]
        dataset = f"{location} ({rows:,} x {dim})"
    else:
        from search import synthetic

        rows, dim, location = args.rows, args.dim, str(work / "embeddings")
        queries = synthetic(Path(location), rows, args.queries, dim)
        dataset = f"synthetic unit vectors ({rows:,} x {dim})"
    bodies = [(b'{"k": %d, "vectors": [[' % K) + ", ".join(map(repr, query.tolist())).encode() + b"]]}"
              for query in queries]
    peer = in_process(location, queries, seconds=min(args.duration, 5.0))
    print(f"{dataset}; in-process one-query search p50: raytev {peer['raytev_search_p50_ms']:.2f} ms, "
          f"faiss {peer['faiss_p50_ms']:.2f} ms", flush=True)

    front = set_front_for_local_ray(args.http_ingress)  # before Ray starts: its processes read it then
    print(f"HTTP front: {front}", flush=True)
    # "local": a new Ray of its own, never a cluster another process left running on this machine.
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    port = free_port()
    flags = {"index": location, "port": port, "max_batch_size": args.max_batch_size, "app_name": "load"}
    if args.batch_wait_timeout_s is not None:
        flags["batch_wait_timeout_s"] = args.batch_wait_timeout_s
    config = serve_config(config_from_args(flags))
    deploy(config)
    url, info_url = f"http://127.0.0.1:{port}/search", f"http://127.0.0.1:{port}/info"
    results = []
    for mode, batch in (("batched", args.max_batch_size), ("unbatched", 1)):
        deploy(swapped(config, "load", max_batch_size=batch))
        asyncio.run(closed_loop(url, bodies, max(levels), 2.0))  # warm up connections and the new setting
        for clients in levels:
            before, cpu_before = searches(info_url), serve_cpu_seconds()
            point = {"mode": mode, "max_batch_size": batch, **asyncio.run(closed_loop(url, bodies, clients,
                                                                                      args.duration))}
            after, cpu_after = searches(info_url), serve_cpu_seconds()
            point["requests_per_search"] = round((after[1] - before[1]) / max(after[0] - before[0], 1), 2)
            # Measured in the same moments as the latencies, so the machine's other load affects both alike.
            point["mean_search_ms"] = round((after[2] - before[2]) * 1000 / max(after[0] - before[0], 1), 2)
            point["mean_ms"] = round(point.pop("mean_s") * 1000, 2)
            point["cpu_ms_per_request"] = {name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000
                                                       / max(point["requests"], 1), 2) for name in cpu_after}
            results.append(point)
            cpu = ", ".join(f"{name} {value:.1f}" for name, value in point["cpu_ms_per_request"].items())
            print(f"  {mode:<10}{clients:>4} clients  {point['qps']:>8.1f} QPS  p50 {point['p50_ms']:>7.2f} ms  "
                  f"p99 {point['p99_ms']:>8.2f} ms  {point['requests_per_search']:>5.1f} requests/search  "
                  f"CPU ms/request: {cpu}  ({point['requests']} requests, {point['errors']} errors)", flush=True)
    serve.shutdown()
    ray.shutdown()

    def point(mode: str, clients: int) -> dict:
        return next(entry for entry in results if entry["mode"] == mode and entry["clients"] == clients)

    top, low = max(levels), min(levels)
    speedup = point("batched", top)["qps"] / max(point("unbatched", top)["qps"], 1e-9)
    overhead = {mode: round(point(mode, low)["p50_ms"] - peer["raytev_search_p50_ms"], 2)
                for mode in ("batched", "unbatched")}
    # The same at one client from one run: mean latency minus the shard's mean time in FAISS meanwhile.
    in_run = {mode: round(point(mode, low)["mean_ms"] - point(mode, low)["mean_search_ms"], 2)
              for mode in ("batched", "unbatched")}
    print(f"\n{'mode':<11}{'clients':>8}{'QPS':>10}{'p50 ms':>9}{'p99 ms':>10}{'req/search':>12}"
          f"{'CPU ms/req (proxy+ingress+shard)':>36}")
    for entry in results:
        cpu = entry["cpu_ms_per_request"]
        split = " + ".join(f"{cpu.get(name, 0):.1f}" for name in ("proxy", "ingress", "shard"))
        print(f"{entry['mode']:<11}{entry['clients']:>8}{entry['qps']:>10.1f}{entry['p50_ms']:>9.2f}"
              f"{entry['p99_ms']:>10.2f}{entry['requests_per_search']:>12.1f}{split:>36}")
    print(f"batched / unbatched QPS at {top} clients: {speedup:.1f}x (goal >= 5x)")
    print(f"p50 overhead over in-process search at {low} client(s): batched {overhead['batched']:.2f} ms, "
          f"unbatched {overhead['unbatched']:.2f} ms (goal <= 5 ms); within the run (mean latency - the shard's "
          f"mean search time): batched {in_run['batched']:.2f} ms, unbatched {in_run['unbatched']:.2f} ms")
    settings = {"dataset": dataset, "rows": rows, "dim": dim, "k": K, "duration_s": args.duration,
                "concurrency": levels, "max_batch_size": args.max_batch_size,
                "batch_wait_timeout_s": config_from_args(flags).batch_wait_timeout_s, "index": "Flat (exact)",
                "shards": 1, "query_encoder": None, "http_front": front,
                "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "")}
    path = write_result(args.result_name, {"settings": settings, "in_process": peer, "results": results,
                                       "batched_over_unbatched_qps": round(speedup, 2),
                                       "p50_overhead_ms": overhead, "in_run_overhead_ms": in_run})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
