"""Ranking metrics of a run against qrels, computed by ir_measures and averaged the way BEIR and MTEB average; the
Evaluation they make, and its text and JSON forms (printing is the caller's)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence

import ir_measures
from ir_measures import Measure

from raytev.data.qrels import Judgement
from raytev.data.runs import QUERIES_PER_CHUNK, WHOLE_RUN_BYTES, Run, iter_run_queries, ranked_docids, run_entries
from raytev.errors import ProblemLog, RaytevError


class Evaluation(dict):
    """Metric name → value, a plain dict (its JSON form), plus how many queries the values cover.

    `queries` is how many queries the values are averaged over; `missing_queries` is how many queries the
    qrels (or answers) name that the run lacks; `missing_scored_zero` says whether those are inside the
    average as zeros (QA accuracy) or left out of it (ranking metrics, as BEIR and MTEB do).
    """

    title = ""  # what summary() names (the run file, for `raytev eval`)
    as_json = False  # summary() as JSON (`raytev eval --json`)

    def __init__(self, metrics: Mapping[str, float], queries: int, missing_queries: int,
                 missing_scored_zero: bool = False):
        super().__init__(metrics)
        self.queries = queries
        self.missing_queries = missing_queries
        self.missing_scored_zero = missing_scored_zero

    def summary(self) -> str:
        """What `raytev eval` prints: a table titled with the run (JSON with --json)."""
        return format_json(self) if self.as_json else format_table(self, self.title)

    def __repr__(self) -> str:
        return (f"Evaluation({dict(self)!r}, queries={self.queries}, missing_queries={self.missing_queries}, "
                f"missing_scored_zero={self.missing_scored_zero})")


DEFAULT_METRICS = ("nDCG@10", "MRR@10", "R@100", "R@1000", "MAP")

# ir_measures calls these RR and AP; the retrieval literature (BEIR, MTEB, MS MARCO) reports MRR and MAP.
_REPORTED_WITH_M = ("RR", "AP")


def report_name(measure: Measure) -> str:
    """The name a measure is reported under: ir_measures' own (nDCG@10, R@100, P@5), with RR and AP as MRR and MAP."""
    name = str(measure)
    return "M" + name if measure.NAME in _REPORTED_WITH_M else name


def parse_metrics(names: Iterable[str | Measure]) -> dict[str, Measure]:
    """Report name → measure for names such as nDCG@10, MRR@10, R@100, MAP, or any ir_measures measure."""
    measures: dict[str, Measure] = {}
    for name in names:
        measure = name if isinstance(name, Measure) else _parse_measure(name)
        if not ir_measures.DefaultPipeline.supports(measure):
            raise RaytevError(f"metric {str(name)!r}: no installed ir_measures provider computes it; "
                              f"choose another metric or install the provider its documentation names")
        measures[report_name(measure)] = measure
    if not measures:
        raise RaytevError("no metric asked for: name at least one, e.g. nDCG@10")
    return measures


def _parse_measure(name: str) -> Measure:
    try:
        return ir_measures.parse_measure(name)  # knows MRR and MAP as aliases of RR and AP
    except (NameError, ValueError, SyntaxError) as error:
        raise RaytevError(f"unknown metric {name!r} ({error}); use names such as nDCG@10, MRR@10, R@100, R@1000, "
                          f"MAP, P@5 (any measure of ir_measures, https://ir-measur.es)") from None


def evaluate_run(run: Run, qrels: Sequence[Judgement],
                 metrics: Iterable[str | Measure] = DEFAULT_METRICS) -> Evaluation:
    """Metrics of a run against qrels, averaged over the queries in both (BEIR's and MTEB's convention).

    The average covers the queries that the run and the qrels both name: BEIR's `EvaluateRetrieval.evaluate`
    and MTEB's `calculate_retrieval_scores` divide pytrec_eval's per-query sums by `len(scores)`, and
    pytrec_eval scores only run queries that have qrels. So, as there:
    - qrels queries absent from the run are left out of the average (counted in `missing_queries`; note that
      ir_measures on its own would average them in as zeros, and trec_eval without `-c` leaves them out);
    - run queries absent from the qrels are ignored;
    - a query whose judgements are all grade 0 is evaluated and scores 0 (grade 0 is non-relevant).
    MRR@k is averaged over the same queries (MTEB does so; BEIR's own `mrr` divides by all qrels queries,
    which differs only when the run lacks some). BEIR also drops documents whose id equals the query id by
    default; that is not done here (SciFact's query and document ids never coincide).
    Ranks are the run's order (best score first, equal scores in the run's order) for every measure: the
    ir_measures providers break ties differently (trec_eval by docid descending, MS MARCO's RR ascending).
    """
    ranked = ranked_docids(run)
    if not ranked:
        raise RaytevError("the run has no queries: nothing to evaluate (was the search output empty?)")
    query_ids = list(ranked)
    chunks = ({query_id: ranked[query_id] for query_id in query_ids[low:low + QUERIES_PER_CHUNK]}
              for low in range(0, len(query_ids), QUERIES_PER_CHUNK))
    return evaluate_ranked_chunks(chunks, qrels, metrics)


