"""`raytev train` on the driver: prepare the data, plan the steps, run TorchTrainer (or JaxTrainer for --backend
jax), export the model (a retriever, or with --task rerank a cross-encoder)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from raytev.config.fields import to_flags
from raytev.config.stages import TrainConfig
from raytev.data.cache import default_cache_dir
from raytev.data.pairs import PairTemplate
from raytev.data.prepare import prepare_data
from raytev.errors import RaytevError, user_error_of
from raytev.model.files import ADAPTER_CONFIG_FILE, PASSAGE_SUBFOLDER, QUERY_SUBFOLDER, RERANKER_FILE, SETTINGS_FILE
from raytev.model.resolved import ResolvedModel, resolve_model, resolve_reranker
from raytev.model.sentence_transformers import WRITTEN_ENTRIES, write_sentence_transformers_files
from raytev.model.settings import DenseModelSettings, RerankerSettings
from raytev.staging import disk_full_as_error, publish_contents
from raytev.training.plan import TrainingPlan, check_resumable, step_counts, torch_threads_for, training_warnings
from raytev.training.state import MODEL_DIR, latest_checkpoint, read_trainer_state, remove_incomplete_checkpoints

LOG_FILE = "train_log.jsonl"
ARGS_FILE = "training_args.json"
DEFAULT_RUN_NAME = "checkpoints"
# What an export writes at the top of output_dir; stale ones from an earlier export of another shape go.
MERGED_DIR = "merged"  # --save_merged_model's folder
MODEL_ENTRIES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 QUERY_SUBFOLDER, PASSAGE_SUBFOLDER, ADAPTER_CONFIG_FILE, "adapter_model.safetensors", MERGED_DIR,
                 *WRITTEN_ENTRIES)
MARKERS = (SETTINGS_FILE, RERANKER_FILE)  # what an export writes last: a retriever's, a reranker's


@dataclass
class TrainResult:
    """What a training run produced."""

    output_dir: Path
    steps: int
    epochs: float
    seconds: float
    log: list[dict]
    resumed_from: int | None
    hub_url: str | None = None  # where --push_to_hub put the model

    def summary(self) -> str:
        """What `raytev train` prints: steps, time, the loss from first to last log entry, where the model is."""
        losses = [entry["loss"] for entry in self.log if "loss" in entry]
        resumed = f", resumed from step {self.resumed_from}" if self.resumed_from is not None else ""
        loss = f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
        pushed = f" and pushed to {self.hub_url}" if self.hub_url else ""
        return (f"trained {self.steps} steps ({self.epochs:.2f} epochs) in {self.seconds:.1f} s{resumed}{loss}; "
                f"model saved to {self.output_dir}{pushed}")


def checkpoint_location(output_dir: Path, storage_path: str | None) -> tuple[str, str]:
    """(storage path, run name) of a run's checkpoints: output_dir/checkpoints unless a storage path is given."""
    if storage_path is None:
        return str(output_dir), DEFAULT_RUN_NAME
    # One storage path serves many runs: name each after its output folder.
    return storage_path, f"{output_dir.name}-{hashlib.sha256(str(output_dir).encode()).hexdigest()[:8]}"


def is_local(storage_path: str) -> bool:
    """Whether a storage path is a folder on this machine rather than a URI (s3://, gs://, ...)."""
    return "://" not in storage_path or storage_path.startswith("file://")


