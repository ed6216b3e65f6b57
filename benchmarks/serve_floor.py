"""The floor of Ray Serve's HTTP path on this machine: p50 latency of no-op applications behind each front.

Two no-op apps, shaped like `raytev serve` without any search: a FastAPI ingress that parses a 384-float vector
query and answers (one hop), and the same ingress awaiting a no-op deployment (two hops, as ingress -> shard).
Each front ('haproxy': Serve's high-throughput mode; 'proxy': Serve's Python proxy) runs in a fresh local
Ray in its own process, since Ray's processes read the mode when they start. One client, sequential requests.
This is the part of `benchmarks/serve_load.py`'s overhead that raytev's own code cannot remove.

    python benchmarks/serve_floor.py [--requests 500]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from serve_load import free_port  # noqa: E402

# No `from __future__ import annotations` in this file: the routes below travel to replicas by value
# (cloudpickle), and FastAPI needs their annotations as objects there, not as names to look up.
BODY = json.dumps({"vectors": [[0.1] * 384], "k": 10})


def measure_front(front: str, requests_count: int) -> dict:
    """In this process (started with the front's environment): p50/p99 ms of each no-op app."""
    import ray
    import requests
    from fastapi import FastAPI, Request
    from ray import serve

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Leaf:
        async def __call__(self, size: int) -> int:
            return size

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, leaf=None):
            self.leaf = leaf

        @app.post("/search")
        async def search(self, request: Request) -> dict:
            size = len((await request.json())["vectors"][0])
            return {"size": await self.leaf.remote(size) if self.leaf else size}

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Ingress.bind(), name="one", route_prefix="/one")
    serve.run(Ingress.bind(Leaf.bind()), name="two", route_prefix="/two")
    session, result = requests.Session(), {}
    for name in ("one", "two"):
        url = f"http://127.0.0.1:{port}/{name}/search"
        for _ in range(30):
            session.post(url, data=BODY).raise_for_status()
        latencies = []
        for _ in range(requests_count):
            started = time.perf_counter()
            session.post(url, data=BODY).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
        result[f"{name}_hop" if name == "one" else "two_hops"] = {
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2)}
    serve.shutdown()
    ray.shutdown()
    return result


def main() -> None:
    """Each front in a fresh process; print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--front", choices=["haproxy", "proxy"], help=argparse.SUPPRESS)  # the child's role
    args = parser.parse_args()
    if args.front:
        print(json.dumps(measure_front(args.front, args.requests)))
        return
    from raytev.serving.front import set_front_for_local_ray

    results = {}
    for front in ("haproxy", "proxy"):
        environment = dict(os.environ)
        set_front_for_local_ray(front, environment)
        child = subprocess.run([sys.executable, __file__, "--front", front, "--requests", str(args.requests)],
                               env=environment, capture_output=True, text=True, check=True)
        results[front] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{front:<8} one hop p50 {results[front]['one_hop']['p50_ms']:6.2f} ms (p99 "
              f"{results[front]['one_hop']['p99_ms']:.2f})   two hops p50 {results[front]['two_hops']['p50_ms']:6.2f} "
              f"ms (p99 {results[front]['two_hops']['p99_ms']:.2f})", flush=True)
    path = write_result("serve_floor", {"settings": {"requests": args.requests, "clients": 1,
                                                     "body": "one 384-float vector query"},
                                        "results": results})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
