"""Two gloo workers with half the batch each reproduce one process's full-batch gradients (plain, DDP, GradCache)."""

from __future__ import annotations


import pytest
import torch
import torch.multiprocessing

from helpers import free_port, save_tiny_bert
from modeling_helpers import (
    DISTRIBUTED_CHUNKS,
    DROPOUT_SEED,
    GLOBAL_BATCH,
    MODEL_OPTIONS,
    SCENARIOS,
    assert_gradients_meaningful,
    batch_slice,
    distributed_worker,
    gradients,
    max_gradient_difference,
    toy_batch,
)
from raytev.modeling.dense import DenseModel
from raytev.modeling.training_step import passage_inputs, plain_step, query_inputs

WORLD_SIZE = 2



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run every scenario once in two spawned workers; return the model folders and where gradients went."""
    root = tmp_path_factory.mktemp("distributed")
    folders = {0.0: save_tiny_bert(root / "model"), 0.1: save_tiny_bert(root / "model_dropout", dropout=0.1)}
    torch.multiprocessing.spawn(distributed_worker, nprocs=WORLD_SIZE,
                                args=(WORLD_SIZE, free_port(), folders, root, list(SCENARIOS)))
    return folders, root


def load_model(folders: dict, untied: bool, dropout: float) -> DenseModel:
    """The model the workers start from, for a one-process reference."""
    return DenseModel.from_pretrained(folders[dropout], untied=untied, **MODEL_OPTIONS).train()


def full_batch_gradients(folders: dict, untied: bool) -> dict:
    """One process, whole global batch, plain step."""
    model = load_model(folders, untied, 0.0)
    plain_step(model, toy_batch(**GLOBAL_BATCH))
    return gradients(model)


def per_worker_chunked_gradients(folders: dict, untied: bool) -> dict:
    """One process, whole batch, with each worker's chunks forwarded from that worker's dropout seed."""
    model = load_model(folders, untied, 0.1)
    share = GLOBAL_BATCH["num_queries"] // WORLD_SIZE
    q_reps, p_reps = [], []
    for rank in range(WORLD_SIZE):
        torch.manual_seed(DROPOUT_SEED + rank)
        batch = batch_slice(toy_batch(**GLOBAL_BATCH), rank * share, (rank + 1) * share)
        for chunk in torch.split(torch.arange(share), DISTRIBUTED_CHUNKS["q_chunk_size"]):
            q_reps.append(model(query={k: v[chunk] for k, v in query_inputs(batch).items()}).q_reps)
        passages = len(batch["passage_input_ids"])
        for chunk in torch.split(torch.arange(passages), DISTRIBUTED_CHUNKS["p_chunk_size"]):
            p_reps.append(model(passage={k: v[chunk] for k, v in passage_inputs(batch).items()}).p_reps)
    model.compute_loss(torch.cat(q_reps), torch.cat(p_reps))[1].backward()
    return gradients(model)


def worker_gradients(root, name: str) -> dict:
    """Gradients rank 0 saved for a scenario."""
    return torch.load(root / f"{name}.pt")


@pytest.mark.parametrize("name", ["gather_loss_tied", "gather_loss_untied", "ddp_plain_tied",
                                  "ddp_grad_cache_tied", "ddp_grad_cache_untied"])
def test_two_workers_match_one_process_on_the_full_batch(runs, name):
    folders, root = runs
    untied = SCENARIOS[name][0]
    reference = full_batch_gradients(folders, untied)
    assert_gradients_meaningful(reference)
    assert max_gradient_difference(reference, worker_gradients(root, name)) <= 1e-5


@pytest.mark.parametrize("untied", [False, True])
def test_grad_cache_with_dropout_across_workers_replays_each_workers_masks(runs, untied):
    folders, root = runs
    reference = per_worker_chunked_gradients(folders, untied)
    assert_gradients_meaningful(reference)
    name = "ddp_grad_cache_dropout_untied" if untied else "ddp_grad_cache_dropout_tied"
    assert max_gradient_difference(reference, worker_gradients(root, name)) <= 1e-5


def test_without_cross_worker_negatives_each_worker_scores_only_its_own_half(runs):
    folders, root = runs
    local = worker_gradients(root, "ddp_plain_local_negatives_tied")
    share = GLOBAL_BATCH["num_queries"] // WORLD_SIZE
    halves = []
    for rank in range(WORLD_SIZE):
        model = load_model(folders, False, 0.0)
        plain_step(model, batch_slice(toy_batch(**GLOBAL_BATCH), rank * share, (rank + 1) * share))
        halves.append(gradients(model))
    mean_of_halves = {name: (halves[0][name] + halves[1][name]) / 2 for name in halves[0]}
    assert max_gradient_difference(mean_of_halves, local) <= 1e-5
    assert max_gradient_difference(full_batch_gradients(folders, False), local) > 1e-4
