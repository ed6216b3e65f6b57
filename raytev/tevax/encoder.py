"""A Flax NNX transformer encoder for the BERT family (BERT, MiniLM, mBERT, coCondenser) and RoBERTa / XLM-R.

Attribute names mirror Hugging Face's modules (`encoder.layer.0.attention.self.query`), so a checkpoint's keys map
onto parameters by name alone (raytev.tevax.hf_folder). Dropout takes one key per row rather than one per call:
a row's masks then depend only on the step, the row and the site, so a batch cut into chunks (GradCache) or spread
over devices draws exactly the masks the whole batch would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from raytev.errors import RaytevError

# How Hugging Face names its activations; "gelu" is the exact (erf) form, not jax.nn.gelu's default tanh one.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
BERT_TYPES = ("bert",)
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")


@dataclass(frozen=True)
class EncoderConfig:
    """The architecture fields of a Hugging Face config.json that the encoder needs."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    @classmethod
    def from_hf(cls, config: dict, where: str = "config.json") -> EncoderConfig:
        """The encoder config of a Hugging Face config dict; a clear error for architectures not supported."""
        model_type = config.get("model_type")
        if model_type not in BERT_TYPES + ROBERTA_TYPES:
            raise RaytevError(f"{where}: model_type {model_type!r} has no JAX encoder yet (supported: "
                              f"{', '.join(BERT_TYPES + ROBERTA_TYPES)}); use --backend torch for it.")
        if config.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise RaytevError(f"{where}: hidden_act {config['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise RaytevError(f"{where}: position_embedding_type {config['position_embedding_type']!r} is not "
                              "supported by the JAX encoder (absolute only); use --backend torch.")
        names = [name for name in cls.__dataclass_fields__ if name in config and config[name] is not None]
        return cls(**{name: config[name] for name in names})

    @property
    def is_roberta(self) -> bool:
        """RoBERTa-style position ids: counted from pad_token_id + 1 over the non-padding tokens."""
        return self.model_type in ROBERTA_TYPES


