"""Encode a corpus and its queries, index the passages, search: the stages pipeline, mining and the demo share."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from raytev.config.fields import substage
from raytev.config.stages import EncodeConfig, MineConfig, PipelineConfig
from raytev.encoding.embeddings import load_compact
from raytev.encoding.encoder import encode
from raytev.index.build import build_index
from raytev.index.files import write_searched_run
from raytev.index.storage import save_index
from raytev.model.resolved import ResolvedModel
from raytev.progress import report_stage


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


def finished(stages: list[StageTiming], name: str, seconds: float, detail: str) -> None:
    """Record a stage and print its one summary line."""
    stages.append(StageTiming(name, seconds, detail))
    report_stage(name, seconds, detail)


def retrieve(config: MineConfig | PipelineConfig, model: ResolvedModel, output_dir: Path, depth: int | None = None,
             corpus_embeddings: Path | None = None) -> RetrievalOutputs:
    """Encode the passages and the split's queries with `model`, index the passages, write the run of the top
    `depth` (default: the config's).

    `corpus_embeddings` names a folder to encode the passages into (or finish, or reuse when complete), so
    runs with the same model can share them.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    corpus_dir = corpus_embeddings or output_dir / "corpus_embeddings"
    query_dir, index_dir, run_path = output_dir / "query_embeddings", output_dir / "index", output_dir / "run.txt"
    stages: list[StageTiming] = []
    for name, is_query, target in (("encode passages", False, corpus_dir), ("encode queries", True, query_dir)):
        encoding = substage(EncodeConfig, config, encode_output_path=str(target), replace_other_runs=True,
                            data=dataclasses.replace(config.data, encode_is_query=is_query))
        result = encode(encoding, model)
        reused = f", {result.reused_shards} shards reused" if result.reused_shards else ""
        finished(stages, name, result.seconds, f"{result.rows:,} texts, {result.rows_per_second:.1f}/s{reused}")

    started = time.perf_counter()
    built = build_index(str(corpus_dir), config.index.index_factory, use_gpu=config.cluster.use_gpu)
    save_index(built, index_dir)
    finished(stages, "index", time.perf_counter() - started, built.info.describe())

    started = time.perf_counter()
    depth = depth or config.retrieval.depth
    query_ids, query_vectors = load_compact(str(query_dir))
    retrieval = dataclasses.replace(config.retrieval, depth=depth)
    in_parts = retrieval.shard_search or retrieval.search_workers  # the shards, not the whole index built above
    lines = write_searched_run(run_path, query_ids, query_vectors, corpus_dir if in_parts else built, retrieval)
    seconds = time.perf_counter() - started
    finished(stages, "search", seconds, f"{len(query_ids):,} queries x depth {depth}, "
                                        f"{len(query_ids) / max(seconds, 1e-9):.0f} queries/s, {lines:,} lines")
    return RetrievalOutputs(corpus_dir, query_dir, index_dir, run_path, stages)
