"""Scores (query, passage) pairs of token ids with a cross-encoder: what `raytev rerank`'s actors, the distillation
teacher and the served reranker share."""

from __future__ import annotations

import numpy as np

from raytev.data.pairs import PairTemplate
from raytev.model.resolved import ResolvedModel


class PairScorer:
    """Pairs of bare segments joined by a PairTemplate and scored by the torch Reranker, in batches of similar
    length."""

    def __init__(self, model: ResolvedModel, pairs: PairTemplate, batch_size: int, device: str = "cpu",
                 torch_threads: int | None = None):
        self.pairs, self.batch_size = pairs, batch_size
        self.score = torch_scorer(model, device, torch_threads)

    def __call__(self, queries: list, passages: list) -> np.ndarray:
        """float32 scores of the pairs, longest first in batches (little padding), returned in their order."""
        order = np.argsort([-(len(query) + len(passage)) for query, passage in zip(queries, passages)], kind="stable")
        scores = np.empty(len(order), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            scores[chosen] = self.score(self.pairs.batch([queries[i] for i in chosen], [passages[i] for i in chosen]))
        return scores


def torch_scorer(model: ResolvedModel, device: str, torch_threads: int | None):
    """Padded pair arrays -> float32 numpy scores with the torch Reranker (in --bf16 / --fp16 weights if asked)."""
    import torch

    from raytev.modeling.reranker import Reranker

    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = torch.device(device)
    weights = getattr(torch, model.dtype) if model.dtype else torch.float32
    reranker = Reranker.from_resolved(model).to(device, weights).eval()

    def run(pairs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return reranker({name: torch.from_numpy(array).to(device) for name, array in pairs.items()}).cpu().numpy()

    return run
