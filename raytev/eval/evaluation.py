"""The result of an evaluation: metric name → value, with the query counts behind the averages."""

from __future__ import annotations

from collections.abc import Mapping


class Evaluation(dict):
    """Metric name → value, a plain dict (its JSON form), plus how many queries the values cover.

    `queries` is how many queries the values are averaged over; `missing_queries` is how many queries the
    qrels (or answers) name that the run lacks; `missing_scored_zero` says whether those are inside the
    average as zeros (QA accuracy) or left out of it (ranking metrics, as BEIR and MTEB do).
    """

    def __init__(self, metrics: Mapping[str, float], queries: int, missing_queries: int,
                 missing_scored_zero: bool = False):
        super().__init__(metrics)
        self.queries = queries
        self.missing_queries = missing_queries
        self.missing_scored_zero = missing_scored_zero

    def __repr__(self) -> str:
        return (f"Evaluation({dict(self)!r}, queries={self.queries}, missing_queries={self.missing_queries}, "
                f"missing_scored_zero={self.missing_scored_zero})")
