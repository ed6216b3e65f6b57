"""Ranking metrics: hand-computed values, BEIR's averaging convention, the run's tie order, and clear errors."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from raytev.data.qrels import Judgement, read_qrels
from raytev.data.runs import read_run
from raytev.errors import DataError, ProblemLog, RaytevError
from raytev.eval.metrics import DEFAULT_METRICS, evaluate_run, parse_metrics

BUNDLED_SCIFACT = Path(__file__).resolve().parents[1] / "raytev" / "data" / "bundled" / "scifact"


def judgements(*rows: tuple[str, str, int]) -> list[Judgement]:
    return [Judgement(line, query_id, docid, grade) for line, (query_id, docid, grade) in enumerate(rows, start=1)]


# q1 judges d1 (1), d3 (2), d9 (0 = non-relevant) and d7 (1, never retrieved); q2 judges d2; q4 is judged but
# the run lacks it; the run's q5 has no judgements.
HAND_QRELS = judgements(("q1", "d1", 1), ("q1", "d3", 2), ("q1", "d9", 0), ("q1", "d7", 1), ("q2", "d2", 1),
                        ("q4", "d1", 1))
HAND_RUN = {
    "q1": [("d9", 0.9), ("d1", 0.8), ("d4", 0.7), ("d3", 0.6)],  # ranks: d9 (0), d1 (1), d4 (unjudged), d3 (2)
    "q2": [("d6", 0.5), ("d8", 0.4), ("d2", 0.3)],  # the relevant d2 at rank 3
    "q5": [("d1", 1.0)],
}
# q1: DCG@10 = 1/log2(1+2) + 2/log2(1+4) = 0.6309297536 + 0.8613531161 = 1.4922828697
#     ideal grades 2, 1, 1: IDCG = 2/log2(2) + 1/log2(3) + 1/log2(4) = 2 + 0.6309297536 + 0.5 = 3.1309297536
#     nDCG@10 = 1.4922828697 / 3.1309297536 = 0.4766261102
#     RR@10 = 1/2 (first grade >= 1 at rank 2)
#     recall = 2 relevant retrieved (d1, d3) of 3 relevant (d1, d3, d7) = 2/3 (at 100 and at 1000)
#     AP = (precision at rank 2 + precision at rank 4) / 3 relevant = (1/2 + 2/4) / 3 = 1/3
# q2: nDCG@10 = (1/log2(4)) / 1 = 0.5;  RR = 1/3;  recall = 1;  AP = (1/3) / 1 = 1/3
# Averages over the 2 queries in both (q4 is left out, q5 ignored):
Q1_NDCG = (1 / math.log2(3) + 2 / math.log2(5)) / (2 + 1 / math.log2(3) + 1 / math.log2(4))
HAND_EXPECTED = {
    "nDCG@10": (Q1_NDCG + 0.5) / 2,  # = 0.4883130551
    "MRR@10": (1 / 2 + 1 / 3) / 2,  # = 0.4166666667
    "R@100": (2 / 3 + 1) / 2,  # = 0.8333333333
    "R@1000": (2 / 3 + 1) / 2,
    "MAP": (1 / 3 + 1 / 3) / 2,  # = 0.3333333333
}


def assert_metrics(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-6), name


def test_hand_computed_metrics():
    assert Q1_NDCG == pytest.approx(0.4766261102, abs=1e-9)
    evaluation = evaluate_run(HAND_RUN, HAND_QRELS)
    assert_metrics(evaluation, HAND_EXPECTED)
    assert evaluation["nDCG@10"] == pytest.approx(0.4883130551, abs=1e-9)
    assert (evaluation.queries, evaluation.missing_queries) == (2, 1)


def test_default_metric_keys_are_the_reported_names():
    assert DEFAULT_METRICS == ("nDCG@10", "MRR@10", "R@100", "R@1000", "MAP")
    assert list(evaluate_run(HAND_RUN, HAND_QRELS)) == ["nDCG@10", "MRR@10", "R@100", "R@1000", "MAP"]


def test_files_read_by_the_shared_parsers_give_the_same_numbers(tmp_path):
    qrels_path = tmp_path / "test.tsv"
    qrels_path.write_text("query-id\tcorpus-id\tscore\n"
                          + "".join(f"{j.query_id}\t{j.docid}\t{j.relevance}\n" for j in HAND_QRELS))
    run_path = tmp_path / "run.trec"
    # TREC six columns, written worst first: read_run ranks by score.
    run_path.write_text("".join(f"{query_id} Q0 {docid} {rank} {score} test\n"
                                for query_id, entries in HAND_RUN.items()
                                for rank, (docid, score) in reversed(list(enumerate(entries, start=1)))))
    problems = ProblemLog()
    evaluation = evaluate_run(read_run(run_path, problems), read_qrels(qrels_path, problems))
    assert not problems
    assert_metrics(evaluation, HAND_EXPECTED)


def test_beir_results_dicts_are_accepted():
    beir_results = {query_id: dict(entries) for query_id, entries in HAND_RUN.items()}
    assert_metrics(evaluate_run(beir_results, HAND_QRELS), HAND_EXPECTED)


def test_other_measures_use_ir_measures_names_and_cutoffs_apply():
    qrels = judgements(("q1", "d11", 1))
    run = {"q1": [(f"d{rank}", 100.0 - rank) for rank in range(1, 21)]}  # d11 at rank 11
    evaluation = evaluate_run(run, qrels, metrics=["MRR@10", "RR", "P@20", "nDCG@20", "Success@10"])
    assert_metrics(evaluation, {
        "MRR@10": 0.0,  # rank 11 is past the cut-off
        "MRR": 1 / 11,
        "P@20": 1 / 20,
        "nDCG@20": 1 / math.log2(12),  # = 0.2789429456
        "Success@10": 0.0,
    })


def test_parse_metrics_maps_names_to_ir_measures():
    measures = parse_metrics(["MAP", "RR@10", "R@100", "AP@100"])
    assert {name: str(measure) for name, measure in measures.items()} == {
        "MAP": "AP", "MRR@10": "RR@10", "R@100": "R@100", "MAP@100": "AP@100"}


def test_queries_missing_from_the_run_are_left_out_like_beir_and_not_zero_like_ir_measures():
    import ir_measures

    qrels = judgements(("q1", "a", 1), ("q2", "b", 1), ("q3", "c", 1), ("q4", "d", 1))
    run = {"q1": [("a", 1.0)], "q2": [("x", 2.0), ("b", 1.0)]}
    evaluation = evaluate_run(run, qrels, metrics=["nDCG@10"])
    # (1 + 1/log2(3)) / 2 queries in the run; q3 and q4 are reported, not averaged.
    assert evaluation["nDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2, abs=1e-9)  # 0.8154648768
    assert (evaluation.queries, evaluation.missing_queries) == (2, 2)
    # ir_measures alone would average the two missing queries in as zeros: (1 + 0.6309) / 4.
    plain = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1},
                                                                 "q4": {"d": 1}},
                                       {"q1": {"a": 1.0}, "q2": {"x": 2.0, "b": 1.0}})
    assert plain[ir_measures.nDCG @ 10] == pytest.approx((1 + 1 / math.log2(3)) / 4, abs=1e-9)


def test_a_query_judged_only_non_relevant_is_evaluated_as_zero():
    qrels = judgements(("q1", "a", 1), ("q2", "b", 0))
    run = {"q1": [("a", 1.0)], "q2": [("b", 1.0)]}
    evaluation = evaluate_run(run, qrels, metrics=["nDCG@10", "MRR@10", "R@100"])
    # pytrec_eval (and so BEIR) scores q2, whose only judgement is grade 0, as 0 on every measure.
    assert_metrics(evaluation, {"nDCG@10": 0.5, "MRR@10": 0.5, "R@100": 0.5})
    assert evaluation.queries == 2


def test_a_query_with_an_empty_result_list_counts_as_zero_like_pytrec_eval():
    qrels = judgements(("q1", "a", 1), ("q2", "b", 1))
    evaluation = evaluate_run({"q1": [("a", 1.0)], "q2": []}, qrels, metrics=["nDCG@10"])
    assert evaluation["nDCG@10"] == pytest.approx(0.5, abs=1e-9)
    assert (evaluation.queries, evaluation.missing_queries) == (2, 0)


def test_equal_scores_keep_the_run_order_for_every_measure():
    qrels = judgements(("q1", "a", 1))
    # trec_eval would rank b before a (docid descending) and MS MARCO's RR a before b; the run says a first.
    evaluation = evaluate_run({"q1": [("a", 1.0), ("b", 1.0)]}, qrels, metrics=["nDCG@10", "MRR@10", "MAP"])
    assert_metrics(evaluation, {"nDCG@10": 1.0, "MRR@10": 1.0, "MAP": 1.0})
    evaluation = evaluate_run({"q1": [("b", 1.0), ("a", 1.0)]}, qrels, metrics=["nDCG@10", "MRR@10", "MAP"])
    assert_metrics(evaluation, {"nDCG@10": 1 / math.log2(3), "MRR@10": 0.5, "MAP": 0.5})


def test_unsorted_pairs_are_ranked_by_score():
    qrels = judgements(("q1", "a", 1))
    evaluation = evaluate_run({"q1": [("b", 0.1), ("c", 0.3), ("a", 0.2)]}, qrels, metrics=["MRR@10"])
    assert evaluation["MRR@10"] == pytest.approx(0.5, abs=1e-9)  # c, a, b: a at rank 2


def test_matches_beir_averaging_of_pytrec_eval_on_a_random_run():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(7)
    qrels = {f"q{q}": {f"d{d}": rng.choice([0, 1, 1, 2]) for d in rng.sample(range(200), 6)} for q in range(40)}
    scores = iter(rng.sample(range(10**6), 40 * 150))  # distinct scores: no ties to break
    # 30 of the 40 judged queries, plus 5 queries without judgements.
    results = {f"q{q}": {f"d{d}": next(scores) / 10**6 for d in rng.sample(range(200), 150)}
               for q in [*range(30), *range(100, 105)]}
    # BEIR's EvaluateRetrieval.evaluate: pytrec_eval per query, summed, divided by len(scores).
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map"}).evaluate(results)
    assert len(per_query) == 30
    beir = {"nDCG@10": sum(s["ndcg_cut_10"] for s in per_query.values()) / len(per_query),
            "R@100": sum(s["recall_100"] for s in per_query.values()) / len(per_query),
            "MAP": sum(s["map"] for s in per_query.values()) / len(per_query)}
    # MTEB's mrr: reciprocal rank of the first grade > 0 in the top 10, averaged over the run's queries.
    reciprocal_ranks = []
    for query_id in per_query:
        ranked = sorted(results[query_id], key=lambda docid: -results[query_id][docid])[:10]
        reciprocal_ranks.append(next((1 / (rank + 1) for rank, docid in enumerate(ranked)
                                      if qrels[query_id].get(docid, 0) > 0), 0.0))
    beir["MRR@10"] = sum(reciprocal_ranks) / len(reciprocal_ranks)
    qrels_rows = [Judgement(0, q, d, grade) for q, docs in qrels.items() for d, grade in docs.items()]
    evaluation = evaluate_run({q: list(docs.items()) for q, docs in results.items()}, qrels_rows,
                              metrics=["nDCG@10", "R@100", "MAP", "MRR@10"])
    assert_metrics(evaluation, beir)
    assert 0.0 < evaluation["MAP"] < 1.0
    assert (evaluation.queries, evaluation.missing_queries) == (30, 10)


def test_a_perfect_run_on_bundled_scifact_scores_one():
    problems = ProblemLog()
    qrels = read_qrels(BUNDLED_SCIFACT / "qrels" / "test.tsv", problems)
    run: dict[str, list[tuple[str, float]]] = {}
    for judgement in qrels:
        run.setdefault(judgement.query_id, []).append((judgement.docid, 1.0))
    evaluation = evaluate_run(run, qrels)
    assert_metrics(evaluation, {"nDCG@10": 1.0, "MRR@10": 1.0, "R@100": 1.0, "R@1000": 1.0, "MAP": 1.0})
    assert (evaluation.queries, evaluation.missing_queries) == (300, 0)


# --- errors ---------------------------------------------------------------------------------------------

def test_a_run_sharing_no_query_with_the_qrels_is_an_error():
    qrels = judgements(("1", "d1", 1), ("3", "d2", 1))
    with pytest.raises(RaytevError, match=r"share no query.*'train-7'.*'1', '3'.*same dataset and split"):
        evaluate_run({"train-7": [("d1", 1.0)], "train-8": [("d2", 1.0)]}, qrels)


def test_empty_run_or_qrels_are_errors():
    with pytest.raises(RaytevError, match="the run has no queries"):
        evaluate_run({}, judgements(("q1", "a", 1)))
    with pytest.raises(RaytevError, match="the qrels have no judgements"):
        evaluate_run({"q1": [("a", 1.0)]}, [])


def test_unknown_or_unavailable_metrics_are_errors():
    run, qrels = {"q1": [("a", 1.0)]}, judgements(("q1", "a", 1))
    with pytest.raises(RaytevError, match=r"unknown metric 'nDGC@10'.*nDCG@10"):
        evaluate_run(run, qrels, metrics=["nDGC@10"])
    with pytest.raises(RaytevError, match=r"metric 'alpha_nDCG@10': no installed ir_measures provider"):
        evaluate_run(run, qrels, metrics=["alpha_nDCG@10"])
    with pytest.raises(RaytevError, match="no metric asked for"):
        evaluate_run(run, qrels, metrics=[])


def test_a_document_listed_twice_for_a_query_is_a_located_error(tmp_path):
    path = tmp_path / "run.tsv"
    path.write_text("q1\td1\t3.0\nq1\td2\t2.0\nq1\td1\t1.0\n")
    with pytest.raises(DataError, match=r"run:3: query 'q1' lists document 'd1' twice \(first at line 1\)"):
        evaluate_run(read_run(path, ProblemLog()), judgements(("q1", "d1", 1)))
