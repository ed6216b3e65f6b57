"""faiss is loaded in one place, with its settings, whatever the import order; raytev.index alone changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raytev.index.faiss_setup import BLAS_FROM_QUERIES, cpu_has_avx512


def in_fresh_python(code: str) -> dict:
    """Run `code` in a new interpreter without OPENBLAS_CORETYPE; it prints one JSON object."""
    import os

    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"}
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env,
                          check=True)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


def test_importing_raytev_index_sets_nothing_and_faiss_setup_sets_both():
    result = in_fresh_python(
        "import json, os, sys; import raytev.index; before = os.environ.get('OPENBLAS_CORETYPE');"
        "from raytev.index.faiss_setup import faiss;"
        "print(json.dumps({'before': before, 'after': os.environ.get('OPENBLAS_CORETYPE'),"
        "'threshold': faiss.cvar.distance_compute_blas_threshold}))")
    assert result["before"] is None  # the package itself has no import-time side effect
    assert result["threshold"] == BLAS_FROM_QUERIES
    assert result["after"] == ("SkylakeX" if cpu_has_avx512() else None)


@pytest.mark.skipif(not cpu_has_avx512(), reason="the kernel choice only matters on CPUs with AVX-512")
def test_faiss_imported_first_is_warned_about_not_hidden():
    result = in_fresh_python(
        "import json, os; import faiss; from raytev.index.faiss_setup import faiss as ours;"
        "print(json.dumps({'coretype': os.environ.get('OPENBLAS_CORETYPE'),"
        "'threshold': ours.cvar.distance_compute_blas_threshold}))")
    assert "faiss was imported before raytev" in result["stderr"] and result["coretype"] is None
    assert result["threshold"] == BLAS_FROM_QUERIES  # the BLAS setting does not depend on the order
