"""A dense retriever in JAX: one encoder's parameters (`TiedParams`) or a query and a passage encoder's
(`DualParams`), pooled and normalized embeddings, and raytev folders read and written as the torch side does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from raytev.errors import RaytevError
from raytev.model.files import PASSAGE_SUBFOLDER, QUERY_SUBFOLDER
from raytev.model.resolved import ResolvedModel
from raytev.model.settings import DenseModelSettings, check_pooling
from raytev.staging import staged_directory
from raytev.tevax.encoder import at_least_float32
from raytev.tevax.hf_folder import load_encoder, save_encoder

COMPUTE_DTYPES = {None: None, "float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@flax.struct.dataclass
class TiedParams:
    """One encoder reads queries and passages."""

    encoder: nnx.State

    @property
    def query(self) -> nnx.State:
        """Parameters that encode queries."""
        return self.encoder

    @property
    def passage(self) -> nnx.State:
        """Parameters that encode passages."""
        return self.encoder


@flax.struct.dataclass
class DualParams:
    """Separate query and passage encoders (Tevatron's untied model)."""

    query_encoder: nnx.State
    passage_encoder: nnx.State

    @property
    def query(self) -> nnx.State:
        """Parameters that encode queries."""
        return self.query_encoder

    @property
    def passage(self) -> nnx.State:
        """Parameters that encode passages."""
        return self.passage_encoder


def pool(hidden: jax.Array, attention_mask: jax.Array, method: str) -> jax.Array:
    """[B, L, H] -> [B, H] in float32: the first token (cls), the masked mean, or the last real token."""
    method = check_pooling(method)
    hidden = at_least_float32(hidden)
    if method == "cls":
        return hidden[:, 0]
    if method == "mean":
        mask = attention_mask[..., None].astype(hidden.dtype)
        return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
    # The highest masked-in position is the last real token, whichever side the padding is on.
    last = jnp.argmax(attention_mask * jnp.arange(attention_mask.shape[1]), axis=1)
    return hidden[jnp.arange(hidden.shape[0]), last]


@dataclass(frozen=True)
class Retriever:
    """The static half of a JAX retriever (the encoder's graph and the dense settings); parameters go beside it
    as a TiedParams / DualParams pytree, so functions of (params, batch) stay pure for jit, grad and shard_map."""

    graphdef: nnx.GraphDef
    settings: DenseModelSettings
    hf_config: dict
    carried: tuple  # per encoder: the weights passed through unchanged to a saved folder

    def embed(self, side_params: nnx.State, input_ids: jax.Array, attention_mask: jax.Array,
              dropout_keys: jax.Array | None = None) -> jax.Array:
        """Pooled (and normalized, if set) float32 embeddings [B, H] of one encoder's parameters."""
        hidden = nnx.merge(self.graphdef, side_params)(input_ids, attention_mask, dropout_keys)
        reps = pool(hidden, attention_mask, self.settings.pooling)
        if self.settings.normalize:
            reps = reps / jnp.maximum(jnp.linalg.norm(reps, axis=-1, keepdims=True), 1e-12)
        return reps

    def embed_queries(self, params, input_ids, attention_mask, dropout_keys=None) -> jax.Array:
        """Query embeddings."""
        return self.embed(params.query, input_ids, attention_mask, dropout_keys)

    def embed_passages(self, params, input_ids, attention_mask, dropout_keys=None) -> jax.Array:
        """Passage embeddings."""
        return self.embed(params.passage, input_ids, attention_mask, dropout_keys)

    def save_pretrained(self, directory: str | Path, params: TiedParams | DualParams, tokenizer=None) -> None:
        """A raytev folder: HF weights at the top (tied) or in query_model/ and passage_model/ (untied), the
        settings (raytev_model.json) and the tokenizer; written under a temporary name, then renamed."""
        with staged_directory(directory) as staging:
            if isinstance(params, DualParams):
                save_encoder(staging / QUERY_SUBFOLDER, params.query_encoder, self.hf_config, self.carried[0])
                save_encoder(staging / PASSAGE_SUBFOLDER, params.passage_encoder, self.hf_config, self.carried[-1])
            else:
                save_encoder(staging, params.encoder, self.hf_config, self.carried[0])
            self.settings.save(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(staging))


def load_retriever(model: ResolvedModel, dtype: str | None = None) -> tuple[Retriever, TiedParams | DualParams]:
    """The retriever and parameters of a ResolvedModel; `dtype` is the compute dtype (parameters stay float32). An
    untied raytev save gives both encoders; untied settings over a single encoder start both from it."""
    if model.adapter:
        raise RaytevError(f"'{model.adapter}' is a LoRA adapter, which the JAX backend does not read yet: encode "
                          "with --backend torch, or give the folder `raytev train --save_merged_model` wrote "
                          "(output_dir/merged).")
    compute = COMPUTE_DTYPES[dtype]
    folders = [f"{model.path}/{QUERY_SUBFOLDER}", f"{model.path}/{PASSAGE_SUBFOLDER}"] if model.separate_encoders \
        else [model.path]
    loaded = [load_encoder(folder, compute, model.cache_dir) for folder in folders]
    graphdef, first = nnx.split(loaded[0].module)
    if model.settings.untied:
        second = nnx.split(loaded[-1].module)[1] if len(loaded) > 1 else jax.tree.map(jnp.copy, first)
        params = DualParams(first, second)
    else:
        params = TiedParams(first)
    return Retriever(graphdef, model.settings, loaded[0].hf_config, tuple(item.carried for item in loaded)), params
