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
