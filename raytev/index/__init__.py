"""FAISS indexes over embedding shards: build, save and load, search (one index or shard by shard), run files."""

import os
from pathlib import Path


def _prefer_avx512_blas() -> None:
    """Let faiss's bundled OpenBLAS use its AVX-512 kernels on CPUs it does not recognise.

    faiss-cpu 1.15 ships OpenBLAS 0.3.15, which falls back to generic kernels on newer Xeons (flat search
    measured 7x slower here). Setting OPENBLAS_CORETYPE must happen before faiss loads; it is only done when
    the CPU has AVX-512 (elsewhere those kernels would crash) and the user has not chosen a core type.
    """
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return
    if " avx512f" in flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"


_prefer_avx512_blas()
