"""What this machine's CPU and memory are, read from /proc where there is one (faiss's kernel choice, `raytev
doctor` and the benchmarks' machine record all ask the same questions)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")


def _cpuinfo_field(name: str) -> str | None:
    """The first value of a /proc/cpuinfo field (every core repeats it), or None where there is no such file."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name), None)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's, else what the platform module says)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as /proc/cpuinfo lists them (avx512f, avx512_bf16, amx_tile, ...); None where it
    lists none (no /proc, or an ARM CPU's 'Features' instead)."""
    flags = _cpuinfo_field("flags")
    return None if flags is None else frozenset(flags.split())


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which containers and taskset narrow), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def memory_gib() -> tuple[float | None, float | None]:
    """(total, available) memory in GiB: psutil's where it is installed, else /proc/meminfo's; None when unknown."""
    try:
        import psutil
    except ImportError:
        kib = _meminfo_kib()
        return tuple(round(kib[key] / 2**20, 1) if key in kib else None for key in ("MemTotal", "MemAvailable"))
    memory = psutil.virtual_memory()
    return round(memory.total / 2**30, 1), round(memory.available / 2**30, 1)


def _meminfo_kib() -> dict[str, int]:
    """/proc/meminfo's `Name: value kB` lines as {name: KiB}; empty where there is no such file."""
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if ":" in line)
    return {name: int(value.split()[0]) for name, value in fields if value.split()[:1] and value.split()[0].isdigit()}
