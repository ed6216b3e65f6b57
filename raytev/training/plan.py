"""Everything a training worker needs, decided once on the driver (no Ray): the config, the resolved model, the
prepared data and the step arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

from raytev.config.stages import TrainConfig
from raytev.data.cache import TokenTable
from raytev.data.model_folder import ResolvedModel
from raytev.errors import RaytevError
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
        """Queries per optimizer step across all workers."""
        return self.training.per_device_train_batch_size * max(self.num_workers, 1)


def step_counts(num_queries: int, training) -> tuple[int, int]:
    """(steps per epoch, total steps): workers get equal shares of the queries; partial batches are dropped."""
    workers = max(training.num_workers, 1)
    steps_per_epoch = num_queries // workers // training.per_device_train_batch_size
    if steps_per_epoch == 0:
        raise RaytevError(
            f"{num_queries} training queries cannot fill one step of {training.per_device_train_batch_size} "
            f"queries on each of {workers} workers: lower --per_device_train_batch_size or --num_workers.")
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
                          f"run has {plan.global_batch_size}: keep --per_device_train_batch_size x --num_workers the "
                          "same to resume, or use --overwrite_output_dir to start over.")
