"""Shared pieces of the modeling tests: tiny random BERT models, toy batches, gradient comparison."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from helpers import TINY_VOCAB

def _padded_ids(rows: int, max_len: int, generator: torch.Generator, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids of random lengths (2..max_len), [CLS] first, padded on the chosen side."""
    ids = torch.zeros(rows, max_len, dtype=torch.long)
    mask = torch.zeros(rows, max_len, dtype=torch.long)
    lengths = torch.randint(2, max_len + 1, (rows,), generator=generator)
    lengths[0] = max_len  # at least one full row so the batch width is max_len
    for row, length in enumerate(lengths.tolist()):
        tokens = torch.randint(5, len(TINY_VOCAB), (length,), generator=generator)
        tokens[0] = 2
        span = slice(max_len - length, max_len) if left else slice(0, length)
        ids[row, span] = tokens
        mask[row, span] = 1
    return ids, mask


def toy_batch(num_queries: int = 4, group_size: int = 3, seed: int = 0, left_padding: bool = False,
              query_len: int = 6, passage_len: int = 10) -> dict[str, torch.Tensor]:
    """A batch in the data layer's contract: queries [B, Lq], group-major passages [B*G, Lp]."""
    generator = torch.Generator().manual_seed(seed)
    q_ids, q_mask = _padded_ids(num_queries, query_len, generator, left_padding)
    p_ids, p_mask = _padded_ids(num_queries * group_size, passage_len, generator, left_padding)
    return {"query_input_ids": q_ids, "query_attention_mask": q_mask,
            "passage_input_ids": p_ids, "passage_attention_mask": p_mask}


def batch_slice(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Queries [start, stop) and their passage groups: one worker's share of a global batch."""
    group_size = len(batch["passage_input_ids"]) // len(batch["query_input_ids"])
    return {name: tensor[start * group_size: stop * group_size] if name.startswith("passage") else tensor[start:stop]
            for name, tensor in batch.items()}


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient by name (zeros where none arrived), detached copies."""
    return {name: (param.grad.detach().clone() if param.grad is not None else torch.zeros_like(param))
            for name, param in model.named_parameters()}


def max_gradient_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two gradient dicts with the same names."""
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


def assert_gradients_meaningful(grads: dict[str, torch.Tensor]) -> None:
    """Guard against vacuous equality: most parameters must have received a real gradient."""
    nonzero = sum(bool(grad.abs().max() > 1e-6) for grad in grads.values())
    assert nonzero >= 0.8 * len(grads), f"only {nonzero} of {len(grads)} parameters got a gradient"


# ---- Two-process (gloo) runs: the worker must live in an importable module for torch.multiprocessing.spawn.

GLOBAL_BATCH = dict(num_queries=4, group_size=3, seed=8)
DISTRIBUTED_CHUNKS = dict(q_chunk_size=1, p_chunk_size=4)
DROPOUT_SEED = 100  # worker r seeds its RNG with DROPOUT_SEED + r before a dropout step
MODEL_OPTIONS = dict(pooling="mean", normalize=True, temperature=0.1)

# name -> (untied, dropout, how the step runs)
SCENARIOS = {
    "gather_loss_tied": (False, 0.0, "loss"),
    "gather_loss_untied": (True, 0.0, "loss"),
    "ddp_plain_tied": (False, 0.0, "ddp_plain"),
    "ddp_plain_local_negatives_tied": (False, 0.0, "ddp_plain_local"),
    "ddp_grad_cache_tied": (False, 0.0, "ddp_grad_cache"),
    "ddp_grad_cache_untied": (True, 0.0, "ddp_grad_cache"),
    "ddp_grad_cache_dropout_tied": (False, 0.1, "ddp_grad_cache"),
    "ddp_grad_cache_dropout_untied": (True, 0.1, "ddp_grad_cache"),
}


def _worker_gradients(name: str, rank: int, world_size: int, folders: dict) -> dict[str, torch.Tensor]:
    """Run one scenario on this worker's half of GLOBAL_BATCH; return the gradients every worker agrees on."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from raytev.modeling.dense import DenseModel
    from raytev.modeling.training_step import grad_cache_step
    from raytev.modeling.training_step import passage_inputs, plain_step, query_inputs

    untied, dropout, how = SCENARIOS[name]
    model = DenseModel.from_pretrained(folders[dropout], untied=untied, **MODEL_OPTIONS,
                                       cross_worker_negatives=how != "ddp_plain_local").train()
    share = GLOBAL_BATCH["num_queries"] // world_size
    batch = batch_slice(toy_batch(**GLOBAL_BATCH), rank * share, (rank + 1) * share)
    torch.manual_seed(DROPOUT_SEED + rank)
    if how == "loss":
        model(query=query_inputs(batch), passage=passage_inputs(batch)).loss.backward()
        grads = gradients(model)
        for grad in grads.values():  # what DDP would do: average over workers
            dist.all_reduce(grad)
            grad /= world_size
        return grads
    wrapped = DistributedDataParallel(model, find_unused_parameters=True)
    if how == "ddp_grad_cache":
        grad_cache_step(wrapped, batch, **DISTRIBUTED_CHUNKS)
    else:
        plain_step(wrapped, batch)
    return gradients(model)


@contextmanager
def gloo_process_group(rank: int, world_size: int, port: int) -> Iterator[None]:
    """A spawned worker's gloo process group, one compute thread (the workers share two cores), torn down after."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def save_scenario_gradients(names: list[str], run, rank: int, out_dir: Path) -> None:
    """Run each named scenario (`run(name)` gives its gradients) on every worker; rank 0 saves them as <name>.pt."""
    import torch.distributed as dist

    for name in names:
        grads = run(name)
        if rank == 0:
            torch.save(grads, Path(out_dir) / f"{name}.pt")
        dist.barrier()


def distributed_worker(rank: int, world_size: int, port: int, folders: dict, out_dir: Path, names: list[str]) -> None:
    """Entry point of one spawned gloo worker: run the scenarios, rank 0 saves each one's gradients."""
    with gloo_process_group(rank, world_size, port):
        save_scenario_gradients(names, lambda name: _worker_gradients(name, rank, world_size, folders), rank, out_dir)
