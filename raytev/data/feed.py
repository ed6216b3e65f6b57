"""Ray Data over the token cache: training groups streamed from Parquet shards into padded numpy batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import ray

from raytev.data.cache import TokenTable
from raytev.data.collate import TrainingCollator
from raytev.errors import RaytevError

TRAINING_COLUMNS = ["query_id", "input_ids", "positive_input_ids", "negative_input_ids"]
TEACHER_COLUMNS = ["positive_scores", "negative_scores"]  # a distillation table's teacher scores


def training_dataset(queries: TokenTable, train_group_size: int, read_cpus: float = 0.5) -> ray.data.Dataset:
    """The training groups of a prepared queries table as a lazy, streaming Ray Dataset.

    Read tasks take fractional CPUs so that training workers holding whole CPUs never starve them.
    """
    if not queries.manifest.get("groups"):
        raise RaytevError(f"{queries.manifest['source']} holds queries without positive passages; training needs "
                          "groups: a Tevatron training JSONL or a BEIR split with qrels.")
    if train_group_size > 1 and queries.manifest.get("min_negatives", 0) == 0:
        raise RaytevError(f"some queries of {queries.manifest['source']} have no negative passage, but "
                          f"--train_group_size {train_group_size} needs {train_group_size - 1} per query: add "
                          "negatives (or mine them), or use --train_group_size 1 (in-batch negatives only).")
    columns = TRAINING_COLUMNS + (TEACHER_COLUMNS if queries.manifest.get("teacher") else [])
    return ray.data.read_parquet(queries.files, columns=columns, num_cpus=read_cpus)


def ordered_ingest():
    """Ray Train's data config with ordered execution: every run (a resumed one too) splits and streams the
    groups identically, so that a seeded shuffle gives the same batches (Ray's ingest default does not
    preserve order)."""
    import copy

    from ray.data import DataContext
    from ray.train import DataConfig

    # A copy of the current options (what DataConfig's default carries over), built without calling
    # ExecutionOptions' constructor, which warns about a deprecated argument it passes itself.
    options = copy.deepcopy(DataContext.get_current().execution_options)
    options.preserve_order = True
    return DataConfig(execution_options=options)


def iter_training_batches(data, collator: TrainingCollator, batch_size: int, steps: int | None = None, skip: int = 0,
                          shuffle_buffer: int | None = None, shuffle_seed: int | None = None
                          ) -> Iterator[dict[str, np.ndarray]]:
    """Padded model batches from a Ray Dataset or a Train worker's shard of one (`get_dataset_shard`).

    Partial batches are dropped, so all workers run the same number of steps with equal shapes; at most `steps`
    batches come out. The first `skip` batches are read, to reach the same place of a seeded stream, but not
    collated (a resumed run skips what it trained on before its checkpoint).
    """
    rows = data.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True,
                             local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=shuffle_seed)
    for index, batch in enumerate(rows):
        if steps is not None and index >= steps:
            return
        if index >= skip:
            yield collator(batch)