def at_least_float32(x: jax.Array) -> jax.Array:
    """x in float32, or in float64 when it already is (equality tests run the whole model in float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def fold_keys(keys: jax.Array | None, site: int) -> jax.Array | None:
    """Per-row keys for one dropout site (None stays None: no dropout)."""
    return None if keys is None else jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, site)


def dropout(x: jax.Array, rate: float, keys: jax.Array | None) -> jax.Array:
    """Inverted dropout with one key per row of x; identity without keys or at rate 0."""
    if keys is None or rate == 0.0:
        return x
    keep = jax.vmap(lambda key: jax.random.bernoulli(key, 1.0 - rate, x.shape[1:]))(keys)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Embeddings(nnx.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: EncoderConfig, dtype, rngs: nnx.Rngs):
        self.config = config
        self.word_embeddings = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, rngs=rngs)
        self.position_embeddings = nnx.Embed(config.max_position_embeddings, config.hidden_size, dtype=dtype,
                                             rngs=rngs)
        self.token_type_embeddings = nnx.Embed(config.type_vocab_size, config.hidden_size, dtype=dtype, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, dtype=dtype,
                                       use_fast_variance=False, rngs=rngs)

    def __call__(self, input_ids: jax.Array, keys: jax.Array | None) -> jax.Array:
        if self.config.is_roberta:
            # As transformers' create_position_ids_from_input_ids: padding keeps padding_idx, tokens count on.
            real = (input_ids != self.config.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(real, axis=1) * real + self.config.pad_token_id
        else:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(jnp.zeros_like(input_ids)))
        return dropout(self.LayerNorm(x), self.config.hidden_dropout_prob, keys)


class SelfAttention(nnx.Module):
    """Multi-head scaled dot-product attention over the unmasked tokens."""

    def __init__(self, config: EncoderConfig, dtype, rngs: nnx.Rngs):
        self.config = config
        size = config.hidden_size
        self.query = nnx.Linear(size, size, dtype=dtype, rngs=rngs)
        self.key = nnx.Linear(size, size, dtype=dtype, rngs=rngs)
        self.value = nnx.Linear(size, size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask_bias: jax.Array, keys: jax.Array | None) -> jax.Array:
        heads = self.config.num_attention_heads
        batch, length, size = x.shape

        def split(projected):
            return projected.reshape(batch, length, heads, size // heads)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        # Scores and softmax in float32 whatever the compute dtype (as torch's autocast does).
        scores = at_least_float32(jnp.einsum("bqhd,bkhd->bhqk", q, k)) / math.sqrt(size // heads) + mask_bias
        probabilities = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        probabilities = dropout(probabilities, self.config.attention_probs_dropout_prob, keys)
        return jnp.einsum("bhqk,bkhd->bqhd", probabilities, v).reshape(batch, length, size)


class Output(nnx.Module):
    """Dense projection, dropout, then LayerNorm over the residual sum (BertSelfOutput and BertOutput)."""

    def __init__(self, config: EncoderConfig, in_size: int, dtype, rngs: nnx.Rngs):
        self.config = config
        self.dense = nnx.Linear(in_size, config.hidden_size, dtype=dtype, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, dtype=dtype,
                                       use_fast_variance=False, rngs=rngs)

    def __call__(self, x: jax.Array, residual: jax.Array, keys: jax.Array | None) -> jax.Array:
        return self.LayerNorm(dropout(self.dense(x), self.config.hidden_dropout_prob, keys) + residual)


class Attention(nnx.Module):
    """Self-attention and its output block."""

    def __init__(self, config: EncoderConfig, dtype, rngs: nnx.Rngs):
        self.self = SelfAttention(config, dtype, rngs)
        self.output = Output(config, config.hidden_size, dtype, rngs)

    def __call__(self, x: jax.Array, mask_bias: jax.Array, keys: jax.Array | None) -> jax.Array:
        return self.output(self.self(x, mask_bias, fold_keys(keys, 0)), x, fold_keys(keys, 1))


class Intermediate(nnx.Module):
    """The feed-forward block's expansion and activation."""

    def __init__(self, config: EncoderConfig, dtype, rngs: nnx.Rngs):
        self.config = config
        self.dense = nnx.Linear(config.hidden_size, config.intermediate_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.config.hidden_act](self.dense(x))


class Layer(nnx.Module):
    """One transformer layer: attention, then feed-forward, each with a residual LayerNorm."""

    def __init__(self, config: EncoderConfig, dtype, rngs: nnx.Rngs):
        self.attention = Attention(config, dtype, rngs)
        self.intermediate = Intermediate(config, dtype, rngs)
        self.output = Output(config, config.intermediate_size, dtype, rngs)

    def __call__(self, x: jax.Array, mask_bias: jax.Array, keys: jax.Array | None) -> jax.Array:
        attended = self.attention(x, mask_bias, fold_keys(keys, 0))
        return self.output(self.intermediate(attended), attended, fold_keys(keys, 1))


class Stack(nnx.Module):
    """The layers, applied in order."""

    def __init__(self, config: EncoderConfig, dtype, rngs: nnx.Rngs):
        self.layer = nnx.List([Layer(config, dtype, rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array, mask_bias: jax.Array, keys: jax.Array | None) -> jax.Array:
        for index, layer in enumerate(self.layer):
            x = layer(x, mask_bias, fold_keys(keys, index))
        return x


class Encoder(nnx.Module):
    """Token ids and attention mask [B, L] in, last hidden states [B, L, H] out (Hugging Face's BertModel /
    RobertaModel without the pooler, which dense retrieval does not use; hf_folder keeps its weights).

    `dtype`: the compute dtype (bfloat16 for mixed precision); None computes in the parameters' own dtype.
    """

    def __init__(self, config: EncoderConfig, dtype=None, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = Embeddings(config, dtype, rngs)
        self.encoder = Stack(config, dtype, rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 dropout_keys: jax.Array | None = None) -> jax.Array:
        """`dropout_keys`: one PRNG key per row, or None for no dropout (evaluation)."""
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        x = self.embeddings(input_ids, fold_keys(dropout_keys, 0))
        return self.encoder(x, mask_bias, fold_keys(dropout_keys, 1))
