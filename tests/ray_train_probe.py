"""Functions that run inside Ray Train workers during tests (importable there via PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

import ray.train
import torch
from modeling_helpers import batch_slice, gradients, toy_batch

from raytev.modeling.dense import DenseModel
from raytev.modeling.training_step import plain_step, unwrap
from raytev.training.torch_backend import wrap_for_training

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


# ---- JAX: one step of raytev.tevax's train step on JaxTrainer workers (2 processes x 2 CPU devices each).

JAX_BATCH = dict(num_queries=8, group_size=2, seed=23)


def jax_sgd_step(folder: str, untied: bool, batch: dict, devices=None):
    """Parameters after one SGD(lr=1) step of the sharded train step (params - full-batch gradients), as numpy."""
    import jax
    import numpy as np
    import optax

    from raytev.config.sections import TrainingSection
    from raytev.model.resolved import resolve_folder
    from raytev.tevax.retriever import load_retriever
    from raytev.tevax.steps import data_mesh, host_copy, make_train_step, place_batch, replicate
    from raytev.tevax.train_state import RetrieverTrainState

    retriever, params = load_retriever(resolve_folder(folder, untied=untied, **MODEL_OPTIONS))
    mesh = data_mesh(devices)
    optimizer = optax.sgd(1.0)
    state = replicate(RetrieverTrainState.create(params, optimizer, seed=5), mesh)
    step = make_train_step(retriever, optimizer, mesh, TrainingSection())
    state, loss = step(state, place_batch({name: np.asarray(value) for name, value in batch.items()}, mesh))
    return float(loss.addressable_data(0)), jax.tree.leaves(host_copy(state.params))


def jax_one_step(config: dict) -> None:
    """jax_sgd_step on this worker's half of JAX_BATCH over the global mesh; rank 0 saves the result."""
    import pickle

    from raytev.training.jax_backend import start_jax

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    start_jax(config["cpu_devices"], False, rank, world_size)
    share = JAX_BATCH["num_queries"] // world_size
    batch = {name: tensor.numpy() for name, tensor in
             batch_slice(toy_batch(**JAX_BATCH), rank * share, (rank + 1) * share).items()}
    loss, leaves = jax_sgd_step(config["model"], config["untied"], batch)
    import jax

    assert jax.device_count() == world_size * config["cpu_devices"], jax.devices()
    if rank == 0:
        Path(config["out"]).write_bytes(pickle.dumps((loss, leaves)))


# ---- A cross-encoder's step: 2 DDP workers, each on half the queries' pair groups, against the whole batch.

RERANK_BATCH = dict(queries=4, group_size=3, seed=31)


def toy_pair_batch(queries: int, group_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random pairs [queries * group_size, 12] with token types, group-major (each query's positive first)."""
    generator = torch.Generator().manual_seed(seed)
    rows = queries * group_size
    ids = torch.randint(5, 40, (rows, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[::2, 9:] = 0
    return {"pair_input_ids": ids * mask, "pair_attention_mask": mask,
            "pair_token_type_ids": (torch.arange(12) >= 5).long().expand(rows, 12).clone()}


def reranker_gradients(model) -> dict[str, torch.Tensor]:
    return gradients(unwrap(model).model)


def rerank_one_step_gradients(config: dict) -> None:
    """One reranker step on this worker's half of RERANK_BATCH under DDP; rank 0 saves the gradients."""
    from raytev.modeling.reranker import Reranker
    from raytev.modeling.training_step import rerank_step

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the new head's initial weights, as the reference's
    model = wrap_for_training(Reranker.from_pretrained(config["model"], trained=False))
    rows = RERANK_BATCH["queries"] * RERANK_BATCH["group_size"] // world_size
    batch = {name: tensor[rank * rows:(rank + 1) * rows] for name, tensor in toy_pair_batch(**RERANK_BATCH).items()}
    rerank_step(model, batch, group_size=RERANK_BATCH["group_size"])
    if rank == 0:
        torch.save(reranker_gradients(model), Path(config["out"]))


def rerank_full_batch_gradients(model_folder: Path) -> dict[str, torch.Tensor]:
    """The same step in one process on the whole batch: the reference."""
    from raytev.modeling.reranker import Reranker
    from raytev.modeling.training_step import rerank_step

    torch.manual_seed(0)
    model = Reranker.from_pretrained(str(model_folder), trained=False).train()
    rerank_step(model, toy_pair_batch(**RERANK_BATCH), group_size=RERANK_BATCH["group_size"])
    return reranker_gradients(model)
