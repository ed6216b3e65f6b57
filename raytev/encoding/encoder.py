"""`raytev encode`: token tables through a Ray Data actor pool into resumable embedding shards."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytev.config.stages import EncodeConfig
from raytev.data.cache import TokenTable
from raytev.data.embeddings import EmbeddingsManifest, EmbeddingsWriter, load_embeddings, write_tevatron_pickle
from raytev.data.model_folder import ResolvedModel, resolve_model
from raytev.data.prepare import prepare_data
from raytev.errors import RaytevError
from raytev.progress import progress_bar

# Rows an actor receives per call; it sorts them by length and cuts them into per_device_eval_batch_size batches.
ROWS_PER_ACTOR_CALL = 1024


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
    """The row ranges of this job's output shards: its contiguous part of the input, cut every rows_per_shard."""
    low, high = rows * shard_index // number_of_shards, rows * (shard_index + 1) // number_of_shards
    return [(start, min(start + rows_per_shard, high)) for start in range(low, high, rows_per_shard)]


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
    encoded = run(table, todo, writer, model, config, data.encode_is_query) if todo else 0
    if config.output_format == "tevatron-pickle":
        ids, vectors = load_embeddings(str(shards_dir))
        write_tevatron_pickle(output, vectors, ids.tolist())
    return EncodeResult(output, encoded, len(ranges) - len(todo), len(ranges), dim, time.perf_counter() - started)


def run_actor_pool(table: TokenTable, todo: dict[int, tuple[int, int]], writer: EmbeddingsWriter,
                   model: ResolvedModel, config: EncodeConfig, is_query: bool) -> int:
    """Encode the rows of the unfinished shards on an actor pool; write each shard as soon as it is complete."""
    import ray
    from ray.data.expressions import col

    from raytev.cluster import connect, node_cpus
    from raytev.encoding.batch_encoder import BatchEncoder

    actors, cluster = config.actors, config.cluster
    connect(cluster.address, cluster.verbose)
    id_column = "query_id" if is_query else "docid"
    wanted = None
    for low, high in todo.values():
        clause = (col("row") >= low) & (col("row") < high)
        wanted = clause if wanted is None else wanted | clause
    dataset = ray.data.read_parquet(table.files, columns=["row", id_column, "input_ids"]).filter(expr=wanted)
    # Small inputs arrive as one block, which one actor would take alone: cut it so every actor gets work.
    total = sum(high - low for low, high in todo.values())
    dataset = dataset.repartition(max(actors.num_actors * 4, math.ceil(total / ROWS_PER_ACTOR_CALL)))
    resources = {"num_gpus": 1} if cluster.use_gpu else {"num_cpus": actors.cpus_per_actor}
    if cluster.use_tpu:
        resources = {"resources": {"TPU": cluster.tpu_chips_per_worker}}
    dataset = dataset.map_batches(
        BatchEncoder,
        fn_constructor_kwargs=dict(
            model=model, is_query=is_query, id_column=id_column,
            batch_size=config.inference.per_device_eval_batch_size,
            pad_token_id=table.manifest["settings"]["pad_token_id"], device="cuda" if cluster.use_gpu else "cpu",
            torch_threads=None if cluster.use_gpu else max(1, node_cpus() // actors.num_actors),
            backend=config.backend.backend, jax_cpu_devices=config.backend.jax_cpu_devices),
        compute=ray.data.ActorPoolStrategy(size=actors.num_actors),
        batch_size=ROWS_PER_ACTOR_CALL, batch_format="numpy", **resources)
    # In input order, shards complete one after another and only one is buffered at a time.
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False  # the encoding bar below says the same, once

    buffers: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {index: [] for index in todo}
    filled = dict.fromkeys(todo, 0)
    starts = sorted((low, index) for index, (low, _) in todo.items())
    with progress_bar(total=total, desc=f"Encoding {'queries' if is_query else 'passages'}", unit=" texts") as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = batch["row"]
            owners = np.asarray([starts[i][1] for i in np.searchsorted([s for s, _ in starts], rows, "right") - 1])
            for index in np.unique(owners):
                mask = owners == index
                buffers[index].append((rows[mask], batch["id"][mask], np.asarray(batch["embedding"])[mask]))
                filled[index] += int(mask.sum())
                low, high = todo[index]
                if filled[index] == high - low:
                    write_buffered_shard(writer, index, buffers.pop(index))
            bar.update(len(rows))
    unfinished = sorted(buffers)
    if unfinished:
        raise RuntimeError(f"encoding ended with shards {unfinished} incomplete")
    return total


def run_in_process(table: TokenTable, todo: dict[int, tuple[int, int]], writer: EmbeddingsWriter,
                   model: ResolvedModel, config: EncodeConfig, is_query: bool) -> int:
    """--num_actors 0: encode the unfinished shards in this process, one shard at a time (no Ray; for debugging
    and inputs too small to be worth starting actors)."""
    import pyarrow.compute as pc

    from raytev.encoding.batch_encoder import BatchEncoder

    id_column = "query_id" if is_query else "docid"
    encoder = BatchEncoder(model, is_query, id_column, config.inference.per_device_eval_batch_size,
                           table.manifest["settings"]["pad_token_id"], "cuda" if config.cluster.use_gpu else "cpu",
                           backend=config.backend.backend, jax_cpu_devices=config.backend.jax_cpu_devices)
    rows = table.read(["row", id_column, "input_ids"])
    total = sum(high - low for low, high in todo.values())
    with progress_bar(total=total, desc=f"Encoding {'queries' if is_query else 'passages'}", unit=" texts") as bar:
        for index, (low, high) in sorted(todo.items()):
            part = rows.filter(pc.and_(pc.greater_equal(rows["row"], low), pc.less(rows["row"], high)))
            encoded = encoder({name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names})
            writer.write_shard(index, [str(docid) for docid in encoded["id"]], encoded["embedding"])
            bar.update(part.num_rows)
    return total


def write_buffered_shard(writer: EmbeddingsWriter, index: int, parts: list) -> None:
    """Write one shard from its buffered parts, in row order."""
    rows = np.concatenate([part[0] for part in parts])
    order = np.argsort(rows, kind="stable")
    ids = np.concatenate([part[1] for part in parts])[order]
    vectors = np.concatenate([part[2] for part in parts])[order]
    writer.write_shard(index, [str(docid) for docid in ids], vectors)
