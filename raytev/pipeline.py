"""`raytev pipeline`: optional training, then encode, index, search and evaluate, every output under one folder."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from raytev.args import (DataArguments, EncoderArguments, IndexArguments, ModelArguments, PipelineArguments,
                         PrecisionArguments, RayArguments, RetrievalArguments, TrainingArguments)
from raytev.data.relevance import read_qrels, read_run
from raytev.data.sources import resolve_source
from raytev.errors import ProblemLog, RaytevError
from raytev.eval.evaluation import Evaluation
from raytev.eval.metrics import evaluate_run
from raytev.eval.report import format_json
from raytev.retrieval import StageTiming, retrieve
from raytev.staging import staged_file

METRICS_FILE = "metrics.json"


@dataclass
class PipelineResult:
    """The metrics, where everything went, and how long each stage took."""

    output_dir: Path
    model: str
    metrics: Evaluation
    stages: list[StageTiming]

    def stage_table(self) -> str:
        """Stage timings as aligned text lines."""
        width = max(len(stage.name) for stage in self.stages)
        return "\n".join(f"  {stage.name:<{width}}  {stage.seconds:>8.1f} s  {stage.detail}" for stage in self.stages)


def run_pipeline(data: DataArguments, model: ModelArguments, training: TrainingArguments, encoder: EncoderArguments,
                 index: IndexArguments, retrieval: RetrievalArguments, precision: PrecisionArguments,
                 cluster: RayArguments, pipeline: PipelineArguments,
                 corpus_embeddings: Path | None = None) -> PipelineResult:
    """[Train on --train_split, then] evaluate the model on --split of a BEIR folder or bundled dataset."""
    if not training.output_dir:
        raise RaytevError("pass --output_dir: every stage's output goes under it.")
    if not model.model_name_or_path:
        raise RaytevError("pass --model_name_or_path: the model to evaluate (or to fine-tune first).")
    output_dir = Path(training.output_dir).expanduser().resolve()
    qrels_path = resolve_source(data).qrels
    if qrels_path is None:
        raise RaytevError("the pipeline evaluates against qrels: give a BEIR folder or a bundled dataset "
                          "(--dataset_name scifact) and its --split.")
    stages: list[StageTiming] = []
    if pipeline.do_train:
        from raytev.training.trainer import train

        model_dir = output_dir / "model"
        result = train(dataclasses.replace(data, dataset_split=pipeline.train_split), model,
                       dataclasses.replace(training, output_dir=str(model_dir)), precision, cluster)
        stages.append(StageTiming("train", result.seconds, f"{result.steps} steps, {result.epochs:.2f} epochs"))
        model = dataclasses.replace(model, model_name_or_path=str(model_dir))

    # Evaluation needs the split's queries, not training negatives for them.
    outputs = retrieve(dataclasses.replace(data, num_negatives=0), model, encoder, index, retrieval, precision,
                       cluster, output_dir, corpus_embeddings)
    stages += outputs.stages

    started = time.perf_counter()
    problems = ProblemLog()
    run, qrels = read_run(outputs.run, problems), read_qrels(qrels_path, problems)
    problems.raise_if_any()
    metrics = evaluate_run(run, qrels)
    write_metrics(output_dir / METRICS_FILE, metrics)
    stages.append(StageTiming("evaluate", time.perf_counter() - started,
                              f"{metrics.queries} queries against {qrels_path.name}"))
    return PipelineResult(output_dir, model.model_name_or_path, metrics, stages)


def write_metrics(path: Path, metrics: Evaluation) -> None:
    """metrics.json, the same keys as `raytev eval --json` (via a temporary name)."""
    with staged_file(path) as temporary:
        temporary.write_text(format_json(metrics) + "\n")


def read_metrics(output_dir: Path) -> dict:
    """The metrics a pipeline run wrote."""
    return json.loads((Path(output_dir) / METRICS_FILE).read_text())
