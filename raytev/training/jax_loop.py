"""Ray Train's per-worker function for --backend jax (JaxTrainer): the torch loop's data, steps, log and
checkpoints, with raytev.tevax's step over one mesh of every device of every worker.

Every worker feeds its shard of the groups (the same Ray Data stream as the torch path); its rows become its part
of the global batch on the mesh. Parameters and optimizer state are replicated, so rank 0 writes checkpoints alone.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray.train

from raytev.data.model_folder import read_saved_settings
from raytev.training.loop import TrainingLog, checkpoint_due, remaining_batches, resume_directory, save_checkpoint
from raytev.training.plan import TrainingPlan, check_resumable
from raytev.training.state import MODEL_DIR, STATE_FILE, TrainerState, read_trainer_state

JAX_STATE_FILE = "jax_state.npz"  # optimizer state, step and dropout key: the train state's leaves beside the model


def jax_train_loop_per_worker(config: dict) -> None:
    """Train `config['plan']` with JAX on this worker; every rank runs this, rank 0 writes checkpoints and the log."""
    plan: TrainingPlan = config["plan"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    cluster = plan.config.cluster
    start_jax(plan.config.backend.jax_cpu_devices, cluster.use_tpu or cluster.use_gpu, rank, context.get_world_size())
    import jax

    from raytev.tevax.steps import data_mesh, make_train_step, place_batch, replicate
    from raytev.tevax.train_state import learning_rate_schedule

    training = plan.training
    mesh = data_mesh()
    retriever, train_state, state, optimizer = set_up(plan)  # from the checkpoint when resuming
    train_state = replicate(train_state, mesh)
    step = make_train_step(retriever, optimizer, mesh, training)
    schedule = learning_rate_schedule(training.learning_rate, training.warmup_ratio, plan.total_steps)
    pad_token_id = plan.queries.manifest["settings"]["pad_token_id"]
    shard = ray.train.get_dataset_shard("train")
    log = TrainingLog(plan, rank)

    for batch in remaining_batches(plan, state, shard):
        batch = bucketed({name: tensor.numpy() for name, tensor in batch.items()}, plan, pad_token_id)
        train_state, loss = step(train_state, place_batch(batch, mesh))
        if log.window_ends(state):
            # A window's time ends when the step has finished (JAX dispatches asynchronously, and one device's
            # loss can be ready before the others finish the step).
            jax.block_until_ready(train_state)
        log.add(state, loss.addressable_data(0), float(schedule(state.step)))
        if checkpoint_due(plan, state):
            save_checkpoint(plan, state, rank, lambda directory, now=train_state: write_checkpoint(
                directory, state, retriever, now))


def start_jax(cpu_devices: int, accelerated: bool, rank: int, world_size: int) -> None:
    """Devices for this process: `cpu_devices` CPU devices (if JAX has not started already; compiled programs
    cached on disk), and on CPUs with several workers, jax.distributed over them (JaxTrainer initializes it
    itself only for TPUs and GPUs)."""
    import jax

    from raytev.tevax.inference import set_up_jax

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
    import jax

    from raytev.tevax.steps import bucket_width, pad_width

    longest = np.array([batch["query_attention_mask"].shape[1], batch["passage_attention_mask"].shape[1]])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        longest = np.asarray(multihost_utils.process_allgather(longest)).reshape(-1, 2).max(axis=0)
    widths = {"query": bucket_width(int(longest[0]), plan.model.query_max_len, plan.training.pad_to_multiple_of),
              "passage": bucket_width(int(longest[1]), plan.model.passage_max_len, plan.training.pad_to_multiple_of)}
    return pad_width(batch, widths, pad_token_id)


def set_up(plan: TrainingPlan):
    """(retriever, train state, trainer state, optimizer): fresh, or restored from the checkpoint to resume."""
    import jax

    from raytev.tevax.retriever import load_resolved, load_retriever
    from raytev.tevax.train_state import RetrieverTrainState, build_optimizer

    optimizer = build_optimizer(plan.training, plan.total_steps)
    dtype = plan.config.precision.dtype_name
    with resume_directory(plan) as resume_dir:
        if resume_dir is None:
            retriever, params = load_resolved(plan.model, dtype)
            train_state = RetrieverTrainState.create(params, optimizer, plan.config.data.seed)
            state = TrainerState(data_fingerprint=plan.queries.manifest["fingerprint"],
                                 global_batch_size=plan.global_batch_size)
            return retriever, train_state, state, optimizer
        model_dir = str(Path(resume_dir) / MODEL_DIR)
        retriever, params = load_retriever(model_dir, read_saved_settings(model_dir), dtype)
        template = RetrieverTrainState.create(params, optimizer, plan.config.data.seed)
        saved = np.load(Path(resume_dir) / JAX_STATE_FILE)
        rest = jax.tree.unflatten(jax.tree.structure((template.opt_state, template.step, template.dropout_key)),
                                  [saved[f"leaf_{index}"] for index in range(len(saved.files))])
        train_state = template.replace(opt_state=rest[0], step=rest[1], dropout_key=rest[2])
        state = read_trainer_state(Path(resume_dir))
        check_resumable(state, plan, str(resume_dir))
        state.log.append({"event": "resumed", "from_step": state.step})
    return retriever, train_state, state, optimizer


def write_checkpoint(directory: Path, state: TrainerState, retriever, train_state) -> None:
    """The model (a raytev folder), the rest of the train state, then the trainer state (the completion mark)."""
    import jax

    from raytev.tevax.steps import host_copy

    host = host_copy(train_state)
    retriever.save_pretrained(directory / MODEL_DIR, host.params)
    leaves = jax.tree.leaves((host.opt_state, host.step, host.dropout_key))
    np.savez(directory / JAX_STATE_FILE, **{f"leaf_{index}": leaf for index, leaf in enumerate(leaves)})
    (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")

