"""`raytev mine`: hard negatives from a model's own retrieval, written as Tevatron training JSONL."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from raytev.config.stages import MineConfig
from raytev.data.formats import Passage, parse_query_record, parse_training_group
from raytev.data.prepare import prepare_data
from raytev.data.reading import read_passages
from raytev.data.runs import iter_run_queries, run_entries
from raytev.data.sampling import stable_seed
from raytev.data.sources import DataSource, resolve_source
from raytev.errors import ProblemLog, RaytevError
from raytev.eval.qa import answer_matcher
from raytev.model.resolved import resolve_model
from raytev.staging import staged_file
from raytev.workflows.retrieval import StageTiming, finished, retrieve


@dataclass
class MineResult:
    """What mining wrote and how long it took."""

    output: Path
    groups: int
    mined_negatives: int
    seconds: float
    stages: list[StageTiming]

    def summary(self) -> str:
        """What `raytev mine` prints."""
        return (f"mined {self.mined_negatives:,} negatives for {self.groups:,} queries in {self.seconds:.1f} s "
                f"-> {self.output}")


def mine(config: MineConfig, corpus_embeddings: Path | None = None) -> MineResult:
    """Retrieve for every training query, drop positives (and answer-bearing passages), sample from a rank range.

    `corpus_embeddings`: passage embeddings of the same model to reuse (or fill) instead of encoding them anew.
    """
    started = time.perf_counter()
    source = resolve_source(config.data)
    if source.corpus is None or not source.has_groups:
        raise RaytevError("mining needs training queries with positives and a corpus to retrieve from: a BEIR "
                          "folder or bundled dataset, or a Tevatron training JSONL with --corpus_path.")
    output = Path(config.save_to).expanduser().resolve()
    model = resolve_model(config.model, config.text, config.precision)
    groups = prepare_data(config.data, model).queries.read(["query_id", "positive_docids", "negative_docids",
                                                            "answers"])
    most_positives = max((len(row) for row in groups.column("positive_docids").to_pylist()), default=0)
    # Deep enough that the rank range survives the removal of positives.
    depth = config.negative_rank_end + most_positives
    outputs = retrieve(config, model, output.with_name(output.name + ".retrieval"), depth, corpus_embeddings)

    started_selecting = time.perf_counter()
    rows = groups.to_pylist()
    with_answers = any(row.get("answers") for row in rows)
    # Texts are needed for the output groups, and for every candidate only when answers rule some out.
    needed = {docid for row in rows for docid in row["positive_docids"] + row["negative_docids"]}
    if with_answers:
        needed |= {docid for chunk in run_chunks(outputs.run) for docid in chunk.column("docid").to_pylist()}
    passages = read_corpus(source, needed) if with_answers else {}
    mined = mine_run(outputs.run, {row["query_id"]: row for row in rows}, passages, config)
    if not with_answers:
        passages = read_corpus(source, needed | {docid for docids in mined.values() for docid in docids})
    write_groups(output, source, rows, mined, passages, config.keep_original_groups)
    count = sum(len(negatives) for negatives in mined.values())
    finished(outputs.stages, "select negatives", time.perf_counter() - started_selecting,
             f"{count:,} negatives for {len(rows):,} queries -> {output}")
    return MineResult(output, len(rows), count, time.perf_counter() - started, outputs.stages)


def mine_run(run: Path, rows: dict[str, dict], passages: dict[str, Passage],
             options: MineConfig) -> dict[str, list[str]]:
    """Query id -> mined negatives of every group, the run read a chunk of whole queries at a time (memory for a
    chunk of the ranking, not the whole run); a query the run does not rank gets none."""
    mined = dict.fromkeys(rows, [])
    for chunk in run_chunks(run):
        for query_id, entries in run_entries(chunk).items():
            if query_id in rows:
                mined[query_id] = select_negatives(rows[query_id], [entry.docid for entry in entries], passages,
                                                   options, options.data.seed)
    return mined


def run_chunks(run: Path) -> Iterator[pa.Table]:
    """The run (as `retrieve` wrote it) in chunks of whole queries."""
    problems = ProblemLog()
    yield from iter_run_queries(run, problems)
    problems.raise_if_any()


def read_corpus(source: DataSource, docids: set[str]) -> dict[str, Passage]:
    """The passages of `docids`, every one of them in the corpus or a clear error."""
    problems = ProblemLog()
    passages = read_passages(source.corpus, problems, docids)
    problems.raise_if_any()
    missing = sorted(docids - passages.keys())
    if missing:
        raise RaytevError(f"{len(missing)} docids of the training groups are not in the corpus (e.g. "
                          f"{', '.join(missing[:3])}): mining needs groups whose passages are corpus passages.")
    return passages


def select_negatives(group: dict, ranked: list[str], passages: dict[str, Passage], options: MineConfig,
                     seed: int) -> list[str]:
    """The query's mined negatives: ranks start..end once positives (and answer-bearing passages) are dropped."""
    positives = set(group["positive_docids"])
    bears_answer = answer_matcher(group["answers"]) if group.get("answers") else None
    candidates = [docid for docid in ranked if docid not in positives
                  and not (bears_answer and bears_answer(passages[docid].text))]
    window = candidates[options.negative_rank_start - 1:options.negative_rank_end]
    if len(window) <= options.n_sample:
        return window
    chosen = set(random.Random(stable_seed(seed, "mine", group["query_id"])).sample(window, options.n_sample))
    return [docid for docid in window if docid in chosen]  # keep rank order


def query_texts(source: DataSource) -> dict[str, str]:
    """Query id -> text, from the source's queries or training groups."""
    problems = ProblemLog()
    texts = {}
    for path, line, record in source.queries.iter_records(problems):
        if source.queries.kind == "groups":
            group = parse_training_group(record, path, line, problems)
            query = group.query if group is not None else None
        else:
            query = parse_query_record(record, path, line, problems)
        if query is not None:
            texts[query.query_id] = query.text
    problems.raise_if_any()
    return texts


def write_groups(output: Path, source: DataSource, rows: list[dict], mined: dict[str, list[str]],
                 passages: dict[str, Passage], keep_original: bool = True) -> None:
    """Tevatron JSONL: the original groups, then the same queries with their mined negatives (temp + rename)."""
    texts = query_texts(source)

    def as_json(passage_ids: list[str]) -> list[dict]:
        return [{"docid": docid, "title": passages[docid].title, "text": passages[docid].text}
                for docid in passage_ids]

    output.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(output) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        parts = [lambda row: mined[row["query_id"]]]
        if keep_original:
            parts.insert(0, lambda row: row["negative_docids"])
        for negatives_of in parts:
            for row in rows:
                group = {"query_id": row["query_id"], "query": texts[row["query_id"]],
                         "positive_passages": as_json(row["positive_docids"]),
                         "negative_passages": as_json(negatives_of(row))}
                if row.get("answers"):
                    group["answers"] = row["answers"]
                handle.write(json.dumps(group, ensure_ascii=False) + "\n")
