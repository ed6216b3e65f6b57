"""faiss, loaded once with the two settings raytev's search speed depends on. Every raytev module that uses faiss
imports it from here (`from raytev.index.faiss_setup import faiss`), so no import order can skip them.

- OpenBLAS kernels: faiss-cpu 1.15 ships OpenBLAS 0.3.15, which does not recognise newer Xeons and falls back to
  generic kernels (flat search measured 7x slower here). OPENBLAS_CORETYPE must be set before faiss's library
  loads; it is set only when the CPU has AVX-512 (elsewhere those kernels would crash) and the user chose none.
  A process that loaded faiss before raytev keeps the slow kernels: that is warned about, not hidden.
- BLAS for small batches: faiss-cpu 1.15 scans the whole index once per query unless a search holds
  `distance_compute_blas_threshold` queries (128,000 by default). One BLAS product over 16 queries was 4.6x faster
  per query than 16 scans on 1M x 384, over 1,000 queries 1.3x; a single query scans faster than it multiplies.
  Searches of BLAS_FROM_QUERIES or more queries use BLAS. Results are the same either way: raytev's exact search
  rescores every candidate (see raytev/index/search.py).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

BLAS_FROM_QUERIES = 4


def cpu_has_avx512() -> bool:
    """Whether /proc/cpuinfo lists AVX-512 (False where there is no /proc)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512f" in flags


def _load_faiss():
    if "OPENBLAS_CORETYPE" not in os.environ and cpu_has_avx512():
        if "faiss" in sys.modules:
            warnings.warn("faiss was imported before raytev could choose OpenBLAS's AVX-512 kernels: flat search "
                          "runs several times slower. Import raytev first, or set OPENBLAS_CORETYPE=SkylakeX before "
                          "starting Python.", stacklevel=3)
        else:
            os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES
    return faiss


faiss = _load_faiss()
