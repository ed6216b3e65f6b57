"""Contrastive loss in JAX: each query against every passage of the batch, across devices when asked; a pure
function of the embeddings, so it composes with grad, jit and shard_map."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from raytev.tevax.encoder import at_least_float32


def contrastive_loss(q_reps: jax.Array, p_reps: jax.Array, temperature: float = 1.0,
                     axis_name: str | None = None, gather_negatives: bool = True) -> jax.Array:
    """Mean cross-entropy of q·pᵀ/temperature with each query's positive first in its group of passages.

    Inside shard_map over `axis_name`, each device scores its queries against the passages of all devices
    (with `gather_negatives`) and the loss is averaged over devices: the loss of the global batch on every
    device. Take gradients of this averaged loss: all_gather's transpose hands each device its passages' share,
    so nothing is scaled by the device count by hand.
    """
    q_reps, p_reps = at_least_float32(q_reps), at_least_float32(p_reps)
    group_size = p_reps.shape[0] // q_reps.shape[0]
    offset = 0
    if axis_name is not None and gather_negatives:
        offset = jax.lax.axis_index(axis_name) * p_reps.shape[0]  # this device's passages within the gathered ones
        p_reps = jax.lax.all_gather(p_reps, axis_name, tiled=True)
    scores = q_reps @ p_reps.T / temperature
    targets = jnp.arange(q_reps.shape[0]) * group_size + offset
    loss = optax.softmax_cross_entropy_with_integer_labels(scores, targets).mean()
    return jax.lax.pmean(loss, axis_name) if axis_name is not None else loss
