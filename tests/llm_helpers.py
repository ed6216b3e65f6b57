"""Two-process (gloo) runs of the sharded path: FSDP2 against DDP on the same global batch, and optimizer state
written by one worker count and read by another. Workers live here, importable for torch.multiprocessing.spawn."""

from __future__ import annotations

from pathlib import Path

import torch
from modeling_helpers import batch_slice, gloo_process_group, gradients, save_scenario_gradients, toy_batch

GLOBAL_BATCH = dict(num_queries=4, group_size=3, seed=8)
CHUNKS = dict(q_chunk_size=1, p_chunk_size=4)
MODEL_OPTIONS = dict(pooling="last", normalize=True, temperature=0.1)
LORA = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="q_proj,v_proj,down_proj")

# name -> (wrapping, step, LoRA)
SCENARIOS = {
    "ddp_plain": ("ddp", "plain", False),
    "fsdp_plain": ("fsdp", "plain", False),
    "fsdp_grad_cache": ("fsdp", "grad_cache", False),
    "fsdp_accumulate": ("fsdp", "accumulate", False),
    "ddp_accumulate": ("ddp", "accumulate", False),
    "ddp_plain_lora": ("ddp", "plain", True),
    "fsdp_plain_lora": ("fsdp", "plain", True),
}


def lora_section():
    """The --lora flags of these runs, as a LoraSection."""
    from raytev.config.sections import LoraSection

    return LoraSection(lora=True, **LORA)


def build_model(folder: Path, lora: bool):
    """The tiny decoder as a DenseModel, with LoRA adapters (seeded, so every process makes the same ones)."""
    from raytev.modeling.adapters import add_lora
    from raytev.modeling.dense import DenseModel

    model = DenseModel.from_pretrained(str(folder), **MODEL_OPTIONS).train()
    if lora:
        torch.manual_seed(1)
        model.query_encoder = add_lora(model.query_encoder, lora_section())
        for name, parameter in model.named_parameters():  # peft starts lora_B at zero: move it, so A gets a gradient
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


def full_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter's whole gradient by name (FSDP's DTensor shards gathered)."""
    grads = {}
    for name, parameter in getattr(model, "module", model).named_parameters():  # DDP's names without "module."
        if not parameter.requires_grad:
            continue
        grad = parameter.grad
        if grad is None:
            grads[name] = torch.zeros(parameter.shape)
            continue
        grads[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
    return grads


def _run(name: str, rank: int, world_size: int, folder: Path) -> dict[str, torch.Tensor]:
    """One scenario's gradients on this worker's half of GLOBAL_BATCH."""
    from torch.nn.parallel import DistributedDataParallel

    from raytev.modeling.training_step import grad_cache_step, gradient_sync, micro_batches, plain_step
    from raytev.training.sharding import shard_model

    wrapping, step, lora = SCENARIOS[name]
    model = build_model(folder, lora)
    share = GLOBAL_BATCH["num_queries"] // world_size
    batch = batch_slice(toy_batch(**GLOBAL_BATCH), rank * share, (rank + 1) * share)
    wrapped = shard_model(model) if wrapping == "fsdp" else DistributedDataParallel(model,
                                                                                     find_unused_parameters=True)
    if step == "grad_cache":
        grad_cache_step(wrapped, batch, **CHUNKS)
    elif step == "accumulate":
        parts = micro_batches(batch, 2)
        for index, part in enumerate(parts):
            with gradient_sync(wrapped, enabled=index == len(parts) - 1):
                plain_step(wrapped, part, loss_scale=1 / len(parts))
    else:
        plain_step(wrapped, batch)
    grads = full_gradients(wrapped)
    # What clipping reads: the norm over all workers' (sharded) gradients, which must be the whole gradient's.
    norm = torch.nn.utils.clip_grad_norm_([p for p in wrapped.parameters() if p.requires_grad], max_norm=1e9)
    grads["(total norm)"] = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).detach().reshape(1)
    return grads


def gradient_worker(rank: int, world_size: int, port: int, folder: Path, out_dir: Path, names: list[str]) -> None:
    """Entry point of one spawned gloo worker: run the scenarios; rank 0 saves each one's gradients."""
    with gloo_process_group(rank, world_size, port):
        save_scenario_gradients(names, lambda name: _run(name, rank, world_size, folder), rank, out_dir)
        optimizer_state(rank, world_size, folder, out_dir, "save")  # for a later run on another worker count


def optimizer_worker(rank: int, world_size: int, port: int, folder: Path, out_dir: Path, mode: str) -> None:
    """Entry point of a spawned gloo worker that only runs `optimizer_state`."""
    with gloo_process_group(rank, world_size, port):
        optimizer_state(rank, world_size, folder, out_dir, mode)


def optimizer_state(rank: int, world_size: int, folder: Path, out_dir: Path, mode: str) -> None:
    """'save': two optimizer steps under FSDP, then the sharded optimizer state and its full copy written;
    'load': the state read back by however many workers this run has, its full copy written for comparison."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from raytev.config.sections import TrainingSection
    from raytev.modeling.training_step import plain_step
    from raytev.training.sharding import load_sharded_optimizer, save_sharded_optimizer, shard_model
    from raytev.training.torch_backend import build_optimizer

    model = shard_model(build_model(folder, lora=True))
    optimizer = build_optimizer(model, TrainingSection(learning_rate=1e-2))
    if mode == "save":
        share = GLOBAL_BATCH["num_queries"] // world_size
        for seed in (8, 9):
            batch = toy_batch(**{**GLOBAL_BATCH, "seed": seed})
            plain_step(model, batch_slice(batch, rank * share, (rank + 1) * share))
            optimizer.step()
            optimizer.zero_grad()
        save_sharded_optimizer(model, optimizer, Path(out_dir) / "shards")
    else:
        load_sharded_optimizer(model, optimizer, Path(out_dir) / "shards")
    full = get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(full["state"], Path(out_dir) / f"{mode}-{world_size}.pt")
    dist.barrier()


def reference_gradients(folder: Path, lora: bool, accumulate: bool = False) -> dict[str, torch.Tensor]:
    """One process, the whole global batch: the gradients every wrapping must reproduce. With `accumulate`, each
    worker's two micro-batches are their own contrastive problems across workers: micro-batch j of every worker
    is scored together, and the step's gradient is the mean over j (the documented meaning of accumulation)."""
    from raytev.modeling.training_step import micro_batches, plain_step

    model = build_model(folder, lora)
    batch = toy_batch(**GLOBAL_BATCH)
    if not accumulate:
        plain_step(model, batch)
        return trainable_gradients(model)
    share = GLOBAL_BATCH["num_queries"] // 2
    halves = [micro_batches(batch_slice(batch, rank * share, (rank + 1) * share), 2) for rank in range(2)]
    for index in range(2):  # micro-batch `index` of both workers, scored together
        together = {name: torch.cat([halves[0][index][name], halves[1][index][name]]) for name in batch}
        plain_step(model, together, loss_scale=0.5)
    return trainable_gradients(model)


def trainable_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`gradients(model)` of the parameters that train (the adapters alone under LoRA)."""
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return {name: grad for name, grad in gradients(model).items() if name in trainable}
