"""`raytev eval`: read a run and qrels (or answers and a corpus) from files and score them."""

from __future__ import annotations

from raytev.config.stages import EvalConfig
from raytev.data.formats import parse_query_record
from raytev.data.qrels import read_qrels
from raytev.data.reading import read_passages
from raytev.data.runs import read_run
from raytev.data.sources import RecordFiles, expand_paths
from raytev.errors import ProblemLog, RaytevError
from raytev.eval.metrics import Evaluation, evaluate_run_file
from raytev.eval.qa import qa_top_k_accuracy


def evaluate_files(config: EvalConfig) -> Evaluation:
    """Metrics of --run against --qrels, or top-k answer accuracy with --qa_answers and --qa_corpus."""
    problems = ProblemLog()
    if config.qa_answers:
        run = read_run(config.run, problems)
        problems.raise_if_any()
        evaluation = evaluate_answers(run, config)
    else:
        qrels = read_qrels(config.qrels, problems)
        problems.raise_if_any()
        metrics = [name.strip() for name in config.metrics.split(",") if name.strip()]
        evaluation = evaluate_run_file(config.run, qrels, metrics)  # a few hundred queries of the run at a time
    evaluation.title, evaluation.as_json = config.run, config.json  # how summary() shows it
    return evaluation


def evaluate_answers(run: dict, config: EvalConfig) -> Evaluation:
    """Top-k answer accuracy: only the passages the run retrieved are read from the corpus."""
    problems = ProblemLog()
    answers = {}
    for source, line, record in RecordFiles("queries", expand_paths(config.qa_answers)).iter_records(problems):
        query = parse_query_record(record, source, line, problems)
        if query is not None and query.answers:
            answers[query.query_id] = query.answers
    retrieved = {entry.docid for entries in run.values() for entry in entries}
    passages = read_passages(RecordFiles("corpus", expand_paths(config.qa_corpus)), problems, retrieved)
    problems.raise_if_any()
    texts = {docid: passage.text for docid, passage in passages.items()}
    if not answers:
        raise RaytevError(f"{config.qa_answers} has no query with `answers`: QA accuracy needs them.")
    ks = tuple(int(k) for k in config.top_k.split(",") if k.strip())
    return qa_top_k_accuracy(run, answers, texts, ks=ks, regex=config.regex)
