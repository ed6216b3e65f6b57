"""The query-encoder deployment: the model loaded once per replica, concurrent queries encoded in one pass.

The model is resolved from the user_config's flags with resolve_model, as every stage resolves it: its own
query prompt (sentence-transformers' or raytev_model.json's), lengths, pooling and normalization apply unless
a flag says otherwise. Texts become tokens through TextTokenizer.for_queries, as `raytev encode
--encode_is_query` makes them, and vectors come from the same BatchEncoder its actors run, so a served text
query searches with the vector the encoding path would give it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from ray import serve

from raytev.config.fields import flag_fields, from_flags
from raytev.config.sections import InferenceSection, PrecisionSection, QueryModelSection, TextSection
from raytev.data.tokenize import TextTokenizer, pad_token_id
from raytev.errors import RaytevError
from raytev.model.resolved import resolve_model
from raytev.serving.replica import EncodeAnswer, EncodeCall, VersionedBatchReplica, split_rows
from raytev.serving.swaps import HeldVersion


@dataclass
class QueryModel:
    """A loaded query encoder: its tokenization, its BatchEncoder, and the model name it answers for."""

    name: str
    tokenize: TextTokenizer
    encoder: object  # raytev.encoding.batch_encoder.BatchEncoder (torch: imported where the model loads)
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors [len(texts), dim] of query texts."""
        tokens = self.tokenize(texts)
        batch = {"row": np.arange(len(texts)), "id": np.arange(len(texts)), "input_ids": tokens}
        return self.encoder(batch)["embedding"]


def section_of(section_class: type, user_config: dict):
    """The section `section_class` with the user_config's values of its flags (the others at their defaults)."""
    names = flag_fields(section_class)
    return from_flags(section_class, {name: value for name, value in user_config.items() if name in names},
                      "the QueryEncoder's user_config")


def load_query_model(user_config: dict, device: str = "cpu") -> QueryModel:
    """The query encoder a user_config describes, tokenizing as `raytev encode --encode_is_query` does."""
    from raytev.encoding.batch_encoder import BatchEncoder

    model_section = section_of(QueryModelSection, user_config)
    if not model_section.model_name_or_path:
        raise RaytevError("the QueryEncoder's user_config has no model_name_or_path: name the model that encodes "
                          "query texts (a service without one takes vectors only and has no QueryEncoder).")
    model = resolve_model(model_section, section_of(TextSection, user_config),
                          section_of(PrecisionSection, user_config))
    tokenizer = model.load_tokenizer()
    encoder = BatchEncoder(model, is_query=True, id_column="id",
                           batch_size=section_of(InferenceSection, user_config).per_device_eval_batch_size,
                           pad_token_id=pad_token_id(tokenizer), device=device)
    return QueryModel(model.name, TextTokenizer.for_queries(model, tokenizer), encoder, model.hidden_size())


@serve.deployment(name="QueryEncoder")
class QueryEncoder(VersionedBatchReplica[QueryModel, EncodeCall, EncodeAnswer]):
    """Encodes query texts with the model its user_config names (on a GPU with `use_gpu`)."""

    answer_type = EncodeAnswer

    def __init__(self, use_gpu: bool = False):
        self.device = "cuda" if use_gpu else "cpu"
        super().__init__("query model")

    def load(self, user_config: dict) -> QueryModel:
        """The model the user_config names, on this replica's device."""
        return load_query_model(user_config, self.device)

    def describe_version(self, key: str, model: QueryModel) -> HeldVersion:
        """The model's name and dimension."""
        return HeldVersion(key, model.name, model.dim)

    async def encode(self, call: EncodeCall) -> EncodeAnswer:
        """One request's query vectors (what the ingress calls)."""
        return await self.answer(call)

    async def run_group(self, key: str, current: str | None, model: QueryModel,
                        calls: list[EncodeCall]) -> list[EncodeAnswer]:
        """The calls' texts encoded in shared forward passes."""
        # In a thread: torch releases the GIL, so the replica keeps taking requests meanwhile.
        vectors = await asyncio.to_thread(model.encode, [text for call in calls for text in call.texts])
        return [EncodeAnswer(key, current, part) for part in split_rows(vectors, [len(call.texts) for call in calls])]
