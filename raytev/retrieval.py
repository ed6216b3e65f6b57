"""Encode a corpus and its queries, index the passages, search: the stages pipeline, mining and the demo share."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytev.args import (DataArguments, EncodeArguments, EncoderArguments, IndexArguments, IndexBuildArguments,
                         ModelArguments, PrecisionArguments, RayArguments, RetrievalArguments)
from raytev.data.embeddings import load_embeddings
from raytev.encoding.encoder import encode
from raytev.index.build import build_index
from raytev.index.runs import write_run
from raytev.index.search import search, shard_search
from raytev.index.storage import save_index


@dataclass
class StageTiming:
    """How long one stage took and what it did."""

    name: str
    seconds: float
    detail: str


@dataclass
class RetrievalOutputs:
    """Where each stage left its output, and the stages' timings."""

    corpus_embeddings: Path
    query_embeddings: Path
    index: Path
    run: Path
    stages: list[StageTiming]


def retrieve(data: DataArguments, model: ModelArguments, encoder: EncoderArguments, index: IndexArguments,
             retrieval: RetrievalArguments, precision: PrecisionArguments, cluster: RayArguments,
             output_dir: Path, corpus_embeddings: Path | None = None) -> RetrievalOutputs:
    """Encode the passages and the split's queries, index the passages, write the run of the top `depth`.

    `corpus_embeddings` names a folder to encode the passages into (or finish, or reuse when complete), so
    runs with the same model can share them.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    corpus_dir = corpus_embeddings or output_dir / "corpus_embeddings"
    query_dir, index_dir, run_path = output_dir / "query_embeddings", output_dir / "index", output_dir / "run.txt"
    stages = []
    for name, is_query, target in (("encode passages", False, corpus_dir), ("encode queries", True, query_dir)):
        result = encode(dataclasses.replace(data, encode_is_query=is_query), model,
                        EncodeArguments(encode_output_path=str(target), replace_other_runs=True), encoder,
                        precision, cluster)
        reused = f", {result.reused_shards} shards reused" if result.reused_shards else ""
        stages.append(StageTiming(name, result.seconds,
                                  f"{result.rows:,} texts, {result.rows_per_second:.1f}/s{reused}"))

    started = time.perf_counter()
    built = build_index(str(corpus_dir), index.index_factory, use_gpu=cluster.use_gpu)
    save_index(built, index_dir)
    stages.append(StageTiming("index", time.perf_counter() - started, built.info.describe()))

    started = time.perf_counter()
    query_ids, query_vectors = load_embeddings(str(query_dir))
    if retrieval.shard_search:
        scores, docids = shard_search(str(corpus_dir), query_vectors, retrieval.depth, retrieval.batch_size)
    else:
        scores, docids = search(built, query_vectors, retrieval.depth, retrieval.batch_size)
    lines = write_run(run_path, query_ids.tolist(), scores, docids)
    seconds = time.perf_counter() - started
    stages.append(StageTiming("search", seconds, f"{len(query_ids):,} queries x depth {retrieval.depth}, "
                                                 f"{len(query_ids) / max(seconds, 1e-9):.0f} queries/s, {lines:,} lines"))
    return RetrievalOutputs(corpus_dir, query_dir, index_dir, run_path, stages)


def index_files(build: IndexBuildArguments, index: IndexArguments, use_gpu: bool = False):
    """`raytev index`: build the index of --passage_reps and save it; returns (the DenseIndex, its folder)."""
    from raytev.errors import RaytevError

    if not (build.passage_reps and build.index_output_path):
        raise RaytevError("pass --passage_reps (embeddings) and --index_output_path (where the index goes).")
    built = build_index(build.passage_reps, index.index_factory, use_gpu=use_gpu)
    return built, save_index(built, build.index_output_path)


def search_files(query_reps: str, passage_reps: str, save_ranking_to: str, retrieval: RetrievalArguments,
                 run_format: str = "tevatron", input_format: str = "parquet") -> tuple[int, int, float]:
    """`raytev search`: rank passages for every query and write the run; returns (queries, lines, seconds)."""
    from raytev.errors import RaytevError

    if not save_ranking_to:
        raise RaytevError("pass --save_ranking_to: the run file to write.")
    started = time.perf_counter()
    query_ids, scores, docids = rank_files(query_reps, passage_reps, retrieval, input_format)
    lines = write_run(save_ranking_to, query_ids, scores, docids, run_format)
    return len(query_ids), lines, time.perf_counter() - started


def rank_files(query_reps: str, passage_reps: str, retrieval: RetrievalArguments,
               input_format: str = "parquet") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(query ids, scores [nq, depth], docids [nq, depth]) of query embeddings against passage embeddings/index."""
    import tempfile

    from raytev.data.embeddings import EmbeddingsManifest, EmbeddingsWriter, read_tevatron_pickle
    from raytev.errors import RaytevError

    if not (query_reps and passage_reps):
        raise RaytevError("pass --query_reps (query embeddings) and --passage_reps (passage embeddings or index).")
    with tempfile.TemporaryDirectory(prefix="raytev-pickles-") as scratch:
        if input_format == "tevatron-pickle":
            import glob

            # Pickles become embedding shards, so that they take exactly the path raytev's own files take.
            converted = []
            for name, location in (("queries", query_reps), ("passages", passage_reps)):
                files = sorted(glob.glob(location)) or [location]
                ids_and_vectors = [read_tevatron_pickle(path) for path in files]
                folder = Path(scratch) / name
                writer = EmbeddingsWriter(folder, EmbeddingsManifest(
                    model="tevatron-pickle", dim=ids_and_vectors[0][1].shape[1], kind=name,
                    planned_shards=len(files)))
                for shard, (ids, vectors) in enumerate(ids_and_vectors):
                    writer.write_shard(shard, ids.tolist(), vectors)
                converted.append(str(folder))
            query_reps, passage_reps = converted
        query_ids, query_vectors = load_embeddings(query_reps)
        find = shard_search if retrieval.shard_search else search
        scores, docids = find(passage_reps, query_vectors, retrieval.depth, retrieval.batch_size)
    return query_ids.tolist(), scores, docids
