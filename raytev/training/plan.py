"""Everything a training worker needs, decided once on the driver (no Ray): the config, the resolved model, the
prepared data and the step arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

from raytev.config.stages import TrainConfig
from raytev.data.cache import TokenTable
from raytev.data.pairs import PairTemplate
from raytev.errors import RaytevError
from raytev.model.resolved import ResolvedModel
from raytev.training.state import TrainerState


@dataclass(frozen=True)
class TrainingPlan:
    """The config, the model and prepared data, and the step arithmetic of one training run."""

    config: TrainConfig
    model: ResolvedModel  # what the run starts from (a resumed run loads the checkpoint's weights instead)
    queries: TokenTable  # the prepared training groups
    steps_per_epoch: int
    total_steps: int
    run_dir: str  # where checkpoints live: <storage_path>/<run name>
    torch_threads: int | None = None  # None: the node's cores shared among its workers
    resume_from: str | None = None  # a checkpoint found by the driver; Ray's own restore takes precedence
    progress: object | None = None  # a ray.util.queue.Queue the driver's progress bar reads (None: no bar)
    pairs: PairTemplate | None = None  # --task rerank: how the cached segments join into the cross-encoder's pairs

    @property
    def training(self):
        """The training section of the config."""
        return self.config.training

    @property
    def num_workers(self) -> int:
        """Training workers (0: the loop runs in the driver's process)."""
        return self.config.training.num_workers

    @property
    def global_batch_size(self) -> int:
        """Queries per optimizer step across all workers (micro-batches of gradient accumulation included)."""
        return self.training.queries_per_worker_step * max(self.num_workers, 1)


def step_counts(num_queries: int, training) -> tuple[int, int]:
    """(steps per epoch, total steps): workers get equal shares of the queries; partial batches are dropped."""
    workers = max(training.num_workers, 1)
    steps_per_epoch = num_queries // workers // training.queries_per_worker_step
    if steps_per_epoch == 0:
        raise RaytevError(
            f"{num_queries} training queries cannot fill one step of {training.queries_per_worker_step} "
            f"queries on each of {workers} workers: lower --per_device_train_batch_size, "
            "--gradient_accumulation_steps or --num_workers.")
    total = training.max_steps if training.max_steps > 0 else training.num_train_epochs * steps_per_epoch
    return steps_per_epoch, total


def torch_threads_for(cpus_per_worker: float | None) -> int | None:
    """Intra-op threads for an explicit --cpus_per_worker (None: decided on each node by its core count)."""
    return None if cpus_per_worker is None else max(1, round(cpus_per_worker))


def check_resumable(state: TrainerState, plan: TrainingPlan, checkpoint: str) -> None:
    """Refuse to continue a checkpoint of other data, or with another global batch (steps would not line up)."""
    if state.data_fingerprint != plan.queries.manifest["fingerprint"]:
        raise RaytevError(f"{checkpoint} was trained on other data than this run's; use another --output_dir, "
                          "or --overwrite_output_dir to start over.")
    if state.global_batch_size != plan.global_batch_size:
        raise RaytevError(f"{checkpoint} was trained with a global batch of {state.global_batch_size} queries, this "
                          f"run has {plan.global_batch_size}: keep --per_device_train_batch_size x --num_workers x "
                          "--gradient_accumulation_steps the same to resume (with --fsdp, any worker count that "
                          "keeps it), or use --overwrite_output_dir to start over.")


def training_warnings(config) -> list[str]:
    """What a run's settings do that users may not expect (printed, not refused)."""
    training, warnings = config.training, []
    if training.gradient_accumulation_steps > 1:
        pool = "each GradCache micro-batch" if training.grad_cache else "each micro-batch"
        warnings.append(
            f"--gradient_accumulation_steps {training.gradient_accumulation_steps}: {pool} scores its queries "
            "against its own passages only, so every query sees fewer in-batch negatives than one batch of the "
            "same size would give. --grad_cache alone gives the whole batch's negatives in the same memory.")
    return warnings
