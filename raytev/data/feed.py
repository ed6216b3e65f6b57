"""Ray Data over the token cache: training groups streamed from Parquet shards into padded torch batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from raytev.data.cache import TokenTable
from raytev.data.collate import TrainingCollator
from raytev.errors import RaytevError

TRAINING_COLUMNS = ["query_id", "input_ids", "positive_input_ids", "negative_input_ids"]


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
    return ray.data.read_parquet(queries.files, columns=TRAINING_COLUMNS, num_cpus=read_cpus)


class RayCollate(NumpyBatchCollateFn):
    """Ray Data's collate interface over a TrainingCollator (which itself stays free of Ray)."""

    def __init__(self, collator: TrainingCollator):
        self.collator = collator

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Model tensors for one batch of query rows."""
        return self.collator(batch)


def iter_training_batches(data, collator: TrainingCollator, batch_size: int, drop_last: bool = True,
                          shuffle_buffer: int | None = None, shuffle_seed: int | None = None
                          ) -> Iterator[dict[str, torch.Tensor]]:
    """Padded model batches from a Ray Dataset or a Train worker's shard of one (`get_dataset_shard`).

    `drop_last` keeps every batch full, so all workers run the same number of steps with equal shapes.
    """
    return data.iter_torch_batches(batch_size=batch_size, collate_fn=RayCollate(collator), drop_last=drop_last,
                                   local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=shuffle_seed)
