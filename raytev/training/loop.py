"""Ray Train's per-worker function: train on this worker's shard of the groups, checkpoint, resume exactly.

The loop reads top to bottom on one screen (`train_loop_per_worker`); the distributed, precision, optimizer
and checkpoint details are the named helpers below it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from transformers import get_linear_schedule_with_warmup

from raytev.data.collate import TrainingCollator
from raytev.data.feed import iter_training_batches
from raytev.errors import is_disk_full
from raytev.modeling.adapters import add_lora
from raytev.modeling.dense import DenseModel
from raytev.modeling.training_step import grad_cache_step, gradient_sync, micro_batches, plain_step, unwrap
from raytev.staging import staged_directory
from raytev.training.plan import TrainingPlan, check_resumable
from raytev.training.sharding import (
    OPTIMIZER_SHARDS_DIR,
    full_state_dict,
    is_sharded,
    load_sharded_optimizer,
    save_sharded_optimizer,
    shard_model,
)
from raytev.training.state import (
    CHECKPOINT_PATTERN,
    MODEL_DIR,
    TrainerState,
    checkpoint_name,
    load_training_state,
    save_training_state,
)

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def train_loop_per_worker(config: dict) -> None:
    """Train `config['plan']` on this worker; every rank runs this, rank 0 writes checkpoints (with --fsdp every
    rank its shard) and the log."""
    plan: TrainingPlan = config["plan"]
    training, seed = plan.training, plan.config.data.seed
    rank = ray.train.get_context().get_world_rank()
    # Compute threads: the node's cores shared among the workers on it (a CPU reservation only schedules).
    torch.set_num_threads(plan.torch_threads or max(1, (os.cpu_count() or 1)
                                                    // ray.train.get_context().get_local_world_size()))
    torch.manual_seed(seed)
    device = ray.train.torch.get_device()
    model, optimizer, scheduler, scaler, state = set_up(plan, device)  # from the checkpoint when resuming
    step_function = choose_step(training)
    shard = ray.train.get_dataset_shard("train")
    log = TrainingLog(plan, rank)

    for batch in remaining_batches(plan, state, shard):
        loss = train_step(model, batch, device, step_function, optimizer, scheduler, scaler, plan)
        log.add(state, loss, scheduler.get_last_lr()[0])
        if checkpoint_due(plan, state):
            save_checkpoint(plan, state, rank, lambda directory: write_checkpoint(
                directory, state, model, optimizer, scheduler, scaler, rank), every_rank_writes=training.fsdp)


def remaining_batches(plan: TrainingPlan, state: TrainerState, shard) -> Iterator[dict]:
    """The batches this worker still trains on, epoch after epoch from where `state` stands; `state` counts each
    one's step as it is handed out (both backends' loops read batches here).

    The epoch's stream is the same in every run (ordered Ray Data, seeded shuffle): a resumed run reads past the
    batches done before its checkpoint and trains on exactly the ones an uninterrupted run would.
    """
    training, seed = plan.training, plan.config.data.seed
    collator = TrainingCollator.for_table(plan.queries, training, seed)
    while state.step < plan.total_steps:
        batches = iter_training_batches(shard, collator.for_epoch(state.epoch), training.queries_per_worker_step,
                                        steps=plan.steps_per_epoch, skip=state.step_in_epoch,
                                        shuffle_buffer=training.shuffle_buffer_size or None,
                                        shuffle_seed=seed + state.epoch)
        for batch in batches:
            state.step += 1
            state.step_in_epoch += 1
            yield batch
            if state.step == plan.total_steps:
                break
        if state.step_in_epoch >= plan.steps_per_epoch:
            state.finish_epoch()


def checkpoint_due(plan: TrainingPlan, state: TrainerState) -> bool:
    """Whether the step just taken is checkpointed: every save_steps, and the last one."""
    return state.step % plan.training.save_steps == 0 or state.step == plan.total_steps


def train_step(model, batch, device, step_function, optimizer, scheduler, scaler, plan: TrainingPlan) -> torch.Tensor:
    """One optimizer step on one batch: forward/backward of each micro-batch (gradients reduced across workers
    after the last), unscale and clip, step, schedule. Returns the mean loss on the device (reading it would
    wait for the device: the log reads it every logging_steps)."""
    model.train()
    batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
    parts = micro_batches(batch, plan.training.gradient_accumulation_steps)
    loss = 0.0
    for index, part in enumerate(parts):
        with gradient_sync(model, enabled=index == len(parts) - 1):
            loss = loss + step_function(model, part, autocast_dtype=autocast_dtype(plan), scaler=scaler,
                                        loss_scale=1.0 / len(parts))
    loss = loss / len(parts)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if plan.training.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), plan.training.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def set_up(plan: TrainingPlan, device: torch.device):
    """(model, optimizer, scheduler, scaler, trainer state): fresh, or restored from the checkpoint to resume."""
    sharded = plan.training.fsdp
    with resume_directory(plan) as resume_dir:
        model = wrap_for_training(load_model(plan, resume_dir), shard=sharded)
        optimizer = build_optimizer(unwrap(model), plan.training)
        scheduler = build_scheduler(optimizer, plan.training, plan.total_steps)
        scaler = torch.amp.GradScaler(device.type) if plan.config.precision.fp16 else None
        state = TrainerState(data_fingerprint=plan.queries.manifest["fingerprint"],
                             global_batch_size=plan.global_batch_size)
        if resume_dir is not None:
            state = load_training_state(Path(resume_dir), None if sharded else optimizer, scheduler, scaler)
            if sharded:
                load_sharded_optimizer(model, optimizer, Path(resume_dir) / OPTIMIZER_SHARDS_DIR)
            check_resumable(state, plan, str(resume_dir))
            state.log.append({"event": "resumed", "from_step": state.step})
    return model, optimizer, scheduler, scaler, state


def load_model(plan: TrainingPlan, resume_dir: str | None) -> DenseModel:
    """The model this run trains: the checkpoint's when resuming, else the configured one with fresh LoRA
    adapters under --lora; gradient checkpointing switched on as asked."""
    cross_worker = plan.training.cross_worker_negatives
    if resume_dir is None:
        model = DenseModel.from_resolved(plan.model, cross_worker_negatives=cross_worker, trainable_adapter=True)
    else:  # a LoRA checkpoint's model/ is the adapter folder, which names its base model
        model = DenseModel.from_pretrained(str(Path(resume_dir) / MODEL_DIR), cross_worker_negatives=cross_worker,
                                           trainable_adapter=True, **plan.model.load_arguments())
    if plan.config.lora.lora and not model.has_adapter:
        model.query_encoder = add_lora(model.query_encoder, plan.config.lora, plan.model.base_reference)
    if plan.training.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def resume_directory(plan: TrainingPlan):
    """A context giving the checkpoint folder to resume from (Ray's, when it restarts workers or restores a run;
    else the one the driver found), or None for a fresh start."""
    ray_checkpoint = ray.train.get_checkpoint()
    return ray_checkpoint.as_directory() if ray_checkpoint else nullcontext(plan.resume_from)


def choose_step(training) -> callable:
    """The plain full-batch step, or GradCache's chunked one with the configured chunk sizes."""
    if training.grad_cache:
        return partial(grad_cache_step, q_chunk_size=training.gc_q_chunk_size, p_chunk_size=training.gc_p_chunk_size)
    return plain_step


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


