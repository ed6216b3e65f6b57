"""Soak: `raytev serve` of a 100k-passage flat index under text and vector queries at a fixed rate for 10 minutes.

Requests are sent open-loop (one every 1/--rate s, whether or not earlier ones were answered), alternating a text
query (encoded by the service's model) and a vector query, k=10, with the corpus's texts in the hits. Reported per
--window: requests, errors, p50 / p99 latency; and at the start (after a warm-up) and the end: every replica's RSS
and own (anonymous) memory, its open file descriptors, and Ray's object-store use (`ray memory --stats-only`).
What the soak promises: 0 errors, each replica's RSS within 5% of its start, descriptors and the object store flat.

    python benchmarks/soak.py [--passages 100000] [--minutes 10] [--rate 20] [--work /tmp/soak]

tests/test_serve.py runs `soak` for one minute against its service (what CI runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RSS_GROWTH_LIMIT = 1.05


def process_state(processes: dict[str, int]) -> dict[str, dict]:
    """RSS, own memory (MiB) and open descriptors of each named process."""
    import psutil

    from raytev.machine import process_memory

    state = {}
    for name, pid in processes.items():
        memory = process_memory(pid)
        try:
            descriptors = psutil.Process(pid).num_fds()
        except psutil.Error:
            descriptors = None
        state[name] = {"rss_mib": round(memory.rss / 2**20, 1) if memory else None,
                       "own_mib": round(memory.anonymous / 2**20, 1) if memory else None, "fds": descriptors}
    return state


def object_store_mib(gcs_address: str | None) -> float | None:
    """Ray's object-store (plasma) use in MiB on the cluster at `gcs_address`; None when it cannot be read."""
    if not gcs_address:
        return None
    # A local Ray started by raytev has token authentication on (Ray 2.60's default): the token is ~/.ray/auth_token.
    found = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "memory", "--stats-only", "--address",
                            gcs_address], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "RAY_AUTH_MODE": "token"})
    match = re.search(r"Plasma memory usage (\d+) MiB", found.stdout)
    return float(match.group(1)) if match else None


def gcs_address_of(command_pid: int) -> str | None:
    """The GCS address of the Ray that the process `command_pid` started (from its daemons' command lines)."""
    import psutil

    for process in psutil.Process(command_pid).children(recursive=True):
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        match = re.search(r"--gcs-address=(\S+)", line)
        if match:
            return match.group(1)
    return None


async def fixed_rate(url: str, bodies: list[bytes], rate: float, seconds: float, headers: dict) -> list[tuple]:
    """(start s, latency s, status, error) of requests sent every 1/rate s for `seconds`, open loop."""
    import aiohttp

    outcomes: list[tuple] = []
    started = time.monotonic()

    async def one(session, number: int) -> None:
        sent = time.monotonic()
        try:
            async with session.post(f"{url}/search", data=bodies[number % len(bodies)], headers=headers) as answer:
                text = await answer.text()
                outcomes.append((sent - started, time.monotonic() - sent, answer.status,
                                 "" if answer.status == 200 else text[:200]))
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            outcomes.append((sent - started, time.monotonic() - sent, 0, f"{type(error).__name__}: {error}"))

    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = []
        for number in range(int(seconds * rate)):
            delay = started + number / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, number)))
        await asyncio.gather(*tasks)
    return outcomes


def windows(outcomes: list[tuple], window_s: float) -> list[dict]:
    """Requests, errors, p50 and p99 (ms) per window of send time."""
    rows = []
    for start in np.arange(0, max(outcome[0] for outcome in outcomes) + 1e-9, window_s):
        inside = [outcome for outcome in outcomes if start <= outcome[0] < start + window_s]
        if not inside:
            continue
        latencies = np.array([outcome[1] for outcome in inside]) * 1000
        rows.append({"from_s": round(float(start)), "requests": len(inside),
                     "errors": sum(outcome[2] != 200 for outcome in inside),
                     "p50_ms": round(float(np.percentile(latencies, 50)), 1),
                     "p99_ms": round(float(np.percentile(latencies, 99)), 1)})
    return rows


