"""`raytev mine`: hard negatives from a model's own retrieval, written as Tevatron training JSONL."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from raytev.args import (DataArguments, EncoderArguments, IndexArguments, MineArguments, ModelArguments,
                         PrecisionArguments, RayArguments, RetrievalArguments)
from raytev.bundled import resolve_model_path
from raytev.data.formats import Passage, parse_query_record, parse_training_group
from raytev.data.prepare import prepare_data
from raytev.data.reading import read_passages
from raytev.data.relevance import read_run
from raytev.data.sampling import stable_seed
from raytev.data.sources import DataSource, resolve_source
from raytev.errors import ProblemLog, RaytevError
from raytev.eval.qa import answer_matcher
from raytev.retrieval import StageTiming, retrieve
from raytev.staging import staged_file


@dataclass
class MineResult:
    """What mining wrote and how long it took."""

    output: Path
    groups: int
    mined_negatives: int
    seconds: float
    stages: list[StageTiming]


def mine(data: DataArguments, model: ModelArguments, encoder: EncoderArguments, index: IndexArguments,
         retrieval: RetrievalArguments, precision: PrecisionArguments, cluster: RayArguments, options: MineArguments,
         corpus_embeddings: Path | None = None) -> MineResult:
    """Retrieve for every training query, drop positives (and answer-bearing passages), sample from a rank range."""
    started = time.perf_counter()
    if not options.save_to:
        raise RaytevError("pass --save_to: the training JSONL the mined groups are written to.")
    if not model.model_name_or_path:
        raise RaytevError("pass --model_name_or_path: the model whose retrieval supplies the negatives.")
    source = resolve_source(data)
    if source.corpus is None or not source.has_groups:
        raise RaytevError("mining needs training queries with positives and a corpus to retrieve from: a BEIR "
                          "folder or bundled dataset, or a Tevatron training JSONL with --corpus_path.")
    output = Path(options.save_to).expanduser().resolve()
    model = dataclasses.replace(model, model_name_or_path=resolve_model_path(model.model_name_or_path))
    groups = prepare_data(data, model).queries.read(["query_id", "positive_docids", "negative_docids", "answers"])
    most_positives = max((len(row) for row in groups.column("positive_docids").to_pylist()), default=0)
    # Deep enough that the rank range survives the removal of positives.
    depth = options.negative_rank_end + most_positives
    outputs = retrieve(data, model, encoder, index, dataclasses.replace(retrieval, depth=depth), precision, cluster,
                       output.with_name(output.name + ".retrieval"), corpus_embeddings)

    started_selecting = time.perf_counter()
    problems = ProblemLog()
    run = read_run(outputs.run, problems)
    problems.raise_if_any()
    rows = groups.to_pylist()
    ranked = {row["query_id"]: [entry.docid for entry in run.get(row["query_id"], [])] for row in rows}
    needed = {docid for row in rows for docid in row["positive_docids"] + row["negative_docids"]}
    needed |= {docid for docids in ranked.values() for docid in docids}
    passages = read_passages(source.corpus, problems, needed)
    problems.raise_if_any()
    missing = sorted(needed - passages.keys())
    if missing:
        raise RaytevError(f"{len(missing)} docids of the training groups are not in the corpus (e.g. "
                          f"{', '.join(missing[:3])}): mining needs groups whose passages are corpus passages.")
    mined = {row["query_id"]: select_negatives(row, ranked[row["query_id"]], passages, options, data.seed)
             for row in rows}
    write_groups(output, source, rows, mined, passages, options.keep_original_groups)
    count = sum(len(negatives) for negatives in mined.values())
    outputs.stages.append(StageTiming("select negatives", time.perf_counter() - started_selecting,
                                      f"{count:,} negatives for {len(rows):,} queries -> {output}"))
    return MineResult(output, len(rows), count, time.perf_counter() - started, outputs.stages)


def select_negatives(group: dict, ranked: list[str], passages: dict[str, Passage], options: MineArguments,
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
