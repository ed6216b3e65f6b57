"""The machine's CPU and memory as /proc describes them, and what is said where it does not."""

from __future__ import annotations

import sys

from raytev import machine

X86_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16
"""
MEMINFO = """MemTotal:       24684092 kB
MemFree:         1000000 kB
MemAvailable:   12342046 kB
HugePages_Total:       0
"""


def test_cpu_model_and_flags_from_cpuinfo(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(X86_CPUINFO)
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "cpuinfo")
    assert machine.cpu_model() == "Intel(R) Xeon(R) Platinum 8480+"
    assert machine.cpu_flags() == {"fpu", "sse", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def test_a_cpuinfo_without_flags_says_nothing_about_them(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(ARM_CPUINFO)
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "cpuinfo")
    assert machine.cpu_flags() is None  # unknown, not "none of them"
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "missing")
    assert machine.cpu_flags() is None and machine.cpu_model()  # the platform module's name instead


def test_memory_from_meminfo_without_psutil(tmp_path, monkeypatch):
    (tmp_path / "meminfo").write_text(MEMINFO)
    monkeypatch.setattr(machine, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed
    assert machine.memory_gib() == (23.5, 11.8)
    monkeypatch.setattr(machine, "MEMINFO", tmp_path / "missing")
    assert machine.memory_gib() == (None, None)


def test_process_memory_tells_mapped_file_pages_from_the_process_own(tmp_path):
    import numpy as np
    import pytest

    if machine.process_memory() is None:
        pytest.skip("no /proc to read a process's memory from")
    size = 64 << 20
    (tmp_path / "data").write_bytes(b"\1" * size)
    before = machine.process_memory()
    mapped = np.memmap(tmp_path / "data", mode="r", dtype=np.uint8)
    assert int(mapped[::4096].sum()) == size // 4096  # one byte of every page: all of them resident
    touched = machine.process_memory()
    assert touched.file - before.file > 0.9 * size and touched.anonymous - before.anonymous < 0.1 * size
    own = np.ones(size, dtype=np.uint8)
    copied = machine.process_memory()
    assert copied.anonymous - touched.anonymous > 0.9 * size and abs(copied.file - touched.file) < 0.1 * size
    assert copied.peak_rss >= copied.rss >= copied.uss and copied.rss >= copied.pss > 0 and own.sum() == size
    assert machine.process_memory(2**31) is None  # no such process
    assert copied.describe().startswith("RSS ") and "own " in copied.describe()
