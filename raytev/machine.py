"""What this machine's CPU and memory are, read from /proc where there is one (faiss's kernel choice, `raytev
doctor` and the benchmarks' machine record all ask the same questions)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
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
        kib = _kib_fields(MEMINFO)
        return tuple(round(kib[key] / 2**20, 1) if key in kib else None for key in ("MemTotal", "MemAvailable"))
    memory = psutil.virtual_memory()
    return round(memory.total / 2**30, 1), round(memory.available / 2**30, 1)


def _kib_fields(path: Path) -> dict[str, int]:
    """A /proc file's `Name: value kB` lines (meminfo, a process's status or smaps_rollup) as {name: KiB}; empty where
    there is no such file."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if ":" in line)
    return {name: int(value.split()[0]) for name, value in fields if value.split()[:1] and value.split()[0].isdigit()}


@dataclass(frozen=True)
class ProcessMemory:
    """A process's memory in bytes (Linux /proc). Pages of files it maps count in its RSS but are the page cache's:
    shared by every process mapping them and dropped under memory pressure, so `anonymous` is what it holds alone."""

    rss: int  # resident set: every page it has in RAM
    peak_rss: int  # the largest RSS it ever had (VmHWM)
    anonymous: int  # its own memory: heap, Python objects, copies (RssAnon)
    file: int  # resident pages of files it maps: an index, a corpus store, libraries (RssFile)
    shared_memory: int  # resident pages of shared memory, such as Ray's object store (RssShmem)
    pss: int  # RSS with each shared page divided among the processes that map it
    uss: int  # pages no other process maps (private clean and dirty), mapped file pages among them

    def describe(self) -> str:
        """RSS, its parts and the peak, in MiB."""
        return (f"RSS {_mib(self.rss)} (own {_mib(self.anonymous)}, mapped files {_mib(self.file)}, "
                f"shared memory {_mib(self.shared_memory)}), peak {_mib(self.peak_rss)}")


def process_memory(pid: int | str = "self") -> ProcessMemory | None:
    """The memory of process `pid` (default: this one); None where /proc cannot tell (not Linux, no such process)."""
    status, rollup = _kib_fields(Path(f"/proc/{pid}/status")), _kib_fields(Path(f"/proc/{pid}/smaps_rollup"))
    if "VmRSS" not in status:
        return None
    return ProcessMemory(
        rss=status["VmRSS"] << 10, peak_rss=status.get("VmHWM", 0) << 10, anonymous=status.get("RssAnon", 0) << 10,
        file=status.get("RssFile", 0) << 10, shared_memory=status.get("RssShmem", 0) << 10,
        pss=rollup.get("Pss", 0) << 10, uss=(rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)) << 10)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"