def train(config: TrainConfig) -> TrainResult:
    """Fine-tune a dense retriever (or a cross-encoder, --task rerank) on Ray Train and save it to
    `config.output_dir`."""
    import ray.train

    from raytev.cluster import connect, cpus_per_worker
    from raytev.data.feed import ordered_ingest, training_dataset
    from raytev.training.progress import TrainingProgress
    from raytev.training.worker import train_loop_per_worker

    started = time.perf_counter()
    training, cluster = config.training, config.cluster
    output_dir = Path(config.output_dir).expanduser().resolve()
    rerank = config.task == "rerank"
    if rerank:  # queries and passages cached as bare segments, joined into pairs as batches are made
        model = resolve_reranker(config.model, config.text, config.precision, config.rerank.rerank_max_len)
    else:
        model = resolve_model(config.model, config.text, config.precision)
    prepared = prepare_data(config.data, model)
    queries = prepared.queries
    if config.distill_from:  # the groups with the teacher's score of each passage
        from raytev.reranking.teacher import distillation_table

        cache_dir = Path(config.data.dataset_cache_dir).expanduser() if config.data.dataset_cache_dir else \
            default_cache_dir()
        queries = distillation_table(queries, config, cache_dir)
    pairs = PairTemplate.from_tokenizer(model.load_tokenizer(), model.passage_max_len, model.append_eos_token,
                                        prepared.queries.manifest["settings"]["pad_token_id"]) if rerank else None

    steps_per_epoch, total_steps = step_counts(queries.rows, training)
    storage_path, run_name = checkpoint_location(output_dir, training.storage_path)
    run_dir = Path(storage_path) / run_name if is_local(storage_path) else None
    if training.num_workers == 0 and run_dir is None:
        raise RaytevError("--num_workers 0 keeps checkpoints itself and needs a local --storage_path.")
    if training.overwrite_output_dir:  # forget an earlier run here: its checkpoints and its exported model's marker
        delete_checkpoints(run_dir, storage_path, run_name)
        for marker in MARKERS:
            (output_dir / marker).unlink(missing_ok=True)
    resume_from = latest_checkpoint(run_dir) if run_dir else None
    plan = TrainingPlan(config, model, queries, steps_per_epoch, total_steps, str(run_dir) if run_dir else "",
                        torch_threads_for(training.cpus_per_worker), str(resume_from) if resume_from else None,
                        pairs=pairs)
    if resume_from is not None:
        previous = read_trainer_state(resume_from)
        check_resumable(previous, plan, str(resume_from))
        if previous.step >= total_steps:
            raise RaytevError(f"{output_dir} holds a run already trained to step {previous.step} (this one asks for "
                              f"{total_steps}): nothing to do. Use --overwrite_output_dir to train again from the "
                              "start, or ask for more steps or epochs to continue it.")

    for warning in training_warnings(config):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    connect(cluster.address, cluster.verbose)
    dataset = training_dataset(queries, training.train_group_size)
    # Each epoch re-reads the groups; the training bar already shows progress, Ray Data's bars would repeat it.
    dataset.context.enable_progress_bars = False
    cpus = cpus_per_worker(training.num_workers, cluster.use_gpu or cluster.use_tpu, training.cpus_per_worker)
    with cleaned_up_on_failure(output_dir, run_dir):
        with TrainingProgress(total_steps, previous.step if resume_from else 0) as progress, \
                disk_full_as_error(run_dir or storage_path):
            trainer = backend_trainer(config.backend.backend)(
                train_loop_per_worker,
                train_loop_config={"plan": dataclasses.replace(plan, progress=progress.queue)},
                scaling_config=scaling_config(training.num_workers, cluster, cpus),
                run_config=ray.train.RunConfig(
                    name=run_name, storage_path=storage_path,
                    failure_config=ray.train.FailureConfig(max_failures=training.max_failures),
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=training.save_total_limit)),
                datasets={"train": dataset}, dataset_config=ordered_ingest(),
            )
            try:
                result = trainer.fit()
            except Exception as error:  # a worker's RaytevError (bad data or settings) or full disk, not Ray's wrapper
                if user_error_of(error) is not None:
                    raise user_error_of(error) from None
                raise
        if result.checkpoint is None:
            raise RaytevError(f"training ended without a checkpoint ({result.error or 'no error reported'})")
        with disk_full_as_error(output_dir):
            with result.checkpoint.as_directory() as final:
                state = read_trainer_state(Path(final))
                # The export records the lengths and EOS it was trained with, so that it is used with them again.
                settings = RerankerSettings(model.passage_max_len, model.settings.query_prefix,
                                            model.settings.passage_prefix, model.append_eos_token) if rerank else \
                    dataclasses.replace(model.settings, query_max_len=model.query_max_len,
                                        passage_max_len=model.passage_max_len, append_eos_token=model.append_eos_token)
                export_model(Path(final), output_dir, model.tokenizer_dir, state.log, to_flags(config), settings)
            if config.lora.save_merged_model:
                export_merged_model(output_dir, dataclasses.replace(model, settings=settings))
    hub_url = finish_export(config, output_dir, run_dir, storage_path, run_name)
    resumes = [entry["from_step"] for entry in state.log if entry.get("event") == "resumed"]
    return TrainResult(output_dir, state.step, state.step / steps_per_epoch, time.perf_counter() - started,
                       state.log, resumes[0] if resumes else None, hub_url)


def backend_trainer(backend: str):
    """The Ray Train trainer class of a backend: TorchTrainer, or JaxTrainer with raytev.tevax (the per-worker loop
    is the same, and picks its backend from the plan)."""
    if backend == "jax":
        missing = [name for name in ("jax", "flax", "optax") if importlib.util.find_spec(name) is None]
        if missing:  # here, not in every worker
            raise RaytevError(f"--backend jax needs {', '.join(missing)}: pip install 'raytev[jax]' (on TPU VMs "
                              "also 'jax[tpu]').")
        from ray.train.v2.jax import JaxTrainer

        return JaxTrainer
    from ray.train.torch import TorchTrainer

    return TorchTrainer


