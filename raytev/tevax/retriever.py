"""A dense retriever in JAX: one encoder's parameters (`TiedParams`) or a query and a passage encoder's
(`DualParams`), pooled and normalized embeddings, and raytev folders read and written as the torch side does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from raytev.data.model_folder import DenseModelSettings, ResolvedModel, check_pooling, read_saved_settings
from raytev.errors import RaytevError
from raytev.staging import staged_directory
from raytev.tevax.encoder import at_least_float32
from raytev.tevax.hf_folder import load_encoder, save_encoder

QUERY_SUBFOLDER = "query_model"  # the torch side's names (raytev.modeling.dense), so either backend reads either
PASSAGE_SUBFOLDER = "passage_model"
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


def load_retriever(path: str, settings: DenseModelSettings, dtype: str | None = None,
                   cache_dir: str | None = None) -> tuple[Retriever, TiedParams | DualParams]:
    """The retriever and parameters of a model folder with these settings; `dtype` is the compute dtype
    (parameters stay float32). A raytev untied save gives both encoders; untied settings over a single
    encoder start both from it."""
    compute = COMPUTE_DTYPES[dtype]
    saved = read_saved_settings(path, cache_dir)
    if saved is not None and saved.untied:
        loaded = [load_encoder(f"{path}/{QUERY_SUBFOLDER}", compute, cache_dir),
                  load_encoder(f"{path}/{PASSAGE_SUBFOLDER}", compute, cache_dir)]
    else:
        loaded = [load_encoder(path, compute, cache_dir)]
    graphdef, first = nnx.split(loaded[0].module)
    if settings.untied:
        second = nnx.split(loaded[-1].module)[1] if len(loaded) > 1 else jax.tree.map(jnp.copy, first)
        params = DualParams(first, second)
    else:
        params = TiedParams(first)
    return Retriever(graphdef, settings, loaded[0].hf_config, tuple(item.carried for item in loaded)), params


def load_resolved(model: ResolvedModel, dtype: str | None = None) -> tuple[Retriever, TiedParams | DualParams]:
    """load_retriever for a stage's ResolvedModel (LoRA adapters are the torch backend's for now)."""
    if model.adapter:
        raise RaytevError(f"'{model.adapter}' is a LoRA adapter, which the JAX backend does not read yet: encode "
                          "with --backend torch, or give the folder `raytev train --save_merged_model` wrote "
                          "(output_dir/merged).")
    return load_retriever(model.path, model.settings, dtype, model.cache_dir)