def soak(url: str, bodies: list[bytes], processes: dict[str, int], seconds: float, rate: float = 20.0,
         window_s: float = 60.0, warmup_s: float = 10.0, headers: dict | None = None,
         gcs_address: str | None = None) -> dict:
    """Warm up, note every process's state, send `rate` requests/s for `seconds`, note it again; the figures."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    asyncio.run(fixed_rate(url, bodies, rate, warmup_s, headers))  # mapped pages and lazy state settle first
    start_state, start_store = process_state(processes), object_store_mib(gcs_address)
    sampled, done = [], threading.Event()

    def sample() -> None:  # each window's RSS: growth that levels off differs from a leak
        while not done.wait(window_s):
            sampled.append({name: state["rss_mib"] for name, state in process_state(processes).items()})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outcomes = asyncio.run(fixed_rate(url, bodies, rate, seconds, headers))
    done.set()
    sampler.join()
    end_state, end_store = process_state(processes), object_store_mib(gcs_address)
    latencies = np.array([outcome[1] for outcome in outcomes]) * 1000
    growth = {name: round(end_state[name]["rss_mib"] / start_state[name]["rss_mib"], 4)
              for name in processes if start_state[name]["rss_mib"] and end_state[name]["rss_mib"]}
    return {"seconds": seconds, "rate": rate, "requests": len(outcomes),
            "errors": sum(outcome[2] != 200 for outcome in outcomes),
            "error_examples": sorted({f"{o[2]}: {o[3]}" for o in outcomes if o[2] != 200})[:3],
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1), "windows": windows(outcomes, window_s),
            "start": start_state, "end": end_state, "rss_growth": growth, "rss_mib_by_window": sampled,
            "fds_growth": {name: end_state[name]["fds"] - start_state[name]["fds"] for name in processes
                           if start_state[name]["fds"] is not None and end_state[name]["fds"] is not None},
            "object_store_mib": [start_store, end_store]}


def main() -> None:
    import served_index
    from common import write_result

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per reported window")
    parser.add_argument("--work", type=Path, default=Path("/tmp/soak"))
    args = parser.parse_args()
    paths = served_index.build(args.work, args.passages)
    bodies = served_index.query_bodies(paths, 1000)
    service = served_index.start(paths, args.work)
    try:
        processes = {**service.replicas(), "raytev serve": service.process.pid}
        print(f"serving {args.passages:,} passages in {service.start_seconds:.0f} s; soaking {args.minutes} min at "
              f"{args.rate}/s", flush=True)
        result = soak(service.url, bodies, processes, args.minutes * 60, args.rate, args.window,
                      gcs_address=gcs_address_of(service.process.pid))
    finally:
        service.stop()
    for row in result["windows"]:
        print(f"  {row['from_s']:5d} s  {row['requests']:6d} requests  {row['errors']} errors  "
              f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms", flush=True)
    for name in result["start"]:
        print(f"  {name:<16} RSS by window (MiB): "
              f"{' '.join(str(window[name]) for window in result['rss_mib_by_window'])}", flush=True)
    for name in result["start"]:
        start, end = result["start"][name], result["end"][name]
        print(f"  {name:<16} RSS {start['rss_mib']} -> {end['rss_mib']} MiB (x{result['rss_growth'].get(name)}), own "
              f"{start['own_mib']} -> {end['own_mib']} MiB, fds {start['fds']} -> {end['fds']}", flush=True)
    print(f"  {result['requests']} requests, {result['errors']} errors, p50 {result['p50_ms']} ms, p99 "
          f"{result['p99_ms']} ms; object store {result['object_store_mib']} MiB", flush=True)
    write_result("soak", {"passages": args.passages, **result})


if __name__ == "__main__":
    main()