def scaling_config(num_workers: int, cluster, cpus: float | None):
    """Ray Train's scaling config: CPUs per worker, or a GPU each, or a TPU host each (all its chips)."""
    import ray.train

    resources = {"CPU": cpus} if cpus is not None else {}
    if cluster.use_tpu:
        resources["TPU"] = cluster.tpu_chips_per_worker
        return ray.train.ScalingConfig(num_workers=num_workers, use_tpu=True, resources_per_worker=resources,
                                       topology=cluster.tpu_topology, accelerator_type=cluster.tpu_type)
    return ray.train.ScalingConfig(num_workers=num_workers, use_gpu=cluster.use_gpu,
                                   resources_per_worker=resources or None)


@contextmanager
def cleaned_up_on_failure(output_dir: Path, run_dir: Path | None) -> Iterator[None]:
    """On an error inside: remove checkpoints cut short, and output_dir itself when this run made it and left
    nothing to resume from (no empty folder under the model's name)."""
    created = not output_dir.exists()
    try:
        yield
    except BaseException:
        if run_dir is not None:
            remove_incomplete_checkpoints(run_dir)
        if created and (run_dir is None or latest_checkpoint(run_dir) is None) \
                and not any((output_dir / marker).exists() for marker in MARKERS):
            shutil.rmtree(output_dir, ignore_errors=True)
        raise


def export_model(checkpoint_dir: Path, output_dir: Path, tokenizer_dir: Path, log: list[dict],
                 arguments: dict, settings: DenseModelSettings | RerankerSettings) -> None:
    """Put the checkpoint's model, its settings (`settings`: with the training lengths), the tokenizer, the
    sentence-transformers files (tied retrievers), the log and the flags (training_args.json, which `raytev train`
    accepts back as its JSON-file form) at the top of output_dir.

    raytev_model.json (a reranker's raytev_reranker.json) moves in last, so a folder that has it holds a complete
    model.
    """
    from transformers import AutoTokenizer

    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".export-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(checkpoint_dir / MODEL_DIR, staging)
        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(staging))
        settings.save(staging)
        if isinstance(settings, DenseModelSettings):  # a reranker's folder is CrossEncoder's already
            # sentence-transformers has one length: the passages' (see write_sentence_transformers_files).
            write_sentence_transformers_files(staging, settings, settings.passage_max_len)
        (staging / LOG_FILE).write_text("".join(json.dumps(entry) + "\n" for entry in log))
        (staging / ARGS_FILE).write_text(json.dumps(arguments, indent=2) + "\n")
        for name in (*MODEL_ENTRIES, *MARKERS):
            if not (staging / name).exists() and (output_dir / name).exists():
                stale = output_dir / name
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        publish_contents(staging, output_dir,
                         last=SETTINGS_FILE if isinstance(settings, DenseModelSettings) else RERANKER_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def finish_export(config: TrainConfig, output_dir: Path, run_dir: Path | None, storage_path: str,
                  run_name: str) -> str | None:
    """What follows a successful export (and --save_merged_model): --remove_checkpoints, then --push_to_hub; the Hub
    URL or None."""
    if config.remove_checkpoints:
        delete_checkpoints(run_dir, storage_path, run_name)
    if not config.push_to_hub:
        return None
    from raytev.training.hub import push_model

    return push_model(output_dir, config.hub_model_id, config.hub_private_repo, keep_local=(f"{DEFAULT_RUN_NAME}/**",))


def export_merged_model(output_dir: Path, model: ResolvedModel) -> None:
    """The base model with the adapter exported in output_dir added into its weights, as a plain model folder
    (sentence-transformers files included) at output_dir/merged: for tools that read no adapters. Loaded in
    --torch_dtype, if given; `model` is the run's, with the settings the export recorded."""
    from transformers import AutoTokenizer

    from raytev.modeling.dense import DenseModel

    merged = DenseModel.from_resolved(model.saved_in(output_dir, adapter=True))  # merged as it loads
    merged.save_pretrained(output_dir / MERGED_DIR, tokenizer=AutoTokenizer.from_pretrained(str(output_dir)),
                           max_seq_length=model.passage_max_len)


def delete_checkpoints(run_dir: Path | None, storage_path: str, run_name: str) -> None:
    """Delete a run's checkpoints: the local run folder, or the run's folder under a remote storage path."""
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(f"{storage_path.rstrip('/')}/{run_name}")
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        filesystem.delete_dir(path)

