"""The query-encoder deployment: the model loaded once per replica, concurrent queries encoded in one pass.

Texts become tokens exactly as `raytev encode --encode_is_query` makes them (the same tokenizer folder, max
length, prefix and EOS rule through TextTokenizer) and vectors come from the same BatchEncoder its actors run,
so a served text query searches with the vector the encoding path would give it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import numpy as np
from ray import serve

from raytev.serve.batching import BatchRunner
from raytev.serve.messages import EncodeAnswer, EncodeCall
from raytev.serve.swap import Swapper

# The user_config keys that decide which model is loaded and how it tokenizes; the rest (batching) apply live.
MODEL_KEYS = ("model_name_or_path", "tokenizer_name", "cache_dir", "pooling", "normalize", "untie_encoder",
              "query_max_len", "query_prefix", "append_eos_token", "bf16", "fp16", "use_gpu",
              "per_device_eval_batch_size", "revision")


@dataclass
class QueryModel:
    """A loaded query encoder: its tokenization, its BatchEncoder, and the model name it answers for."""

    name: str
    tokenize: object  # raytev.data.tokenize.TextTokenizer
    encoder: object  # raytev.encoding.batch_encoder.BatchEncoder
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors [len(texts), dim] of query texts."""
        tokens = self.tokenize(texts)
        batch = {"row": np.arange(len(texts)), "id": np.arange(len(texts)), "input_ids": tokens}
        return self.encoder(batch)["embedding"]


def model_key(config: dict) -> str:
    """What names a loaded model: every setting that changes its vectors."""
    return json.dumps({name: config.get(name) for name in MODEL_KEYS}, sort_keys=True)


def load_query_model(config: dict) -> QueryModel:
    """The query encoder a user_config describes, tokenizing as `raytev encode --encode_is_query` does."""
    from raytev.args import DataArguments, ModelArguments
    from raytev.bundled import resolve_model_path
    from raytev.data.prepare import pad_token_id, with_max_lengths
    from raytev.data.tokenize import TextTokenizer, load_tokenizer, tokenizer_dir
    from raytev.encoding.batch_encoder import BatchEncoder
    from raytev.encoding.encoder import model_options
    from raytev.modeling.dense import describe_model

    model = ModelArguments(model_name_or_path=config["model_name_or_path"], tokenizer_name=config.get("tokenizer_name"),
                           cache_dir=config.get("cache_dir"), pooling=config.get("pooling"),
                           normalize=config.get("normalize"), untie_encoder=config.get("untie_encoder"))
    source = resolve_model_path(model.model_name_or_path)
    folder = tokenizer_dir(model.tokenizer_name or model.model_name_or_path, cache_dir=model.cache_dir)
    data = with_max_lengths(DataArguments(query_max_len=config.get("query_max_len"),
                                          query_prefix=config.get("query_prefix") or "",
                                          append_eos_token=bool(config.get("append_eos_token"))), folder)
    tokenizer = load_tokenizer(folder)
    _, dim = describe_model(source, **model_options(model))
    dtype = "bfloat16" if config.get("bf16") else "float16" if config.get("fp16") else None
    encoder = BatchEncoder(source, model_options(model), is_query=True, id_column="id",
                           batch_size=config.get("per_device_eval_batch_size") or 32,
                           pad_token_id=pad_token_id(tokenizer), dtype=dtype,
                           device="cuda" if config.get("use_gpu") else "cpu")
    return QueryModel(config["model_name_or_path"],
                      TextTokenizer(tokenizer, data.query_max_len, data.query_prefix, data.append_eos_token),
                      encoder, dim)


@serve.deployment(name="QueryEncoder")
class QueryEncoder:
    """Encodes query texts with the model its user_config names."""

    def __init__(self):
        self.models: Swapper[QueryModel] = Swapper(load_query_model, "query model")
        self.runner: BatchRunner[EncodeCall, EncodeAnswer] = BatchRunner(self._encode_batch)

    async def reconfigure(self, config: dict) -> None:
        """Apply batching now; load a new model (in the background once serving)."""
        self._queue.set_max_batch_size(config["max_batch_size"])
        self._queue.set_batch_wait_timeout_s(config["batch_wait_timeout_s"])
        self.runner.max_size = config["max_batch_size"]
        await self.models.configure(model_key(config), config)

    async def describe(self) -> dict:
        """The models held (current first) and the last failed swap."""
        held = [{"key": key, "model": model.name, "dim": model.dim} for key, model in self.models.versions.items()]
        return {"held": held, "error": self.models.error}

    async def encode(self, call: EncodeCall) -> EncodeAnswer:
        """One request's query vectors (what the ingress calls)."""
        return await (await self._queue(call))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # reconfigure sets both
    async def _queue(self, calls: list[EncodeCall]) -> list[asyncio.Future]:
        """Serve's batch of requests, queued to be encoded with all others waiting (see batching.py)."""
        return self.runner.submit(calls)

    async def _encode_batch(self, calls: list[EncodeCall]) -> list[EncodeAnswer]:
        """Every call's vectors; calls for the same model share forward passes."""
        current = self.models.versions.current_key
        answers: list[EncodeAnswer | None] = [None] * len(calls)
        groups: dict[str, tuple[QueryModel, list[int]]] = {}
        for number, call in enumerate(calls):
            held = self.models.versions.get(call.model_key)
            if held is None:
                answers[number] = EncodeAnswer(None, current)
            else:
                groups.setdefault(held[0], (held[1], []))[1].append(number)
        for key, (model, members) in groups.items():
            texts = [text for number in members for text in calls[number].texts]
            # In a thread: torch releases the GIL, so the replica keeps taking requests meanwhile.
            vectors = await asyncio.to_thread(model.encode, texts)
            start = 0
            for number in members:
                size = len(calls[number].texts)
                answers[number] = EncodeAnswer(key, current, vectors[start:start + size])
                start += size
        return answers
