"""The JAX backend of the worker loop (JaxTrainer): raytev.tevax's step over one mesh of every device of every
worker, optax's AdamW, checkpoints in the same folders as torch's. No torch here (tests/test_jax_backend.py).

Every worker feeds its shard of the groups (the same Ray Data stream as the torch path); its rows become its part
of the global batch on the mesh. Parameters and optimizer state are replicated, so rank 0 writes checkpoints alone.
"""

from __future__ import annotations

import socket
from pathlib import Path

import jax
import numpy as np
import ray.train

from raytev.tevax.inference import set_up_jax
from raytev.tevax.retriever import load_retriever
from raytev.tevax.steps import bucket_width, data_mesh, host_copy, make_train_step, pad_width, place_batch, replicate
from raytev.tevax.train_state import RetrieverTrainState, build_optimizer, learning_rate_schedule
from raytev.training.plan import TrainingPlan
from raytev.training.state import MODEL_DIR, TrainerState, write_trainer_state

JAX_STATE_FILE = "jax_state.npz"  # optimizer state, step and dropout key: the train state's leaves beside the model


class JaxBackend:
    """One worker's JAX training: set up (fresh or from a checkpoint), step, save."""

    every_rank_writes = False  # replicated state: rank 0's copy is the whole of it

    def __init__(self, plan: TrainingPlan, rank: int):
        self.plan, self.rank = plan, rank
        cluster = plan.config.cluster
        start_jax(plan.config.backend.jax_cpu_devices, cluster.use_tpu or cluster.use_gpu, rank,
                  ray.train.get_context().get_world_size())
        self.mesh = data_mesh()
        self.pad_token_id = plan.queries.manifest["settings"]["pad_token_id"]
        training = plan.training
        self.schedule = learning_rate_schedule(training.learning_rate, training.warmup_ratio, plan.total_steps)

    def set_up(self, resume_dir: Path | None) -> None:
        """The retriever and its train state (the checkpoint's when resuming), replicated over the mesh."""
        plan = self.plan
        optimizer = build_optimizer(plan.training, plan.total_steps)
        model = plan.model if resume_dir is None else plan.model.saved_in(resume_dir / MODEL_DIR, adapter=False)
        self.retriever, params = load_retriever(model, plan.config.precision.dtype_name)
        train_state = RetrieverTrainState.create(params, optimizer, plan.config.data.seed)
        if resume_dir is not None:
            saved = np.load(resume_dir / JAX_STATE_FILE)
            rest = jax.tree.unflatten(jax.tree.structure((train_state.opt_state, train_state.step,
                                                          train_state.dropout_key)),
                                      [saved[f"leaf_{index}"] for index in range(len(saved.files))])
            train_state = train_state.replace(opt_state=rest[0], step=rest[1], dropout_key=rest[2])
        self.steps_done = int(train_state.step)
        self.train_state = replicate(train_state, self.mesh)
        self.train_step = make_train_step(self.retriever, optimizer, self.mesh, plan.training)

    def step(self, batch: dict[str, np.ndarray]) -> tuple[jax.Array, float]:
        """One optimizer step over the mesh; (this process's copy of the loss, the next step's learning rate)."""
        batch = bucketed(batch, self.plan, self.pad_token_id)
        self.train_state, loss = self.train_step(self.train_state, place_batch(batch, self.mesh))
        self.steps_done += 1
        return loss.addressable_data(0), float(self.schedule(self.steps_done))

    def wait(self) -> None:
        """Wait for the whole step (one device's loss can be ready before the others finish it)."""
        jax.block_until_ready(self.train_state)

    def save(self, directory: Path, state: TrainerState) -> None:
        """The model (a raytev folder), the rest of the train state, then the trainer state (the completion mark)."""
        host = host_copy(self.train_state)
        self.retriever.save_pretrained(directory / MODEL_DIR, host.params)
        leaves = jax.tree.leaves((host.opt_state, host.step, host.dropout_key))
        np.savez(directory / JAX_STATE_FILE, **{f"leaf_{index}": leaf for index, leaf in enumerate(leaves)})
        write_trainer_state(directory, state)


def start_jax(cpu_devices: int, accelerated: bool, rank: int, world_size: int) -> None:
    """Devices for this process: `cpu_devices` CPU devices (if JAX has not started already; compiled programs
    cached on disk), and on CPUs with several workers, jax.distributed over them (JaxTrainer initializes it
    itself only for TPUs and GPUs)."""
    set_up_jax(cpu_devices)
    if world_size > 1 and not accelerated and not jax.distributed.is_initialized():
        from ray.train.collective import broadcast_from_rank_zero

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        address = broadcast_from_rank_zero(coordinator_address() if rank == 0 else None)
        jax.distributed.initialize(address, num_processes=world_size, process_id=rank)


def coordinator_address() -> str:
    """host:port of a free port on this node, for jax.distributed's coordinator."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return f"{ray.util.get_node_ip_address()}:{port}"


def bucketed(batch: dict[str, np.ndarray], plan: TrainingPlan, pad_token_id: int) -> dict[str, np.ndarray]:
    """The batch padded to bucket widths, agreed by all processes (their rows form one array on the mesh)."""
    longest = np.array([batch["query_attention_mask"].shape[1], batch["passage_attention_mask"].shape[1]])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        longest = np.asarray(multihost_utils.process_allgather(longest)).reshape(-1, 2).max(axis=0)
    widths = {"query": bucket_width(int(longest[0]), plan.model.query_max_len, plan.training.pad_to_multiple_of),
              "passage": bucket_width(int(longest[1]), plan.model.passage_max_len, plan.training.pad_to_multiple_of)}
    return pad_width(batch, widths, pad_token_id)
