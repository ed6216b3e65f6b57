"""Ray Train's per-worker function, for either backend: train on this worker's shard of the groups, log,
checkpoint, resume exactly.

The loop (`train_loop_per_worker`) reads top to bottom on one screen; what differs between torch and JAX sits
behind a small backend object (`set_up`, `step`, `wait`, `save`: torch_backend.py, jax_backend.py), imported by
name so that a JAX worker never imports torch. Batches come in as numpy arrays, the same for both.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import ray.train

from raytev.data.collate import TrainingCollator
from raytev.data.feed import iter_training_batches
from raytev.errors import is_disk_full
from raytev.staging import staged_directory
from raytev.training.plan import TrainingPlan, check_resumable
from raytev.training.state import CHECKPOINT_PATTERN, TrainerState, checkpoint_name, read_trainer_state

BACKENDS = {"torch": "raytev.training.torch_backend:TorchBackend", "jax": "raytev.training.jax_backend:JaxBackend"}


class Backend(Protocol):
    """What the loop asks of a backend; it holds the model and optimizer state of this worker."""

    every_rank_writes: bool  # each rank writes its part of a checkpoint (sharded state), not rank 0 alone

    def set_up(self, resume_dir: Path | None) -> None:
        """The model and optimizer: fresh, or restored from the checkpoint folder to resume."""

    def step(self, batch: dict) -> tuple[object, float]:
        """One optimizer step on a numpy batch: (its loss, still on the device; the next step's learning rate)."""

    def wait(self) -> None:
        """Return once the steps dispatched so far have finished on the device."""

    def save(self, directory: Path, state: TrainerState) -> None:
        """Write the model, the optimizer state and then `state` (the completion mark) into `directory`."""


def train_loop_per_worker(config: dict) -> None:
    """Train `config['plan']` on this worker; every rank runs this, rank 0 writes checkpoints (with sharded state
    every rank its part) and the log."""
    plan: TrainingPlan = config["plan"]
    rank = ray.train.get_context().get_world_rank()
    module, name = BACKENDS[plan.config.backend.backend].split(":")
    backend: Backend = getattr(importlib.import_module(module), name)(plan, rank)
    with resume_directory(plan) as resume_dir:
        backend.set_up(Path(resume_dir) if resume_dir else None)
        state = resumed_state(plan, Path(resume_dir)) if resume_dir else TrainerState(
            data_fingerprint=plan.queries.manifest["fingerprint"], global_batch_size=plan.global_batch_size)
    log = TrainingLog(plan, rank)

    for batch in remaining_batches(plan, state, ray.train.get_dataset_shard("train")):
        loss, learning_rate = backend.step(batch)
        if log.window_ends(state):
            backend.wait()  # a window's time ends when its last step has finished (devices run asynchronously)
        log.add(state, loss, learning_rate)
        if checkpoint_due(plan, state):
            save_checkpoint(plan, state, rank, backend)


def resumed_state(plan: TrainingPlan, resume_dir: Path) -> TrainerState:
    """The trainer state of the checkpoint resumed from, once it is known to continue this run."""
    state = read_trainer_state(resume_dir)
    check_resumable(state, plan, str(resume_dir))
    state.log.append({"event": "resumed", "from_step": state.step})
    return state


def resume_directory(plan: TrainingPlan):
    """A context giving the checkpoint folder to resume from (Ray's, when it restarts workers or restores a run;
    else the one the driver found), or None for a fresh start."""
    ray_checkpoint = ray.train.get_checkpoint()
    return ray_checkpoint.as_directory() if ray_checkpoint else nullcontext(plan.resume_from)


def remaining_batches(plan: TrainingPlan, state: TrainerState, shard) -> Iterator[dict]:
    """The batches this worker still trains on, epoch after epoch from where `state` stands; `state` counts each
    one's step as it is handed out.

    The epoch's stream is the same in every run (ordered Ray Data, seeded shuffle): a resumed run reads past the
    batches done before its checkpoint and trains on exactly the ones an uninterrupted run would.
    """
    training, seed = plan.training, plan.config.data.seed
    collator = TrainingCollator.for_table(plan.queries, training, seed, pairs=plan.pairs)
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


def save_checkpoint(plan: TrainingPlan, state: TrainerState, rank: int, backend: Backend) -> None:
    """Checkpoint through ray.train.report (every rank calls it: it is a barrier); rank 0's backend fills the
    folder, or every rank's with `every_rank_writes` (sharded state: Ray merges the ranks' folders into one)."""
    metrics = {"step": state.step, "epoch": state.epoch, "loss": state.log[-1].get("loss") if state.log else None}
    name = checkpoint_name(state.step)
    if plan.num_workers == 0:
        # In-process runs get no persistence from Ray: write under the run folder ourselves, keep the newest.
        target = Path(plan.run_dir) / name
        with staged_directory(target) as staging:
            backend.save(staging, state)
        prune_checkpoints(Path(plan.run_dir), keep=plan.training.save_total_limit)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(target)))
        return
    if rank != 0 and not backend.every_rank_writes:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as temporary:
        backend.save(Path(temporary), state)
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
