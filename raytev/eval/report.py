"""Evaluation results as an aligned text table or JSON; printing is the caller's job."""

from __future__ import annotations

import json
from collections.abc import Mapping

from raytev.eval.evaluation import Evaluation


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
