"""The reranker deployment: a cross-encoder loaded once per replica that rescores the top hits of text queries.

The reranker is resolved as `raytev rerank` resolves it (resolve_reranker: its pair length and prompts, else the
flags'), its texts become bare segments through TextTokenizer and are joined and scored by the PairScorer its actors
run, so a served query's reranked scores are the ones `raytev rerank` writes for the same passages. Concurrent
requests share batches; a swap of --reranker_name_or_path (or its length, precision, revision) loads the new one
beside the old, as the query encoder's model is swapped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from ray import serve

from raytev.config.sections import InferenceSection, ModelSection, PrecisionSection
from raytev.data.pairs import PairTemplate
from raytev.data.tokenize import TextTokenizer, pad_token_id
from raytev.model.resolved import resolve_reranker
from raytev.reranking.scorer import PairScorer
from raytev.serving.encoder import section_of
from raytev.serving.replica import RerankAnswer, RerankCall, VersionedBatchReplica, split_rows
from raytev.serving.swaps import HeldVersion


@dataclass
class LoadedReranker:
    """A cross-encoder ready to score texts: its segment tokenizers, its scorer, the name it answers for."""

    name: str
    queries: TextTokenizer
    passages: TextTokenizer
    score: PairScorer

    def rerank(self, texts: list[str], passages: list[list[str]]) -> list[np.ndarray]:
        """float32 scores of each query's passages, an array per query in their order."""
        counts = [len(group) for group in passages]
        flat = [passage for group in passages for passage in group]
        if not flat:
            return [np.empty(0, np.float32) for _ in texts]
        query_tokens = self.queries(texts)
        scores = self.score([query_tokens[number] for number, count in enumerate(counts) for _ in range(count)],
                            self.passages(flat))
        return split_rows(scores, counts)


def load_reranker(user_config: dict, device: str = "cpu") -> LoadedReranker:
    """The cross-encoder a user_config names (a sequence classifier with one label, else a RaytevError)."""
    from raytev.modeling.reranker import check_reranker_folder

    model = resolve_reranker(ModelSection(model_name_or_path=user_config["reranker_name_or_path"]), None,
                             section_of(PrecisionSection, user_config), user_config.get("rerank_max_len"))
    if model.adapter is None:
        check_reranker_folder(model.path, model.cache_dir)
    tokenizer = model.load_tokenizer()
    pairs = PairTemplate.from_tokenizer(tokenizer, model.passage_max_len, model.append_eos_token,
                                        pad_token_id(tokenizer))
    batch_size = section_of(InferenceSection, user_config).per_device_eval_batch_size
    return LoadedReranker(model.name, TextTokenizer.for_queries(model, tokenizer),
                          TextTokenizer.for_passages(model, tokenizer), PairScorer(model, pairs, batch_size, device))


@serve.deployment(name="Reranker")
class Reranker(VersionedBatchReplica[LoadedReranker, RerankCall, RerankAnswer]):
    """Scores (query text, passage text) pairs with the cross-encoder its user_config names."""

    answer_type = RerankAnswer

    def __init__(self, use_gpu: bool = False):
        self.device = "cuda" if use_gpu else "cpu"
        super().__init__("reranker")

    def load(self, user_config: dict) -> LoadedReranker:
        """The reranker the user_config names, on this replica's device."""
        return load_reranker(user_config, self.device)

    def describe_version(self, key: str, reranker: LoadedReranker) -> HeldVersion:
        """The reranker's name (it gives scores, not vectors: no dimension)."""
        return HeldVersion(key, reranker.name, 0)

    async def rerank(self, call: RerankCall) -> RerankAnswer:
        """One request's scores (what the ingress calls)."""
        return await self.answer(call)

    async def run_group(self, key: str, current: str | None, reranker: LoadedReranker,
                        calls: list[RerankCall]) -> list[RerankAnswer]:
        """The calls' pairs scored in shared forward passes."""
        # In a thread: torch releases the GIL, so the replica keeps taking requests meanwhile.
        scores = await asyncio.to_thread(reranker.rerank, [text for call in calls for text in call.texts],
                                         [group for call in calls for group in call.passages])
        sizes = np.cumsum([0] + [len(call.texts) for call in calls])
        return [RerankAnswer(key, current, scores[low:high]) for low, high in zip(sizes[:-1], sizes[1:])]
