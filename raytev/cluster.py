"""Connecting to Ray: reuse a running session, join a cluster, or start one here."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

import ray

from raytev.errors import RaytevError
from raytev.ray_auth import AUTH_MODE, TOKEN_HELP, enable_token_auth, is_client_address, token_source

WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false"}


def connect(address: str | None = None, verbose: bool = False, dashboard: bool = True) -> None:
    """Make sure this process is connected to Ray (an existing connection is kept as it is).

    Unless `verbose`, Ray's own messages and the workers' output stay in Ray's log files: raytev's stages draw
    their own progress bar and summary line on the driver. `dashboard`: whether a Ray started here (not one joined)
    runs its dashboard.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if enable_token_auth(address):
        from raytev.compat import reload_ray_settings

        reload_ray_settings()  # Ray caches its settings (RAY_AUTH_MODE among them) when it loads
    if not verbose:
        quiet_ray_loggers()
        if sys.stderr.isatty():
            native_output_to_file(Path(tempfile.gettempdir()) / "raytev-logs" / f"driver-{os.getpid()}.log")
    try:
        ray.init(address=address, runtime_env={"env_vars": worker_env()}, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.WARNING, include_dashboard=dashboard)
    except (ConnectionError, ray.exceptions.AuthenticationError) as error:
        if not is_client_address(address):
            raise
        raise RaytevError(f"could not connect to the Ray cluster at {address} ({error}). If it uses token "
                          f"authentication (Ray's default since 2.59), {TOKEN_HELP}. Now: "
                          f"{AUTH_MODE}={os.environ.get(AUTH_MODE, '(unset)')}, token: "
                          f"{token_source() or 'none found'}.") from error


def quiet_ray_loggers() -> None:
    """Ray Data's and Ray Train's informational lines (execution plans, worker-group starts) off the driver's
    console, and the token-authentication notice of a local cluster; warnings and errors still show."""
    from raytev.compat import quiet_token_notice

    for name in ("ray", "ray.data", "ray.train", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_token_notice()


def native_output_to_file(path: Path) -> None:
    """What Ray writes to this process's stderr file descriptor (its C++ core worker's "E" lines, its Python loggers'
    handler) goes to `path`; Python code writing to sys.stderr (progress bars, raytev's messages, tracebacks) keeps
    the terminal. Once per process."""
    global _native_output
    if _native_output is not None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    terminal = os.dup(2)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    _native_output = path


_native_output: Path | None = None


def call_on_cluster(function, *args):
    """function(*args) here, or, when this process is a Ray client, as a task on the cluster.

    Ray Data cannot run in a Ray client's process (ray-project/ray#48682: "'Worker' object has no attribute
    'core_worker'"), so from a client the whole call becomes a task that takes no CPU of its own (its actors and
    workers reserve theirs), as a job's driver would run it. Paths are then the cluster's.
    """
    from ray.util.client import ray as client

    if ray.is_initialized() and client.is_connected():
        return ray.get(ray.remote(num_cpus=0)(function).remote(*args))
    return function(*args)


def worker_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """WORKER_ENV less what the Ray job running this driver sets already (jobs/runtime_env.yaml does).

    Ray refuses to start a job's driver whose ray.init names a variable of the job's runtime env, even with the same
    value; it hands the job's runtime env to the driver in RAY_JOB_CONFIG_JSON_ENV_VAR.
    """
    job = json.loads(environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    taken = (job.get("runtime_env") or {}).get("env_vars") or {}
    return {name: value for name, value in WORKER_ENV.items() if name not in taken}


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
