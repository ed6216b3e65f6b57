"""Ray Train's per-worker function: train on this worker's shard of the groups, checkpoint, resume."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from tqdm.auto import tqdm

from raytev.data.collate import TrainingCollator
from raytev.data.feed import iter_training_batches
from raytev.modeling.dense import DenseModel
from raytev.modeling.grad_cache import grad_cache_step
from raytev.modeling.training_step import plain_step, unwrap
from raytev.staging import staged_directory
from raytev.training.optim import build_optimizer, build_scheduler
from raytev.training.plan import TrainingPlan, check_resumable
from raytev.training.progress import LogWindow, format_entry
from raytev.training.state import (CHECKPOINT_PATTERN, MODEL_DIR, TrainerState, checkpoint_name,
                                   load_training_state, save_training_state)


def train_loop_per_worker(config: dict) -> None:
    """Train `config['plan']` on this worker; every rank runs this, rank 0 writes checkpoints and the log."""
    plan: TrainingPlan = config["plan"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    # Compute threads: the node's cores shared among the workers on it (a CPU reservation only schedules).
    torch.set_num_threads(plan.torch_threads or max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    torch.manual_seed(plan.data.seed)
    device = ray.train.torch.get_device()

    ray_checkpoint = ray.train.get_checkpoint()  # set when Ray restarts workers or restores a run
    with (ray_checkpoint.as_directory() if ray_checkpoint else nullcontext(plan.resume_from)) as resume_dir:
        resume_dir = Path(resume_dir) if resume_dir else None
        model = load_model(plan, resume_dir)
        model = wrap_for_training(model)
        optimizer = build_optimizer(unwrap(model), plan.training)
        scheduler = build_scheduler(optimizer, plan.training, plan.total_steps)
        scaler = torch.amp.GradScaler(device.type) if plan.precision.fp16 else None
        state = TrainerState(data_fingerprint=plan.queries.manifest["fingerprint"],
                             global_batch_size=plan.global_batch_size)
        if resume_dir is not None:
            state = load_training_state(resume_dir, optimizer, scheduler, scaler)
            check_resumable(state, plan, resume_dir)
            state.log.append({"event": "resumed", "from_step": state.step})

    step_function = plain_step
    if plan.training.grad_cache:
        step_function = partial(grad_cache_step, q_chunk_size=plan.training.gc_q_chunk_size,
                                p_chunk_size=plan.training.gc_p_chunk_size)
    collator = TrainingCollator.for_table(plan.queries, plan.data)
    shard = ray.train.get_dataset_shard("train")
    # The loss of a cross-worker step is the global loss times world size (see modeling.loss); log the global loss.
    loss_scale = world_size if plan.training.cross_worker_negatives and world_size > 1 else 1
    window = LogWindow()
    bar = progress_bar(plan, rank, initial=state.step)
    if rank == 0 and state.log and "event" in state.log[-1]:
        print(format_entry(state.log[-1], plan.total_steps), flush=True)

    while state.step < plan.total_steps:
        batches = iter_training_batches(shard, collator.for_epoch(state.epoch), plan.training.per_device_train_batch_size,
                                        shuffle_buffer=plan.training.shuffle_buffer_size or None,
                                        shuffle_seed=plan.data.seed + state.epoch)
        for index, batch in enumerate(batches):
            if index < state.step_in_epoch:
                continue  # done before the checkpoint this run resumed from
            if index >= plan.steps_per_epoch or state.step >= plan.total_steps:
                break
            loss = train_step(model, batch, device, step_function, optimizer, scheduler, scaler, plan)
            state.step += 1
            state.step_in_epoch += 1
            window.add(loss.item() / loss_scale, plan.global_batch_size)
            bar.update(1)
            if state.step % plan.training.logging_steps == 0 or state.step == plan.total_steps:
                entry = window.entry(state.step, state.epoch + state.step_in_epoch / plan.steps_per_epoch,
                                     scheduler.get_last_lr()[0])
                state.log.append(entry)
                if rank == 0:
                    print(format_entry(entry, plan.total_steps), flush=True)
            if state.step % plan.training.save_steps == 0 or state.step == plan.total_steps:
                save_checkpoint(plan, state, model, optimizer, scheduler, scaler, rank)
        if state.step_in_epoch >= plan.steps_per_epoch:
            state.finish_epoch()
    bar.close()


def wrap_for_training(model: DenseModel) -> torch.nn.Module:
    """Move the model to this worker's device and wrap it in DDP when there are several workers.

    Unused parameters are expected: BERT's pooler never gets a gradient, and a GradCache chunk of an
    untied model runs only one of its two encoders.
    """
    return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})


def load_model(plan: TrainingPlan, resume_dir: Path | None) -> DenseModel:
    """The model to train: from a checkpoint when resuming, else from the plan's source, with its settings."""
    return DenseModel.from_pretrained(
        str(resume_dir / MODEL_DIR) if resume_dir else plan.model_source,
        pooling=plan.model.pooling, normalize=plan.model.normalize, temperature=plan.model.temperature,
        untied=plan.model.untie_encoder, query_prefix=plan.data.query_prefix,
        passage_prefix=plan.data.passage_prefix, cross_worker_negatives=plan.training.cross_worker_negatives,
        cache_dir=plan.model.cache_dir,
    )


def train_step(model, batch, device, step_function, optimizer, scheduler, scaler, plan: TrainingPlan) -> torch.Tensor:
    """One optimizer step on one batch: forward/backward, unscale and clip, step, schedule."""
    model.train()
    batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
    loss = step_function(model, batch, autocast_dtype=plan.precision.autocast_dtype, scaler=scaler)
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


def write_checkpoint(directory: Path, state: TrainerState, model, optimizer, scheduler, scaler) -> None:
    """Model, optimizer, scheduler, scaler, RNG and trainer state into one folder."""
    unwrap(model).save_pretrained(directory / MODEL_DIR)
    save_training_state(directory, state, optimizer, scheduler, scaler)


def save_checkpoint(plan: TrainingPlan, state: TrainerState, model, optimizer, scheduler, scaler, rank: int) -> None:
    """Checkpoint through ray.train.report (every rank calls it: it is a barrier); rank 0 provides the files."""
    metrics = {"step": state.step, "epoch": state.epoch, "loss": state.log[-1].get("loss") if state.log else None}
    name = checkpoint_name(state.step)
    if plan.num_workers == 0:
        # In-process runs get no persistence from Ray: write under the run folder ourselves, keep the newest.
        target = Path(plan.run_dir) / name
        with staged_directory(target) as staging:
            write_checkpoint(staging, state, model, optimizer, scheduler, scaler)
        prune_checkpoints(Path(plan.run_dir), keep=plan.training.save_total_limit)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(target)))
        return
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as temporary:
        write_checkpoint(Path(temporary), state, model, optimizer, scheduler, scaler)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(temporary), checkpoint_dir_name=name)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints of an in-process run."""
    checkpoints = sorted(path for path in run_dir.iterdir() if CHECKPOINT_PATTERN.match(path.name))
    for path in checkpoints[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def progress_bar(plan: TrainingPlan, rank: int, initial: int):
    """A bar over all steps on rank 0 (Ray's bar inside Ray workers, which shows on the driver); else a no-op."""
    if rank != 0:
        return tqdm(disable=True)
    if plan.num_workers == 0:
        bar = tqdm(total=plan.total_steps, desc="Training", unit=" steps", disable=None)
    else:
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        bar = ray_tqdm(total=plan.total_steps, desc="Training", unit=" steps")
    bar.update(initial)
    return bar
