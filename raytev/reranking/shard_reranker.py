"""One output part per call: read its queries' candidates from the cache, score every pair, write the part's run
lines where it runs. Reranking actors run this (the driver hears back counts only); `--num_actors 0` calls it
in-process."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads

from raytev.data.pairs import PairTemplate
from raytev.data.runs import write_run
from raytev.encoding.shard_encoder import read_row_range
from raytev.model.resolved import ResolvedModel
from raytev.reranking.scorer import PairScorer

COLUMNS = ["row", "query_id", "input_ids", "docids", "candidate_input_ids"]
GROUP_COLUMNS = ["row", "input_ids", "positive_input_ids", "negative_input_ids"]  # a training groups table's


def part_name(index: int) -> str:
    """The file name of output part `index`."""
    return f"part-{index:05d}.tsv"


class ShardReranker:
    """Scores the candidates of query rows [low, high) into run files of `output`; one per actor."""

    def __init__(self, table_files: list[str], output: str, model: ResolvedModel, pairs: PairTemplate,
                 batch_size: int, device: str = "cpu", torch_threads: int | None = None, run_format: str = "tevatron"):
        self.table = pads.dataset(table_files, format="parquet")
        self.output, self.run_format = output, run_format
        self.score_pairs = PairScorer(model, pairs, batch_size, device, torch_threads)

    def rerank_part(self, index: int, low: int, high: int) -> tuple[int, int, int]:
        """Rerank query rows [low, high) into part `index` (complete or absent); return (index, queries, pairs)."""
        from pathlib import Path

        rows = read_row_range(self.table, COLUMNS, low, high)
        queries = rows.column("input_ids").to_pylist()
        candidates = rows.column("candidate_input_ids").to_pylist()
        counts = np.array([len(group) for group in candidates], dtype=np.int64)
        flat_queries = [query for query, count in zip(queries, counts) for _ in range(count)]
        flat_passages = [passage for group in candidates for passage in group]
        scores = self.score_pairs(flat_queries, flat_passages)
        depth = int(counts.max(initial=0))
        # Each query's candidates best first (the first stage's order among equal scores); short lists padded.
        ranked_scores = np.full((len(counts), depth), -np.inf, dtype=np.float32)
        ranked_docids = np.full((len(counts), depth), None, dtype=object)
        docids = rows.column("docids").to_pylist()
        start = 0
        for query, count in enumerate(counts):
            group = scores[start:start + count]
            order = np.argsort(-group, kind="stable")
            ranked_scores[query, :count] = group[order]
            ranked_docids[query, :count] = np.asarray(docids[query], dtype=object)[order]
            start += count
        write_run(Path(self.output) / part_name(index), rows.column("query_id").to_pylist(), ranked_scores,
                  ranked_docids, format=self.run_format)
        return index, len(counts), len(flat_passages)

    def score_groups(self, low: int, high: int) -> tuple[int, list[list[float]], list[list[float]]]:
        """Scores of every positive and negative of training-group rows [low, high): (low, positives' scores,
        negatives' scores), each a list per row in the table's order of passages."""
        rows = read_row_range(self.table, GROUP_COLUMNS, low, high)
        queries, lists = rows.column("input_ids").to_pylist(), []
        for name in ("positive_input_ids", "negative_input_ids"):
            groups = rows.column(name).to_pylist()
            pairs = [(query, passage) for query, group in zip(queries, groups) for passage in group]
            scores = iter(self.score_pairs([query for query, _ in pairs], [passage for _, passage in pairs]).tolist())
            lists.append([[next(scores) for _ in group] for group in groups])
        return low, lists[0], lists[1]
