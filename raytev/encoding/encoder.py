"""`raytev encode`: token tables through a Ray Data actor pool into resumable embedding shards."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytev.args import (DataArguments, EncodeArguments, EncoderArguments, ModelArguments, PrecisionArguments,
                         RayArguments)
from raytev.bundled import resolve_model_path
from raytev.data.cache import TokenTable
from raytev.data.embeddings import (EmbeddingsManifest, EmbeddingsWriter, load_embeddings,
                                    write_tevatron_pickle)
from raytev.data.prepare import prepare_data
from raytev.errors import RaytevError
from raytev.modeling.dense import describe_model
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


def model_options(model: ModelArguments) -> dict:
    """The DenseModel settings the user fixed (None: the model's own)."""
    return {"pooling": model.pooling, "normalize": model.normalize, "untied": model.untie_encoder,
            "cache_dir": model.cache_dir}


def shard_ranges(rows: int, shard_index: int, number_of_shards: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """The row ranges of this job's output shards: its contiguous part of the input, cut every rows_per_shard."""
    low, high = rows * shard_index // number_of_shards, rows * (shard_index + 1) // number_of_shards
    return [(start, min(start + rows_per_shard, high)) for start in range(low, high, rows_per_shard)]


def encode(data: DataArguments, model: ModelArguments, options: EncodeArguments, encoder: EncoderArguments,
           precision: PrecisionArguments, cluster: RayArguments) -> EncodeResult:
    """Encode a dataset's passages (or, with --encode_is_query, its queries) into embedding shards."""
    started = time.perf_counter()
    if not options.encode_output_path:
        raise RaytevError("pass --encode_output_path: where the embeddings go.")
    if not model.model_name_or_path:
        raise RaytevError("pass --model_name_or_path: the model that encodes.")
    model_source = resolve_model_path(model.model_name_or_path)
    settings, dim = describe_model(model_source, **model_options(model))
    prepared = prepare_data(data, dataclasses.replace(model, model_name_or_path=model_source))
    table = prepared.queries if data.encode_is_query else prepared.corpus
    kind = "queries" if data.encode_is_query else "passages"
    if table is None:
        other = "passages (drop --encode_is_query)" if data.encode_is_query else "queries (add --encode_is_query)"
        raise RaytevError(f"{prepared.source.label} holds no {kind} to encode; it holds {other}.")

    output = Path(options.encode_output_path).expanduser()
    shards_dir = output.with_name(output.name + ".shards") if options.output_format == "tevatron-pickle" else output
    ranges = shard_ranges(table.rows, options.dataset_shard_index, options.dataset_number_of_shards,
                          encoder.rows_per_shard)
    manifest = EmbeddingsManifest(
        model=model_source, dim=dim, kind=kind, pooling=settings.pooling, normalize=settings.normalize,
        source=f"{table.manifest['fingerprint']}[{ranges[0][0] if ranges else 0}:{ranges[-1][1] if ranges else 0}]",
        planned_shards=len(ranges))
    writer = EmbeddingsWriter(shards_dir, manifest, overwrite=options.overwrite_output,
                              replace_other_runs=options.replace_other_runs)
    todo = {index: ranges[index] for index in range(len(ranges)) if index not in writer.finished()}
    encoded = run_actor_pool(table, todo, writer, model_source, model, encoder, precision, cluster,
                             data.encode_is_query) if todo else 0
    if options.output_format == "tevatron-pickle":
        ids, vectors = load_embeddings(str(shards_dir))
        write_tevatron_pickle(output, vectors, ids.tolist())
    return EncodeResult(output, encoded, len(ranges) - len(todo), len(ranges), dim, time.perf_counter() - started)


def run_actor_pool(table: TokenTable, todo: dict[int, tuple[int, int]], writer: EmbeddingsWriter, model_source: str,
                   model: ModelArguments, options: EncoderArguments, precision: PrecisionArguments,
                   cluster: RayArguments, is_query: bool) -> int:
    """Encode the rows of the unfinished shards on an actor pool; write each shard as soon as it is complete."""
    import ray
    from ray.data.expressions import col
    from raytev.cluster import connect, node_cpus
    from raytev.encoding.batch_encoder import BatchEncoder

    connect(cluster.address)
    id_column = "query_id" if is_query else "docid"
    wanted = None
    for low, high in todo.values():
        clause = (col("row") >= low) & (col("row") < high)
        wanted = clause if wanted is None else wanted | clause
    dataset = ray.data.read_parquet(table.files, columns=["row", id_column, "input_ids"]).filter(expr=wanted)
    # Small inputs arrive as one block, which one actor would take alone: cut it so every actor gets work.
    total = sum(high - low for low, high in todo.values())
    dataset = dataset.repartition(max(options.num_actors * 4, math.ceil(total / ROWS_PER_ACTOR_CALL)))
    dtype = "bfloat16" if precision.bf16 else "float16" if precision.fp16 else None
    resources = {"num_gpus": 1} if cluster.use_gpu else {"num_cpus": options.cpus_per_actor}
    dataset = dataset.map_batches(
        BatchEncoder,
        fn_constructor_kwargs=dict(
            model_path=model_source, model_options=model_options(model), is_query=is_query, id_column=id_column,
            batch_size=options.per_device_eval_batch_size, pad_token_id=table.manifest["settings"]["pad_token_id"],
            dtype=dtype, device="cuda" if cluster.use_gpu else "cpu",
            torch_threads=None if cluster.use_gpu else max(1, node_cpus() // options.num_actors)),
        compute=ray.data.ActorPoolStrategy(size=options.num_actors),
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


def write_buffered_shard(writer: EmbeddingsWriter, index: int, parts: list) -> None:
    """Write one shard from its buffered parts, in row order."""
    rows = np.concatenate([part[0] for part in parts])
    order = np.argsort(rows, kind="stable")
    ids = np.concatenate([part[1] for part in parts])[order]
    vectors = np.concatenate([part[2] for part in parts])[order]
    writer.write_shard(index, [str(docid) for docid in ids], vectors)
