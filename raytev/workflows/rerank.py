"""`raytev rerank`: a run's top candidates from the token cache through a pool of Ray actors into a reranked run,
evaluated against qrels before and after."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from raytev.config.stages import RerankConfig
from raytev.data.cache import TokenTable, default_cache_dir
from raytev.data.pairs import PairTemplate
from raytev.data.prepare import prepare_data
from raytev.data.qrels import read_qrels
from raytev.errors import ProblemLog, RaytevError
from raytev.eval.metrics import Evaluation, coverage_line, evaluate_run_file
from raytev.model.resolved import ResolvedModel, resolve_reranker
from raytev.progress import progress_bar
from raytev.reranking.candidates import candidates_table
from raytev.reranking.pool import on_rerankers
from raytev.reranking.shard_reranker import ShardReranker, part_name
from raytev.staging import staged_file, write_json_file

QUERIES_PER_PART = 64  # the unit an actor reranks and writes, and an interrupted run resumes from
PARTS_MANIFEST = "parts.json"


@dataclass
class RerankResult:
    """What a reranking run produced, and the metrics before and after when there were qrels."""

    output: Path
    queries: int
    pairs: int  # pairs scored by this run
    reused_parts: int
    seconds: float
    first_stage: Evaluation | None = None
    reranked: Evaluation | None = None

    @property
    def pairs_per_second(self) -> float:
        """Pairs scored per second of this run (preparation included)."""
        return self.pairs / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        """What `raytev rerank` prints: counts, speed, and the metrics before and after."""
        reused = f", {self.reused_parts} parts kept from an earlier run" if self.reused_parts else ""
        line = (f"reranked {self.queries:,} queries ({self.pairs:,} pairs, {self.pairs_per_second:.1f} pairs/s) in "
                f"{self.seconds:.1f} s{reused} -> {self.output}")
        if self.reranked is None:
            return line
        width = max(len("metric"), *(len(name) for name in self.reranked))
        rows = [f"{'metric':<{width}}  {'run':>8}  {'reranked':>8}"]
        rows += [f"{name:<{width}}  {self.first_stage[name]:>8.4f}  {value:>8.4f}"
                 for name, value in self.reranked.items()]
        return "\n".join([line, *rows, coverage_line(self.reranked)])


def rerank(config: RerankConfig) -> RerankResult:
    """Rerank the top --rerank_depth passages of each query of --run with a cross-encoder."""
    started = time.perf_counter()
    model = resolve_reranker(config.model, config.text, config.precision, config.rerank.rerank_max_len)
    if model.adapter is None:
        from raytev.modeling.reranker import check_reranker_folder

        check_reranker_folder(model.path, model.cache_dir)
    data = dataclasses.replace(config.data, num_negatives=0)  # the split's queries, not training negatives
    prepared = prepare_data(data, model)
    if prepared.corpus is None or prepared.queries is None:
        raise RaytevError(f"{prepared.source.label}: reranking needs the queries and the corpus the run names: give "
                          "a BEIR folder or bundled dataset and its --dataset_split, or --dataset_path QUERIES with "
                          "--corpus_path CORPUS.")
    cache_dir = Path(data.dataset_cache_dir).expanduser() if data.dataset_cache_dir else default_cache_dir()
    table = candidates_table(config.run, config.rerank_depth, prepared.queries, prepared.corpus, cache_dir)
    pairs = PairTemplate.from_tokenizer(model.load_tokenizer(), model.passage_max_len, model.append_eos_token,
                                        table.manifest["settings"]["pad_token_id"])

    output = Path(config.save_ranking_to).expanduser()
    parts_dir = open_parts(output, table, model, config)
    ranges = [(low, min(low + QUERIES_PER_PART, table.rows)) for low in range(0, table.rows, QUERIES_PER_PART)]
    todo = {index: span for index, span in enumerate(ranges) if not (parts_dir / part_name(index)).is_file()}
    run = run_actor_pool if config.actors.num_actors > 0 else run_in_process
    scored = run(table, todo, parts_dir, model, pairs, config) if todo else 0
    join_parts(parts_dir, len(ranges), output)
    shutil.rmtree(parts_dir, ignore_errors=True)

    first_stage = reranked = None
    qrels_path = config.qrels or prepared.source.qrels
    if qrels_path:
        problems = ProblemLog()
        qrels = read_qrels(Path(qrels_path), problems)
        problems.raise_if_any()
        first_stage, reranked = evaluate_run_file(config.run, qrels), evaluate_run_file(output, qrels)
    return RerankResult(output, table.rows, scored, len(ranges) - len(todo), time.perf_counter() - started,
                        first_stage, reranked)


def open_parts(output: Path, table: TokenTable, model: ResolvedModel, config: RerankConfig) -> Path:
    """The folder of finished parts beside the output: kept for the same reranking (it resumes), else emptied."""
    parts_dir = output.with_name(output.name + ".parts")
    identity = {"candidates": table.manifest["fingerprint"], "model": model.identity, "dtype": model.dtype,
                "rerank_max_len": model.passage_max_len, "prefixes": [model.settings.query_prefix,
                                                                     model.settings.passage_prefix],
                "format": config.format, "queries_per_part": QUERIES_PER_PART}
    manifest = parts_dir / PARTS_MANIFEST
    if parts_dir.is_dir() and (config.overwrite_output or not manifest.is_file()
                               or json.loads(manifest.read_text()) != identity):
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    if not manifest.is_file():
        write_json_file(manifest, identity, indent=2)
    return parts_dir


def join_parts(parts_dir: Path, count: int, output: Path) -> None:
    """The parts, in order, as one run file (under a temporary name until complete)."""
    missing = [index for index in range(count) if not (parts_dir / part_name(index)).is_file()]
    if missing:
        raise RuntimeError(f"reranking ended with parts {missing[:10]} not written")
    output.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(output) as temporary, open(temporary, "wb") as sink:
        for index in range(count):
            with open(parts_dir / part_name(index), "rb") as part:
                shutil.copyfileobj(part, sink)


def reranker_options(table: TokenTable, parts_dir: Path, model: ResolvedModel, pairs: PairTemplate,
                     config: RerankConfig, torch_threads: int | None = None) -> dict:
    """ShardReranker's constructor arguments; paths absolute, as actors may run in another working directory."""
    return dict(table_files=[str(Path(file).resolve()) for file in table.files], output=str(parts_dir.resolve()),
                model=model, pairs=pairs, batch_size=config.inference.per_device_eval_batch_size,
                device="cuda" if config.cluster.use_gpu else "cpu", torch_threads=torch_threads,
                run_format=config.format)


