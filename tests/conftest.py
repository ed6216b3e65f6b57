"""Shared fixtures: an offline tiny tokenizer, small datasets on disk, an isolated cache, one local Ray."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never reach the network: the hub libraries fail fast instead of waiting on timeouts. Set before anything
# imports them (helpers imports transformers, which reads these once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Four CPU devices for JAX in the test process (the sharding tests split batches over them); processes raytev
# starts (Train workers, encoding actors) set their own count from --jax_cpu_devices.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
# XLA's CPU compiler at its lowest optimization level: half the compile time, and tiny models run fast anyway.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# One compilation cache for the session's processes (never the user's): a restarted or second JAX worker loads the
# training step the first one compiled.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="raytev-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

from helpers import make_tiny_beir, write_tiny_tokenizer  # noqa: E402 - after the environment above


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder with a tiny BERT tokenizer, built without any download."""
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Each test gets its own token cache, never the user's."""
    cache = tmp_path / "raytev-cache"
    monkeypatch.setenv("RAYTEV_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    """A BEIR folder: 12 passages, 4 queries, train and test qrels."""
    return make_tiny_beir(tmp_path)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray costs seconds)."""
    import ray

    # Workers import test helpers too (training probes), so they get this folder on their path.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(Path(__file__).parent)}})
    yield ray
    ray.shutdown()
