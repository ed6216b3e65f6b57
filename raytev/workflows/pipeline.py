"""`raytev pipeline`: optional training, then encode, index, search and evaluate, every output under one folder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from raytev.config.fields import substage
from raytev.config.sections import ModelSection, TextSection
from raytev.config.stages import PipelineConfig, RerankConfig, TrainConfig
from raytev.data.qrels import read_qrels
from raytev.data.sources import resolve_source
from raytev.errors import ProblemLog, RaytevError
from raytev.eval.metrics import Evaluation, evaluate_run_file, format_json, format_table
from raytev.model.resolved import resolve_model
from raytev.staging import staged_file
from raytev.workflows.retrieval import StageTiming, finished, retrieve

METRICS_FILE = "metrics.json"
RERANKED_RUN, RERANKED_METRICS_FILE = "reranked.txt", "reranked_metrics.json"


@dataclass
class PipelineResult:
    """The metrics, where everything went, and how long each stage took."""

    output_dir: Path
    model: str
    metrics: Evaluation
    stages: list[StageTiming]
    title: str = ""
    reranked: Evaluation | None = None  # with --reranker_name_or_path

    def stage_table(self) -> str:
        """Stage timings as aligned text lines."""
        width = max(len(stage.name) for stage in self.stages)
        return "\n".join(f"  {stage.name:<{width}}  {stage.seconds:>8.1f} s  {stage.detail}" for stage in self.stages)

    def summary(self) -> str:
        """What `raytev pipeline` prints: the metrics table and where they were written (the stages printed their
        own lines as they finished)."""
        table = format_table(self.metrics, title=self.title)
        if self.reranked is not None:
            table += f"\n{format_table(self.reranked, title='reranked')}"
        return f"{table}\nmetrics written to {self.output_dir / METRICS_FILE}"


def run_pipeline(config: PipelineConfig, corpus_embeddings: Path | None = None) -> PipelineResult:
    """[Train on --train_split, then] evaluate the model on --split of a BEIR folder or bundled dataset.

    `corpus_embeddings`: a folder of passage embeddings of the same model to reuse (or fill) instead of
    output_dir/corpus_embeddings.
    """
    output_dir = Path(config.output_dir).expanduser().resolve()
    data = config.data
    qrels_path = resolve_source(data).qrels
    if qrels_path is None:
        raise RaytevError("the pipeline evaluates against qrels: give a BEIR folder or a bundled dataset "
                          "(--dataset_name scifact) and its --split.")
    stages: list[StageTiming] = []
    model_section = config.model
    if config.do_train:
        from raytev.training.trainer import train

        model_dir = output_dir / "model"
        result = train(substage(TrainConfig, config, output_dir=str(model_dir),
                                data=dataclasses.replace(data, dataset_split=config.train_split)))
        finished(stages, "train", result.seconds, f"{result.steps} steps, {result.epochs:.2f} epochs")
        # The trained folder speaks for itself (a LoRA adapter names its base model).
        model_section = dataclasses.replace(config.model, model_name_or_path=str(model_dir), lora_name_or_path=None)
    model = resolve_model(model_section, config.text, config.precision)

    # Evaluation needs the split's queries, not training negatives for them.
    evaluation = dataclasses.replace(config, model=model_section, data=dataclasses.replace(data, num_negatives=0))
    outputs = retrieve(evaluation, model, output_dir, corpus_embeddings=corpus_embeddings)
    stages += outputs.stages

    started = time.perf_counter()
    problems = ProblemLog()
    qrels = read_qrels(qrels_path, problems)
    problems.raise_if_any()
    metrics = evaluate_run_file(outputs.run, qrels)
    write_metrics(output_dir / METRICS_FILE, metrics)
    finished(stages, "evaluate", time.perf_counter() - started, f"{metrics.queries} queries against {qrels_path.name}")
    reranked = rerank_run(config, outputs.run, output_dir, stages) if config.reranker_name_or_path else None
    return PipelineResult(output_dir, model_section.model_name_or_path, metrics, stages,
                          title=f"{model_section.model_name_or_path} on {data.dataset_name or data.dataset_path} "
                                f"{data.dataset_split}", reranked=reranked)


def rerank_run(config: PipelineConfig, run: Path, output_dir: Path, stages: list[StageTiming]) -> Evaluation:
    """The retriever's run reranked by --reranker_name_or_path into reranked.txt, evaluated (reranked_metrics.json)."""
    from raytev.workflows.rerank import rerank

    result = rerank(substage(RerankConfig, config, run=str(run), save_ranking_to=str(output_dir / RERANKED_RUN),
                             rerank_depth=config.rerank_depth, text=TextSection(),  # the reranker's own prompts
                             model=ModelSection(model_name_or_path=config.reranker_name_or_path,
                                                cache_dir=config.model.cache_dir),
                             data=dataclasses.replace(config.data, num_negatives=0)))
    write_metrics(output_dir / RERANKED_METRICS_FILE, result.reranked)
    finished(stages, "rerank", result.seconds, f"{result.queries:,} queries x depth {config.rerank_depth}, "
                                               f"{result.pairs_per_second:.1f} pairs/s")
    return result.reranked


def write_metrics(path: Path, metrics: Evaluation) -> None:
    """metrics.json, the same keys as `raytev eval --json` (via a temporary name)."""
    with staged_file(path) as temporary:
        temporary.write_text(format_json(metrics) + "\n")
