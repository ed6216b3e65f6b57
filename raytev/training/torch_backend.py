"""The torch backend of the worker loop: a DenseModel (or, with --task rerank, a cross-encoder Reranker) under DDP
(or FSDP2 shards with --fsdp), AdamW, the linear schedule and a GradScaler, travelling as one `TorchTrainState`; the
step (micro-batches, GradCache, autocast, clipping) and checkpoints with every random generator's state, for an
exact resume."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from transformers import get_linear_schedule_with_warmup

from raytev.modeling.adapters import add_lora
from raytev.modeling.dense import DenseModel
from raytev.modeling.reranker import Reranker
from raytev.modeling.training_step import (
    contrastive_loss,
    distill_step,
    distilled_loss,
    grad_cache_step,
    gradient_sync,
    micro_batches,
    plain_step,
    rerank_step,
    unwrap,
)
from raytev.training.plan import TrainingPlan
from raytev.training.sharding import (
    OPTIMIZER_SHARDS_DIR,
    full_state_dict,
    is_sharded,
    load_sharded_optimizer,
    save_sharded_optimizer,
    shard_model,
)
from raytev.training.state import MODEL_DIR, TrainerState, write_trainer_state

OPTIMIZER_FILE = "optimizer.pt"
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


@dataclass
class TorchTrainState:
    """What a torch run carries from step to step: the (wrapped) model, optimizer, schedule and loss scaler (a
    disabled GradScaler without --fp16: it then scales nothing and steps the optimizer as it is)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


