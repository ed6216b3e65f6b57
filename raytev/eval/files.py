"""`raytev eval`: read a run and qrels (or answers and a corpus) from files and score them."""

from __future__ import annotations

from raytev.args import EvalArguments
from raytev.data.formats import parse_query_record
from raytev.data.reading import read_passages
from raytev.data.relevance import read_qrels, read_run
from raytev.data.sources import RecordFiles, expand_paths
from raytev.errors import ProblemLog, RaytevError
from raytev.eval.evaluation import Evaluation
from raytev.eval.metrics import evaluate_run
from raytev.eval.qa import qa_top_k_accuracy


def evaluate_files(args: EvalArguments) -> Evaluation:
    """Metrics of --run against --qrels, or top-k answer accuracy with --qa_answers and --qa_corpus."""
    if not args.run:
        raise RaytevError("pass --run: the run file to score.")
    problems = ProblemLog()
    run = read_run(args.run, problems)
    problems.raise_if_any()
    if args.qa_answers:
        return evaluate_answers(run, args)
    if not args.qrels:
        raise RaytevError("pass --qrels (or --qa_answers and --qa_corpus for QA answer accuracy).")
    qrels = read_qrels(args.qrels, problems)
    problems.raise_if_any()
    return evaluate_run(run, qrels, [name.strip() for name in args.metrics.split(",") if name.strip()])


def evaluate_answers(run: dict, args: EvalArguments) -> Evaluation:
    """Top-k answer accuracy: only the passages the run retrieved are read from the corpus."""
    if not args.qa_corpus:
        raise RaytevError("--qa_answers needs --qa_corpus: the passages whose texts are checked for answers.")
    problems = ProblemLog()
    answers = {}
    for source, line, record in RecordFiles("queries", expand_paths(args.qa_answers)).iter_records(problems):
        query = parse_query_record(record, source, line, problems)
        if query is not None and query.answers:
            answers[query.query_id] = query.answers
    retrieved = {entry.docid for entries in run.values() for entry in entries}
    passages = read_passages(RecordFiles("corpus", expand_paths(args.qa_corpus)), problems, retrieved)
    problems.raise_if_any()
    texts = {docid: passage.text for docid, passage in passages.items()}
    if not answers:
        raise RaytevError(f"{args.qa_answers} has no query with `answers`: QA accuracy needs them.")
    ks = tuple(int(k) for k in args.top_k.split(",") if k.strip())
    return qa_top_k_accuracy(run, answers, texts, ks=ks, regex=args.regex)
