"""Serving under faults: SIGKILL an index-shard, a query-encoder and an ingress replica of `raytev serve` in turn while
closed-loop clients query it, with 1 and with 2 replicas of each, and count what the clients saw.

Per kill: requests sent, failed (by HTTP status; 0 = no HTTP answer), whether every failure was a 503 with
Retry-After, seconds from the kill to the last failure and to Serve's replacement replica process, and whether the
answers to a fixed set of queries after recovery equal those before (docids and scores, exactly).

The service: a flat index of --passages synthetic passages (served_index.py: tiny BERT, text and vector queries
alternating), the corpus's texts with the hits, on a local Ray started by `raytev serve` on 127.0.0.1.

    python benchmarks/serve_faults.py [--passages 8000] [--clients 8] [--replicas 1 2] [--work /tmp/serve-faults]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import served_index  # noqa: E402
from common import write_result  # noqa: E402

TARGETS = ("IndexShard0", "QueryEncoder", "Ingress")


def pids_of(service: served_index.Service, deployment: str) -> set[int]:
    """The pids of a deployment's replicas."""
    return {pid for name, pid in service.replicas().items() if name.split("/")[0] == deployment}


async def kill_under_load(service: served_index.Service, bodies: list[bytes], deployment: str, replicas: int,
                          clients: int, settle_s: float, max_s: float) -> dict:
    """Kill one replica of `deployment` after `settle_s` of load; keep the load on until a replacement runs and
    `settle_s` more passed (at most `max_s`)."""
    load, stop = served_index.Load(), asyncio.Event()
    runner = asyncio.create_task(served_index.closed_loop(service.url, bodies, clients, stop, load, 10**6))
    await asyncio.sleep(settle_s)
    before = pids_of(service, deployment)
    victim = min(before)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replaced_s = None
    while time.monotonic() - killed_at < max_s:
        await asyncio.sleep(0.25)
        now = pids_of(service, deployment)
        if replaced_s is None and victim not in now and len(now) == replicas:
            replaced_s = time.monotonic() - killed_at
        if replaced_s is not None and time.monotonic() - killed_at > replaced_s + settle_s:
            break
    stop.set()
    await runner
    failures = load.failures()
    statuses: dict[str, int] = {}
    for failure in failures:
        statuses[str(failure.status)] = statuses.get(str(failure.status), 0) + 1
    return {"deployment": deployment, "replicas": replicas, "requests": len(load.outcomes), "failed": len(failures),
            "failed_by_status": statuses,
            "all_failures_503_with_retry_after": all(f.status == 503 and f.retry_after for f in failures),
            "last_failure_after_kill_s": round(max(f.ended for f in failures) - killed_at, 2) if failures else None,
            "replaced_after_s": None if replaced_s is None else round(replaced_s, 2),
            "failure_examples": sorted({f"{f.status}: {f.error[:160]}" for f in failures})[:4]}


def run(paths: dict, work: Path, replicas: int, args) -> list[dict]:
    """Start the service with `replicas` replicas per deployment and kill each target in turn."""
    bodies = served_index.query_bodies(paths, 200)
    reference = bodies[:20]
    service = served_index.start(paths, work, num_replicas=replicas, num_shards=1)
    results = []
    try:
        print(f"{replicas} replica(s): serving in {service.start_seconds:.0f} s; {service.replicas()}", flush=True)
        expected = served_index.answers(service.url, reference)
        for deployment in args.targets:
            result = asyncio.run(kill_under_load(service, bodies, deployment, replicas, args.clients, args.settle,
                                                 args.max_seconds))
            result["answers_equal_after"] = served_index.answers(service.url, reference) == expected
            print(f"  kill {deployment:<12} {result['requests']:6d} requests, {result['failed']:3d} failed "
                  f"{result['failed_by_status']}, replaced after {result['replaced_after_s']} s, last failure "
                  f"{result['last_failure_after_kill_s']} s, answers equal: {result['answers_equal_after']}",
                  flush=True)
            for example in result["failure_examples"]:
                print(f"      {example}", flush=True)
            results.append(result)
    finally:
        service.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=8000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of load before a kill and after recovery")
    parser.add_argument("--max_seconds", type=float, default=60.0, help="longest wait for a replacement replica")
    parser.add_argument("--work", type=Path, default=Path("/tmp/serve-faults"))
    args = parser.parse_args()
    paths = served_index.build(args.work, args.passages)
    results = [result for replicas in args.replicas for result in run(paths, args.work, replicas, args)]
    write_result("serve_faults", {"passages": args.passages, "clients": args.clients, "kills": results})


if __name__ == "__main__":
    main()