class TorchBackend:
    """One worker's torch training: set up (fresh or from a checkpoint), step, save."""

    def __init__(self, plan: TrainingPlan, rank: int):
        self.plan, self.rank = plan, rank
        self.every_rank_writes = plan.training.fsdp  # each rank writes its slice of the optimizer state
        # Compute threads: the node's cores shared among the workers on it (a CPU reservation only schedules).
        torch.set_num_threads(plan.torch_threads or max(1, (os.cpu_count() or 1)
                                                        // ray.train.get_context().get_local_world_size()))
        torch.manual_seed(plan.config.data.seed)
        self.device = ray.train.torch.get_device()
        self.step_function = choose_step(plan)

    def set_up(self, resume_dir: Path | None) -> None:
        """The model (the checkpoint's when resuming), optimizer, schedule and scaler, with their saved states."""
        training = self.plan.training
        model = wrap_for_training(load_model(self.plan, resume_dir), shard=training.fsdp)
        optimizer = build_optimizer(unwrap(model), training)
        self.state = TorchTrainState(model, optimizer, build_scheduler(optimizer, training, self.plan.total_steps),
                                     torch.amp.GradScaler(self.device.type, enabled=self.plan.config.precision.fp16))
        if resume_dir is not None:
            load_optimizer_state(resume_dir, self.state)

    def step(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, float]:
        """One optimizer step; (the loss on the device, the next step's learning rate)."""
        batch = {name: torch.from_numpy(array).to(self.device, non_blocking=True) for name, array in batch.items()}
        loss = train_step(self.state, batch, self.step_function, self.plan)
        return loss, self.state.scheduler.get_last_lr()[0]

    def wait(self) -> None:
        """Wait for the GPU's queued work (nothing to wait for on a CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def save(self, directory: Path, state: TrainerState) -> None:
        """Model, optimizer, scheduler, scaler, RNG and trainer state into one folder. Sharded (FSDP), every rank
        calls it: the weights are gathered to rank 0 and each rank writes its slice of the optimizer state."""
        model, dense = self.state.model, unwrap(self.state.model)
        if not is_sharded(model):
            dense.save_pretrained(directory / MODEL_DIR)
            save_optimizer_state(directory, self.state, whole=True)
            write_trainer_state(directory, state)
            return
        weights = full_state_dict(model, trainable_only=dense.has_adapter)
        save_sharded_optimizer(model, self.state.optimizer, directory / OPTIMIZER_SHARDS_DIR)
        if self.rank == 0:
            dense.save_pretrained(directory / MODEL_DIR, state_dict=weights)
            save_optimizer_state(directory, self.state, whole=False)
            write_trainer_state(directory, state)


def train_step(state: TorchTrainState, batch: dict, step_function, plan: TrainingPlan) -> torch.Tensor:
    """One optimizer step on one batch: forward/backward of each micro-batch (gradients reduced across workers
    after the last), unscale and clip, step, schedule. Returns the mean loss on the device (reading it would
    wait for the device: the log reads it every logging_steps)."""
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    model.train()
    parts = micro_batches(batch, plan.training.gradient_accumulation_steps)
    loss = 0.0
    for index, part in enumerate(parts):
        with gradient_sync(model, enabled=index == len(parts) - 1):
            loss = loss + step_function(model, part, autocast_dtype=autocast_dtype(plan), scaler=scaler,
                                        loss_scale=1.0 / len(parts))
    loss = loss / len(parts)
    scaler.unscale_(optimizer)
    if plan.training.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), plan.training.max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    state.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def load_model(plan: TrainingPlan, resume_dir: Path | None) -> DenseModel | Reranker:
    """The model this run trains: the checkpoint's when resuming, else the configured one with fresh LoRA
    adapters under --lora; gradient checkpointing switched on as asked."""
    model = plan.model
    if resume_dir is not None:  # a LoRA checkpoint's model/ is the adapter alone, on the run's base model
        model = model.saved_in(resume_dir / MODEL_DIR, adapter=plan.config.lora.lora or model.adapter is not None)
    if plan.pairs is not None:  # a cross-encoder: a new head on the encoder, or the checkpoint's
        reranker = Reranker.from_resolved(model, trained=resume_dir is not None, trainable_adapter=True,
                                          lora=plan.config.lora if model.adapter is None else None)
        if plan.training.gradient_checkpointing:
            reranker.enable_gradient_checkpointing()
        return reranker
    dense = DenseModel.from_resolved(model, cross_worker_negatives=plan.training.cross_worker_negatives,
                                     trainable_adapter=True)
    if plan.config.lora.lora and not dense.has_adapter:
        dense.query_encoder = add_lora(dense.query_encoder, plan.config.lora, model.base_reference)
    if plan.training.gradient_checkpointing:
        dense.enable_gradient_checkpointing()
    return dense


def choose_step(plan: TrainingPlan) -> callable:
    """The plain full-batch step, or GradCache's chunked one with the configured chunk sizes, or a reranker's."""
    training = plan.training
    if plan.pairs is not None:
        return partial(rerank_step, group_size=training.train_group_size)
    distil = dict(distil_temperature=plan.config.distil_temperature, distil_weight=plan.config.distil_weight)
    if training.grad_cache:
        loss_of = partial(distilled_loss, **distil) if plan.config.distill_from else contrastive_loss
        return partial(grad_cache_step, q_chunk_size=training.gc_q_chunk_size, p_chunk_size=training.gc_p_chunk_size,
                       loss_of=loss_of)
    return partial(distill_step, **distil) if plan.config.distill_from else plain_step


def autocast_dtype(plan: TrainingPlan) -> torch.dtype | None:
    """The dtype forward passes autocast to (--bf16 / --fp16), or None for full precision."""
    name = plan.config.precision.dtype_name
    return getattr(torch, name) if name else None


def wrap_for_training(model: DenseModel, shard: bool = False) -> torch.nn.Module:
    """Move the model to this worker's device and wrap it: DDP when there are several workers, or FSDP2
    shards with --fsdp (raytev.training.sharding).

    Unused parameters are expected: BERT's pooler never gets a gradient, and a GradCache chunk of an
    untied model runs only one of its two encoders.
    """
    if shard:
        return shard_model(model.to(ray.train.torch.get_device()))
    return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})


def build_optimizer(model: torch.nn.Module, training) -> torch.optim.AdamW:
    """AdamW over the model's parameters; biases and normalization weights get no weight decay (as the HF
    Trainer, and so Tevatron, set it up)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if name.endswith(NO_DECAY) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": training.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=training.learning_rate)


def build_scheduler(optimizer: torch.optim.Optimizer, training, total_steps: int):
    """Linear warmup over `warmup_ratio` of the steps, then linear decay to 0."""
    return get_linear_schedule_with_warmup(optimizer, math.ceil(total_steps * training.warmup_ratio), total_steps)


def rng_states() -> dict:
    """Every random generator training uses, so a resumed run continues the same streams.

    Only tensors and plain values, so the file loads with `weights_only=True` (no unpickling of code).
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {"torch": torch.get_rng_state(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Put the generators back as `rng_states` found them."""
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_optimizer_state(directory: Path, state: TorchTrainState, whole: bool) -> None:
    """Optimizer (unless saved in shards elsewhere: `whole` False), scheduler, scaler and RNG states."""
    torch.save({"optimizer": state.optimizer.state_dict() if whole else None,
                "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict() or None,
                "rng": rng_states()}, directory / OPTIMIZER_FILE)


def load_optimizer_state(directory: Path, state: TorchTrainState) -> None:
    """Restore what save_optimizer_state wrote (the optimizer from its shards when sharded)."""
    saved = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    if is_sharded(state.model):
        load_sharded_optimizer(state.model, state.optimizer, directory / OPTIMIZER_SHARDS_DIR)
    else:
        state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if saved["scaler"]:
        state.scaler.load_state_dict(saved["scaler"])
    restore_rng_states(saved["rng"])
