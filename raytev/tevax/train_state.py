"""What JAX training carries from step to step (`RetrieverTrainState`) and the optimizer it applies: optax AdamW
with the torch path's schedule, weight-decay groups and clipping."""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import optax

from raytev.tevax.retriever import DualParams, TiedParams


@flax.struct.dataclass
class RetrieverTrainState:
    """Parameters, optimizer state, steps taken and the dropout key: a pytree, checkpointed as a whole."""

    step: jax.Array
    params: TiedParams | DualParams
    opt_state: optax.OptState
    dropout_key: jax.Array  # raw uint32 key data (serializes as a plain array)

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation, seed: int) -> RetrieverTrainState:
        """Step 0 of a run."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                   dropout_key=jax.random.key_data(jax.random.key(seed)))


def decays(path, _leaf) -> bool:
    """Whether weight decay applies: not to biases and LayerNorm scales (as the torch path and HF Trainer)."""
    names = [str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path]
    return names[-1] != "bias" and "LayerNorm" not in names


def learning_rate_schedule(peak: float, warmup_ratio: float, total_steps: int) -> optax.Schedule:
    """Linear warmup over ceil(warmup_ratio * total_steps) steps, then linear decay to 0 (transformers'
    get_linear_schedule_with_warmup, which the torch path uses)."""
    warmup = math.ceil(total_steps * warmup_ratio)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)),
                                 optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))], [warmup])


def build_optimizer(training, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping (--max_grad_norm, 0: off), then AdamW with the schedule and decay groups."""
    schedule = learning_rate_schedule(training.learning_rate, training.warmup_ratio, total_steps)
    adamw = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=training.weight_decay,
                        mask=lambda params: jax.tree_util.tree_map_with_path(decays, params))
    if training.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(training.max_grad_norm), adamw)
    return adamw
