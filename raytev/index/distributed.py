"""Search on Ray: groups of consecutive index parts searched by Ray tasks at once, merged by the driver.

Each task searches its parts against every query batch into scratch files of its own (a fresh folder per attempt,
so a retried task never writes over a living one), and returns the folder and its parts' ids; ranked_batches
merges the tasks' top-k a batch at a time with the same exact merge one process uses, so the run is the same.
The scratch folder must be one every node reads and writes (the run's own folder, on a cluster's shared storage).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from raytev.errors import RaytevError
from raytev.index.search import Part, RankGroups, rank_into
from raytev.progress import progress_bar

TASK_RETRIES = 3  # a task whose worker or node dies is run again; an error in raytev's own code is not


def rank_on_ray(workers: int, cpus_per_task: float = 1) -> RankGroups:
    """A `rank_groups` for ranked_batches: up to `workers` Ray tasks, each a share of consecutive parts."""

    def rank_groups(parts: list[Part], queries: np.ndarray, depth: int, batches: list[slice], search_parameters: str,
                    scratch: Path) -> tuple[list[Path], list[pa.Array]]:
        import ray

        from raytev.cluster import connect

        if any(part.in_memory for part in parts):
            raise RaytevError("search on Ray workers takes index folders or embedding shards on disk, not an index "
                              "in this process's memory.")
        connect()
        task = ray.remote(num_cpus=cpus_per_task, max_retries=TASK_RETRIES)(rank_group)
        threads = max(1, int(cpus_per_task))
        queries_ref = ray.put(queries)
        groups = [group.tolist() for group in np.array_split(np.arange(len(parts)), min(workers, len(parts)))]
        pending = {task.remote(scratch, [parts[number] for number in group], queries_ref, depth, batches,
                               search_parameters, threads): group for group in groups}
        done = {}
        with progress_bar(total=len(parts), desc=f"searching ({len(groups)} Ray tasks)", unit="part") as bar:
            while pending:
                [ready], _ = ray.wait(list(pending), num_returns=1)
                group = pending.pop(ready)
                done[group[0]] = ray.get(ready)
                bar.update(len(group))
        results = [done[first] for first in sorted(done)]
        return [folder for folder, _ in results], [ids for _, group_ids in results for ids in group_ids]

    return rank_groups


def rank_group(scratch: Path, parts: list[Part], queries: np.ndarray, depth: int, batches: list[slice],
               search_parameters: str, threads: int) -> tuple[Path, list[pa.Array]]:
    """One task: `parts` searched into a fresh folder under `scratch` with `threads` FAISS threads (its share of
    the node, not all of it); (the folder, the parts' ids)."""
    from raytev.index.faiss_setup import faiss

    faiss.omp_set_num_threads(threads)
    folder = scratch / f"task-{uuid.uuid4().hex[:12]}"
    return folder, rank_into(folder, parts, queries, depth, batches, search_parameters)