class TrainingLog:
    """The loss, learning rate and throughput of each logging window: kept in the trainer state, sent to the
    driver's progress bar, printed with --verbose. The loss stays on the device until a window closes."""

    def __init__(self, plan: TrainingPlan, rank: int):
        self.plan, self.rank = plan, rank
        self.verbose = plan.config.cluster.verbose
        self.progress = plan.progress
        self._reset()

    def _reset(self) -> None:
        self.started, self.loss_sum, self.steps = time.perf_counter(), None, 0

    def window_ends(self, state: TrainerState) -> bool:
        """Whether the step just taken closes a logging window: every logging_steps, and the last step."""
        return state.step % self.plan.training.logging_steps == 0 or state.step == self.plan.total_steps

    def add(self, state: TrainerState, loss, learning_rate: float) -> None:
        """Count one optimizer step (its loss still on the device, a torch or JAX scalar, and the learning rate
        of the next step); close the window every logging_steps (and at the last step)."""
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.steps += 1
        entry = None
        if self.window_ends(state):
            seconds = time.perf_counter() - self.started
            entry = {"step": state.step,
                     "epoch": round(state.epoch + state.step_in_epoch / self.plan.steps_per_epoch, 4),
                     "loss": round(float(self.loss_sum) / self.steps, 6),  # the one device sync per window
                     "learning_rate": learning_rate,
                     "samples_per_second": round(self.steps * self.plan.global_batch_size / max(seconds, 1e-9), 2)}
            state.log.append(entry)
            self._reset()
        if self.rank == 0:
            if self.progress is not None:
                self.report_progress({"step": state.step, **({"loss": entry["loss"]} if entry else {})})
            if entry is not None and self.verbose:
                print(format_entry(entry, self.plan.total_steps), flush=True)

    def report_progress(self, update: dict) -> None:
        """Send an update to the driver's bar; if the bar's queue actor is gone, stop sending and train on.

        The bar is only a display: its actor lost with its node must not fail this worker, nor every restart after
        it (restarted workers get the same dead handle).
        """
        try:
            self.progress.put_nowait(update)
        except ray.exceptions.RayActorError:
            self.progress = None


