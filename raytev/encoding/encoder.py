"""`raytev encode`: token tables through a pool of Ray actors into resumable embedding shards."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from raytev.config.stages import EncodeConfig
from raytev.data.cache import TokenTable
from raytev.data.prepare import prepare_data
from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter, load_embeddings, write_tevatron_pickle
from raytev.errors import RaytevError
from raytev.model.resolved import ResolvedModel, resolve_model
from raytev.progress import progress_bar

# Shards are the unit actors take as well as the unit a rerun resumes from: an input smaller than PARALLEL_SHARDS full
# shards is cut into PARALLEL_SHARDS shards (of at least MIN_SHARD_ROWS rows), so that that many actors share it.
# The cut depends on the input alone, never on the actors, so a rerun with other actors resumes the same shards.
PARALLEL_SHARDS = 64
MIN_SHARD_ROWS = 1024


@dataclass
class EncodeResult:
    """What an encoding run produced."""

    output: Path
    rows: int  # vectors encoded by this run
    reused_shards: int  # shards finished by an earlier run and kept
    shards: int
    dim: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        """Vectors encoded per second of this run (preparation included)."""
        return self.rows / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        """What `raytev encode` prints."""
        reused = f", {self.reused_shards} of {self.shards} shards kept from an earlier run" \
            if self.reused_shards else ""
        return (f"encoded {self.rows:,} texts ({self.dim} dims) in {self.seconds:.1f} s "
                f"({self.rows_per_second:.1f}/s){reused} -> {self.output}")


def shard_ranges(rows: int, shard_index: int, number_of_shards: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """The row ranges of this job's output shards: its contiguous part of the input cut every rows_per_shard rows,
    or shorter (down to MIN_SHARD_ROWS) where that gives fewer than PARALLEL_SHARDS shards."""
    low, high = rows * shard_index // number_of_shards, rows * (shard_index + 1) // number_of_shards
    size = min(rows_per_shard, max(MIN_SHARD_ROWS, -(-(high - low) // PARALLEL_SHARDS)))
    return [(start, min(start + size, high)) for start in range(low, high, size)]


def encode(config: EncodeConfig, model: ResolvedModel | None = None) -> EncodeResult:
    """Encode a dataset's passages (or, with --encode_is_query, its queries) into embedding shards.

    `model`: the model a calling stage resolved already (else resolved here from the config).
    """
    started = time.perf_counter()
    data = config.data
    model = model or resolve_model(config.model, config.text, config.precision)
    dim = model.hidden_size()
    prepared = prepare_data(data, model)
    table = prepared.queries if data.encode_is_query else prepared.corpus
    kind = "queries" if data.encode_is_query else "passages"
    if table is None:
        other = "passages (drop --encode_is_query)" if data.encode_is_query else "queries (add --encode_is_query)"
        raise RaytevError(f"{prepared.source.label} holds no {kind} to encode; it holds {other}.")

    output = Path(config.encode_output_path).expanduser()
    shards_dir = output.with_name(output.name + ".shards") if config.output_format == "tevatron-pickle" else output
    ranges = shard_ranges(table.rows, config.dataset_shard_index, config.dataset_number_of_shards,
                          config.rows_per_shard)
    manifest = EmbeddingsManifest(
        model=model.path, dim=dim, kind=kind, pooling=model.settings.pooling, normalize=model.settings.normalize,
        precision=model.dtype or "float32",
        source=f"{table.manifest['fingerprint']}[{ranges[0][0] if ranges else 0}:{ranges[-1][1] if ranges else 0}]",
        planned_shards=len(ranges))
    writer = EmbeddingsWriter(shards_dir, manifest, overwrite=config.overwrite_output,
                              replace_other_runs=config.replace_other_runs)
    todo = {index: ranges[index] for index in range(len(ranges)) if index not in writer.finished()}
    run = run_actor_pool if config.actors.num_actors > 0 else run_in_process
    try:
        encoded = run(table, todo, writer, model, config, data.encode_is_query) if todo else 0
    finally:
        writer.remove_unfinished_files()  # the writers are gone, done or killed: no temporary shard is finished
    if config.output_format == "tevatron-pickle":
        ids, vectors = load_embeddings(str(shards_dir))
        write_tevatron_pickle(output, vectors, ids.tolist())
    return EncodeResult(output, encoded, len(ranges) - len(todo), len(ranges), dim, time.perf_counter() - started)


def run_actor_pool(table: TokenTable, todo: dict[int, tuple[int, int]], writer: EmbeddingsWriter,
                   model: ResolvedModel, config: EncodeConfig, is_query: bool) -> int:
    """Encode the unfinished shards on a pool of actors, each writing the shards it encodes; record them here."""
    import ray
    from ray.util import ActorPool

    from raytev.cluster import connect, node_cpus
    from raytev.encoding.shard_encoder import ShardEncoder

    actors, cluster = config.actors, config.cluster
    # A Ray started here for encoding needs no dashboard: its processes took ~13 s of CPU per run on 2 cores.
    connect(cluster.address, cluster.verbose, dashboard=False)
    pool_size = min(actors.num_actors, len(todo))  # an actor without a shard would only load the model
    resources = {"num_gpus": 1} if cluster.use_gpu else {"num_cpus": actors.cpus_per_actor}
    if cluster.use_tpu:
        resources = {"resources": {"TPU": cluster.tpu_chips_per_worker}}
    options = shard_encoder_options(table, writer, model, config, is_query,
                                    torch_threads=None if cluster.use_gpu else max(1, node_cpus() // pool_size))
    # An actor that dies (a lost node, the OOM killer) is restarted and its shard encoded again, under a new
    # temporary name: a shard is complete or absent whichever copy finishes.
    remote = ray.remote(max_restarts=-1, max_task_retries=-1, **resources)(ShardEncoder)
    encoders = [remote.remote(**options) for _ in range(pool_size)]
    try:
        # Each free actor takes the next shard; only (index, rows) comes back to this process, never a vector.
        # (The inputs are three numbers per shard: Ray Data's executor and helper actors cost more than they bring.)
        written = ActorPool(encoders).map_unordered(lambda actor, shard: actor.encode_shard.remote(*shard),
                                                    [(index, low, high) for index, (low, high) in todo.items()])
        return record_shards(written, todo, writer, is_query)
    finally:
        for encoder in encoders:  # their CPUs or GPUs free now, also after a failure (whose traceback holds them)
            ray.kill(encoder)


def run_in_process(table: TokenTable, todo: dict[int, tuple[int, int]], writer: EmbeddingsWriter,
                   model: ResolvedModel, config: EncodeConfig, is_query: bool) -> int:
    """--num_actors 0: the actors' ShardEncoder in this process, one shard after another (no Ray; for debugging
    and inputs too small to be worth starting actors)."""
    from raytev.encoding.shard_encoder import ShardEncoder

    encoder = ShardEncoder(**shard_encoder_options(table, writer, model, config, is_query))
    written = (encoder.encode_shard(index, low, high) for index, (low, high) in sorted(todo.items()))
    return record_shards(written, todo, writer, is_query)


def shard_encoder_options(table: TokenTable, writer: EmbeddingsWriter, model: ResolvedModel, config: EncodeConfig,
                          is_query: bool, torch_threads: int | None = None) -> dict:
    """ShardEncoder's constructor arguments; paths absolute, as actors may run in another working directory."""
    return dict(table_files=[str(Path(file).resolve()) for file in table.files],
                output=str(writer.directory.resolve()), dim=writer.manifest.dim,
                model=model, is_query=is_query, id_column="query_id" if is_query else "docid",
                batch_size=config.inference.per_device_eval_batch_size,
                pad_token_id=table.manifest["settings"]["pad_token_id"],
                device="cuda" if config.cluster.use_gpu else "cpu", torch_threads=torch_threads,
                backend=config.backend.backend, jax_cpu_devices=config.backend.jax_cpu_devices)


def record_shards(written: Iterable[tuple[int, int]], todo: dict[int, tuple[int, int]], writer: EmbeddingsWriter,
                  is_query: bool) -> int:
    """Record each (shard index, rows) in the manifest as it is reported written, in any order; return the rows."""
    total = sum(high - low for low, high in todo.values())
    with progress_bar(total=total, desc=f"Encoding {'queries' if is_query else 'passages'}", unit=" texts") as bar:
        for index, rows in written:  # (each shard's rows were checked against its range where it was read)
            writer.record_shard(index, rows)
            bar.update(rows)
    unfinished = sorted(set(todo) - writer.finished())
    if unfinished:
        raise RuntimeError(f"encoding ended with shards {unfinished} not written")
    return total
