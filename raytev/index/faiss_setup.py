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
- One faiss: an install with two faiss builds (faiss-cpu and faiss-gpu-cu12 share the `faiss/` folder) or none stops
  here, before faiss loads, with the repair (raytev/index/faiss_install.py).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable

from raytev.errors import RaytevError
from raytev.index.faiss_install import check_one_faiss, faiss_distributions, import_failure_message
from raytev.machine import cpu_flags

BLAS_FROM_QUERIES = 4


def cpu_has_avx512() -> bool:
    """Whether the CPU has AVX-512 (False where there is no /proc/cpuinfo to say so)."""
    return "avx512f" in (cpu_flags() or ())


def import_faiss(paths: Iterable[str] | None = None):
    """`import faiss` once exactly one distribution on `paths` (default sys.path) provides it; else RaytevError
    saying how to repair the install."""
    distributions = faiss_distributions(paths)
    check_one_faiss(distributions)
    try:
        import faiss
    except ImportError as error:
        raise RaytevError(import_failure_message(distributions, error)) from None
    if getattr(faiss, "__file__", None) is None:
        # Uninstalling one of two faiss builds removes the __init__.py both listed: what is left of faiss/ then
        # imports as an empty namespace package.
        missing = ImportError(f"{next(iter(faiss.__path__))}/__init__.py is missing")
        raise RaytevError(import_failure_message(distributions, missing))
    return faiss


def _load_faiss():
    if "OPENBLAS_CORETYPE" not in os.environ and cpu_has_avx512():
        if "faiss" in sys.modules:
            warnings.warn("faiss was imported before raytev could choose OpenBLAS's AVX-512 kernels: flat search "
                          "runs several times slower. Import raytev first, or set OPENBLAS_CORETYPE=SkylakeX before "
                          "starting Python.", stacklevel=3)
        else:
            os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    faiss = import_faiss()
    faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES
    return faiss


faiss = _load_faiss()