def format_entry(entry: dict, total_steps: int) -> str:
    """One human line for a log entry."""
    if "event" in entry:
        return " ".join(f"{key} {value}" for key, value in entry.items())
    return (f"step {entry['step']}/{total_steps}  epoch {entry['epoch']:.2f}  loss {entry['loss']:.4f}  "
            f"lr {entry['learning_rate']:.2e}  {entry['samples_per_second']:.1f} queries/s")


def write_checkpoint(directory: Path, state: TrainerState, model, optimizer, scheduler, scaler, rank: int) -> None:
    """Model, optimizer, scheduler, scaler, RNG and trainer state into one folder. Sharded (FSDP), every rank
    calls it: the weights are gathered to rank 0 and each rank writes its slice of the optimizer state."""
    dense = unwrap(model)
    if not is_sharded(model):
        dense.save_pretrained(directory / MODEL_DIR)
        save_training_state(directory, state, optimizer, scheduler, scaler)
        return
    weights = full_state_dict(model, trainable_only=dense.has_adapter)
    save_sharded_optimizer(model, optimizer, directory / OPTIMIZER_SHARDS_DIR)
    if rank == 0:
        dense.save_pretrained(directory / MODEL_DIR, state_dict=weights)
        save_training_state(directory, state, None, scheduler, scaler)


def save_checkpoint(plan: TrainingPlan, state: TrainerState, rank: int, write: Callable[[Path], None],
                    every_rank_writes: bool = False) -> None:
    """Checkpoint through ray.train.report (every rank calls it: it is a barrier); rank 0's `write` provides the
    files (it fills the folder it is given), or every rank's when `every_rank_writes` (sharded state: Ray merges
    the ranks' folders into one checkpoint)."""
    metrics = {"step": state.step, "epoch": state.epoch, "loss": state.log[-1].get("loss") if state.log else None}
    name = checkpoint_name(state.step)
    if plan.num_workers == 0:
        # In-process runs get no persistence from Ray: write under the run folder ourselves, keep the newest.
        target = Path(plan.run_dir) / name
        with staged_directory(target) as staging:
            write(staging)
        prune_checkpoints(Path(plan.run_dir), keep=plan.training.save_total_limit)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(target)))
        return
    if rank != 0 and not every_rank_writes:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as temporary:
        write(Path(temporary))
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(temporary),
                             checkpoint_dir_name=name)
        except Exception as error:
            # Ray copies the files into the checkpoint's final name: a disk that filled up midway left half of
            # it there, which nothing would ever resume from or remove.
            if plan.run_dir and is_disk_full(error):
                shutil.rmtree(Path(plan.run_dir) / name, ignore_errors=True)
            raise


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints of an in-process run."""
    checkpoints = sorted(path for path in run_dir.iterdir() if CHECKPOINT_PATTERN.match(path.name))
    for path in checkpoints[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
