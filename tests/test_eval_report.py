"""Metric tables and JSON: exact text, four decimals, and the line saying which queries the values cover."""

from __future__ import annotations

import json

from raytev.eval.metrics import Evaluation
from raytev.eval.metrics import format_json, format_table


def test_table_is_aligned_with_four_decimals():
    table = format_table({"nDCG@10": 0.48831305, "MRR@10": 0.4166666, "R@1000": 1.0})
    assert table == ("metric    value\n"
                     "nDCG@10  0.4883\n"
                     "MRR@10   0.4167\n"
                     "R@1000   1.0000")


def test_table_with_a_title_and_the_query_coverage():
    evaluation = Evaluation({"MAP": 0.33333}, queries=2, missing_queries=1)
    assert format_table(evaluation, title="scifact test") == ("scifact test\n"
                                                              "metric   value\n"
                                                              "MAP     0.3333\n"
                                                              "averaged over 2 queries; 1 not in the run "
                                                              "(left out of the average)")


def test_coverage_line_for_qa_counts_missing_queries_as_misses():
    evaluation = Evaluation({"Top-20": 0.8}, queries=5, missing_queries=1, missing_scored_zero=True)
    assert format_table(evaluation).splitlines()[-1] == "averaged over 5 queries; 1 not in the run (counted as misses)"
    complete = Evaluation({"Top-20": 0.8}, queries=5, missing_queries=0)
    assert format_table(complete).splitlines()[-1] == "averaged over 5 queries"


def test_json_is_the_metrics_dict():
    evaluation = Evaluation({"nDCG@10": 0.5, "MRR@10": 0.25}, queries=3, missing_queries=0)
    text = format_json(evaluation)
    assert json.loads(text) == {"nDCG@10": 0.5, "MRR@10": 0.25}
    assert list(json.loads(text)) == ["nDCG@10", "MRR@10"]
    assert json.loads(json.dumps(evaluation)) == {"nDCG@10": 0.5, "MRR@10": 0.25}  # a plain dict to json too


def test_evaluation_is_a_dict_that_carries_its_counts():
    evaluation = Evaluation({"MAP": 0.5}, queries=4, missing_queries=2)
    assert evaluation == {"MAP": 0.5}
    assert (evaluation.queries, evaluation.missing_queries, evaluation.missing_scored_zero) == (4, 2, False)
    assert repr(evaluation) == "Evaluation({'MAP': 0.5}, queries=4, missing_queries=2, missing_scored_zero=False)"