def evaluate_run_file(path: str | os.PathLike, qrels: Sequence[Judgement],
                      metrics: Iterable[str | Measure] = DEFAULT_METRICS, queries_per_chunk: int = QUERIES_PER_CHUNK,
                      whole_run_bytes: int = WHOLE_RUN_BYTES) -> Evaluation:
    """evaluate_run of a run file, read a few hundred queries at a time: memory stays flat whatever its size
    (see iter_run_queries for the two size-dependent readings)."""
    problems = ProblemLog()
    chunks = (ranked_docids(run_entries(chunk))
              for chunk in iter_run_queries(path, problems, queries_per_chunk, whole_run_bytes))
    evaluation = evaluate_ranked_chunks(chunks, qrels, metrics)
    problems.raise_if_any()
    return evaluation


def evaluate_ranked_chunks(chunks: Iterable[dict[str, list[str]]], qrels: Sequence[Judgement],
                           metrics: Iterable[str | Measure] = DEFAULT_METRICS) -> Evaluation:
    """evaluate_run over a run given as chunks of {query id: docids, best first}, each query in one chunk only.

    Every measure is averaged by its own ir_measures aggregator, fed query by query, so the result equals one
    ir_measures.calc_aggregate over the whole run however it is cut.
    """
    judged = _judgements_by_query(qrels)
    if not judged:
        raise RaytevError("the qrels have no judgements: nothing to evaluate against")
    measures = parse_metrics(metrics)
    aggregators = {measure: measure.aggregator() for measure in measures.values()}
    run_queries, evaluated, examples = 0, 0, []
    for ranked in chunks:
        run_queries += len(ranked)
        examples = examples or sorted(ranked)[:3]
        in_both = [query_id for query_id in ranked if query_id in judged]
        # Strictly decreasing scores that encode the run's ranks, so that no provider re-breaks ties its own way.
        run_scores = {query_id: {docid: float(len(ranked[query_id]) - rank)
                                 for rank, docid in enumerate(ranked[query_id])} for query_id in in_both}
        # Qrels of the evaluated queries only: ir_measures adds every other qrels query to the average as a zero.
        for metric in ir_measures.iter_calc(list(aggregators), {q: judged[q] for q in in_both}, run_scores):
            aggregators[metric.measure].add(metric.value)
        evaluated += len(in_both)
    if not run_queries:
        raise RaytevError("the run has no queries: nothing to evaluate (was the search output empty?)")
    if not evaluated:
        raise RaytevError(
            f"the run and the qrels share no query: the run has {run_queries} queries (ids "
            f"{', '.join(repr(q) for q in examples)}, ...), the qrels {_examples(judged)}. Check that both come from "
            f"the same dataset and split (e.g. test qrels for a test-query run).")
    return Evaluation({name: float(aggregators[measure].result()) for name, measure in measures.items()},
                      queries=evaluated, missing_queries=len(judged) - evaluated)


def _judgements_by_query(qrels: Sequence[Judgement]) -> dict[str, dict[str, int]]:
    judged: dict[str, dict[str, int]] = {}
    for judgement in qrels:
        judged.setdefault(judgement.query_id, {})[judgement.docid] = judgement.relevance
    return judged


def _examples(query_ids) -> str:
    shown = sorted(query_ids)[:3]
    more = f" and {len(query_ids) - len(shown)} more" if len(query_ids) > len(shown) else ""
    return f"{len(query_ids)} queries (ids {', '.join(repr(q) for q in shown)}{more})"


def format_table(metrics: Mapping[str, float], title: str = "") -> str:
    """An aligned `metric  value` table (4 decimals); an Evaluation adds a line saying which queries it covers."""
    width = max([len("metric"), *(len(name) for name in metrics)])
    values = {name: f"{value:.4f}" for name, value in metrics.items()}
    value_width = max([len("value"), *(len(text) for text in values.values())])
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  {'value':>{value_width}}")
    lines += [f"{name:<{width}}  {text:>{value_width}}" for name, text in values.items()]
    if isinstance(metrics, Evaluation):
        lines.append(coverage_line(metrics))
    return "\n".join(lines)


def coverage_line(evaluation: Evaluation) -> str:
    """One line: how many queries the values average over, and what became of those the run lacks."""
    line = f"averaged over {evaluation.queries} queries"
    if evaluation.missing_queries:
        fate = "counted as misses" if evaluation.missing_scored_zero else "left out of the average"
        line += f"; {evaluation.missing_queries} not in the run ({fate})"
    return line


def format_json(metrics: Mapping[str, float]) -> str:
    """The metrics dict as JSON (metric name → value), the form results files and benchmarks store."""
    return json.dumps(dict(metrics), indent=2)
