"""Connecting to Ray: reuse a running session, join a cluster, or start one here."""

from __future__ import annotations

import os

import ray

WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false"}


def connect(address: str | None = None) -> None:
    """Make sure this process is connected to Ray (an existing connection is kept as it is)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, runtime_env={"env_vars": WORKER_ENV}, log_to_driver=True)


def cpus_per_worker(num_workers: int, use_gpu: bool, asked: float | None) -> float | None:
    """CPUs each training worker reserves: as asked; 1 with GPUs; on CPU, the cluster's share less one for data.

    Ray Data lists the Parquet files with a task that takes a whole CPU (not configurable in Ray 2.60); if the
    workers reserve every CPU, that task never runs and training waits forever.
    """
    if asked is not None or num_workers == 0:
        return asked
    if use_gpu:
        return 1.0
    total = ray.cluster_resources().get("CPU", 1.0)
    share = (total - 1.0) / num_workers
    return max(0.25, int(share * 4) / 4)


def node_cpus() -> int:
    """CPUs of the largest node in the cluster (the local machine's when Ray runs here)."""
    sizes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return int(max(sizes)) if sizes else (os.cpu_count() or 1)