def run_actor_pool(table: TokenTable, todo: dict[int, tuple[int, int]], parts_dir: Path, model: ResolvedModel,
                   pairs: PairTemplate, config: RerankConfig) -> int:
    """Rerank the unfinished parts on a pool of actors, each writing the parts it scores."""
    options = reranker_options(table, parts_dir, model, pairs, config)
    calls = [(index, low, high) for index, (low, high) in todo.items()]
    return count_scored(on_rerankers(options, "rerank_part", calls, config.actors, config.cluster), todo)


def run_in_process(table: TokenTable, todo: dict[int, tuple[int, int]], parts_dir: Path, model: ResolvedModel,
                   pairs: PairTemplate, config: RerankConfig) -> int:
    """--num_actors 0: the actors' ShardReranker in this process, one part after another (no Ray)."""
    reranker = ShardReranker(**reranker_options(table, parts_dir, model, pairs, config))
    return count_scored((reranker.rerank_part(index, low, high) for index, (low, high) in sorted(todo.items())), todo)


def count_scored(done: Iterable[tuple[int, int, int]], todo: dict[int, tuple[int, int]]) -> int:
    """Follow the parts as they finish (in any order) on a bar of queries; return the pairs scored."""
    scored = 0
    with progress_bar(total=sum(high - low for low, high in todo.values()), desc="Reranking",
                      unit=" queries") as bar:
        for _, queries, pairs in done:
            scored += pairs
            bar.update(queries)
    return scored



