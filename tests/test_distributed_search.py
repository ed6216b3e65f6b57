"""Search on Ray tasks: the run of N tasks is byte for byte the run of one process, and a killed task loses nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from test_index_build import clustered, write_embeddings

from raytev.config.sections import RetrievalSection
from raytev.index.build import build_index
from raytev.index.files import write_searched_run
from raytev.index.storage import save_index

pytestmark = pytest.mark.slow


def queries_and_ids(count: int, seed: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    return clustered(count, seed, dim), np.array([f"q{row}" for row in range(count)], dtype=object)


def test_ray_tasks_write_the_run_one_process_writes(ray_session, tmp_path):
    # Flat shards (exact) and a glob of saved IVF index parts; 2 tasks for 5 shards, 3 tasks for 2 parts (one idle).
    vectors = clustered(3000, 0, 32)
    queries, query_ids = queries_and_ids(130, 1, 32)
    shards = write_embeddings(tmp_path / "emb", vectors, [700, 3, 900, 897, 500])
    for number, shard in enumerate(sorted((tmp_path / "emb").glob("shard-*.parquet"))[::2][:2]):
        save_index(build_index(str(shard), "IVF4,Flat", progress=False), tmp_path / f"ivf-{number}")
    cases = (("flat", shards, 2, ""), ("ivf", str(tmp_path / "ivf-*"), 3, "nprobe=2"))
    for name, passages, workers, parameters in cases:
        runs = {}
        for mode, flags in (("one", {"shard_search": True}), ("ray", {"search_workers": workers})):
            runs[mode] = tmp_path / "runs" / f"{name}-{mode}.txt"
            write_searched_run(runs[mode], query_ids, queries, passages,
                               RetrievalSection(depth=40, batch_size=16, search_parameters=parameters, **flags))
        assert runs["ray"].read_bytes() == runs["one"].read_bytes(), name
        assert len(runs["one"].read_text().splitlines()) == 130 * 40
    written = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert written == ["flat-one.txt", "flat-ray.txt", "ivf-one.txt", "ivf-ray.txt"]  # no scratch left


def kill_a_search_task_once_it_has_written(scratch_parent: Path, killed: list, timeout: float = 120) -> None:
    """SIGKILL one Ray worker running a search task, as a lost node would, once its scratch files have rows."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        started = [path for path in scratch_parent.glob("raytev-search-*/task-*/scores.f32") if path.stat().st_size]
        if started:
            for process in psutil.process_iter(["cmdline"]):
                cmdline = process.info["cmdline"] or []
                if cmdline and cmdline[0].startswith("ray::rank_group"):
                    os.kill(process.pid, signal.SIGKILL)
                    killed.append(process.pid)
                    return
        time.sleep(0.02)


def test_a_killed_search_task_is_run_again_and_the_run_loses_nothing(ray_session, tmp_path):
    vectors = clustered(40_000, 2, 64)
    queries, query_ids = queries_and_ids(3000, 3, 64)
    shards = write_embeddings(tmp_path / "emb", vectors, [10_000] * 4)
    retrieval = dict(depth=20, batch_size=25)
    reference = tmp_path / "reference.txt"
    write_searched_run(reference, query_ids, queries, shards, RetrievalSection(shard_search=True, **retrieval))
    out = tmp_path / "out"
    out.mkdir()
    killed: list = []
    killer = threading.Thread(target=kill_a_search_task_once_it_has_written, args=(out, killed))
    killer.start()
    lines = write_searched_run(out / "run.txt", query_ids, queries, shards,
                               RetrievalSection(search_workers=2, **retrieval))
    killer.join()
    assert killed, "no search task was killed: the search ended before any task had written"
    assert lines == 3000 * 20 and (out / "run.txt").read_bytes() == reference.read_bytes()
    assert [path.name for path in out.iterdir()] == ["run.txt"]
