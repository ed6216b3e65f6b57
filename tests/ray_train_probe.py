"""Functions that run inside Ray Train workers during tests (importable there via PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

import ray.train
import torch
from modeling_helpers import batch_slice, gradients, toy_batch

from raytev.modeling.dense import DenseModel
from raytev.modeling.training_step import plain_step, unwrap
from raytev.training.loop import wrap_for_training

MODEL_OPTIONS = dict(pooling="mean", normalize=True, temperature=0.1)
GLOBAL_BATCH = dict(num_queries=4, group_size=3, seed=21)


def one_step_gradients(config: dict) -> None:
    """One plain step on this worker's half of GLOBAL_BATCH, wrapped as the training loop wraps; rank 0 saves."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(1)
    model = DenseModel.from_pretrained(config["model"], untied=config["untied"], **MODEL_OPTIONS)
    model = wrap_for_training(model)
    share = GLOBAL_BATCH["num_queries"] // world_size
    plain_step(model, batch_slice(toy_batch(**GLOBAL_BATCH), rank * share, (rank + 1) * share))
    if rank == 0:
        torch.save(gradients(unwrap(model)), Path(config["out"]))


def full_batch_gradients(model_folder: Path, untied: bool) -> dict[str, torch.Tensor]:
    """The same step in one process on the whole batch: the reference."""
    model = DenseModel.from_pretrained(str(model_folder), untied=untied, **MODEL_OPTIONS).train()
    plain_step(model, toy_batch(**GLOBAL_BATCH))
    return gradients(model)
