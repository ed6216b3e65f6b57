"""GradCache (Gao et al., 2021): a large-batch contrastive step computed chunk by chunk in bounded memory.

Pass 1 embeds every chunk without a graph; the full-batch loss is back-propagated to those embeddings
only; pass 2 re-runs each chunk with a graph from the same RNG state (so dropout masks repeat) and
back-propagates the cached embedding gradients. Parameter gradients then equal a full-batch step's.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from raytev.errors import RaytevError
from raytev.modeling.rng_state import RngState
from raytev.modeling.training_step import (
    backward_loss,
    forward_precision,
    passage_inputs,
    query_inputs,
    unwrap,
)


def split_inputs(inputs: dict, chunk_size: int) -> list[dict]:
    """Cut encoder inputs into consecutive row chunks of at most `chunk_size`."""
    if chunk_size < 1:
        raise RaytevError(f"GradCache chunk sizes must be at least 1, got {chunk_size}")
    columns = {name: tensor.split(chunk_size) for name, tensor in inputs.items()}
    return [dict(zip(columns, parts)) for parts in zip(*columns.values())]


def _embed(model: torch.nn.Module, side: str, chunk: dict) -> torch.Tensor:
    """One chunk's embeddings through the (possibly DDP-wrapped) model's forward."""
    output = model(**{side: chunk})
    return output.q_reps if side == "query" else output.p_reps


def grad_cache_step(
    model: torch.nn.Module,
    batch: dict,
    *,
    q_chunk_size: int = 4,
    p_chunk_size: int = 32,
    autocast_dtype: torch.dtype | None = None,
    scaler=None,
) -> torch.Tensor:
    """Same effect as plain_step (loss returned detached, `.grad` filled), holding one chunk's graph at a time."""
    chunks = [("query", chunk) for chunk in split_inputs(query_inputs(batch), q_chunk_size)]
    chunks += [("passage", chunk) for chunk in split_inputs(passage_inputs(batch), p_chunk_size)]

    states, cached = [], []
    with torch.no_grad():
        for side, chunk in chunks:
            states.append(RngState.capture())
            with forward_precision(model, autocast_dtype):
                cached.append(_embed(model, side, chunk))

    num_query_chunks = sum(side == "query" for side, _ in chunks)
    q_reps = torch.cat(cached[:num_query_chunks]).requires_grad_()
    p_reps = torch.cat(cached[num_query_chunks:]).requires_grad_()
    with forward_precision(model, autocast_dtype):
        _, loss = unwrap(model).compute_loss(q_reps, p_reps)
    backward_loss(loss, scaler)  # reaches only the cached embeddings: they are graph leaves
    rep_grads = [*q_reps.grad.split([len(r) for r in cached[:num_query_chunks]]),
                 *p_reps.grad.split([len(r) for r in cached[num_query_chunks:]])]

    # Under DDP, all-reduce gradients once: after the last chunk's backward, not after each one.
    no_sync = getattr(model, "no_sync", None)
    for index, ((side, chunk), state, rep_grad) in enumerate(zip(chunks, states, rep_grads)):
        is_last = index == len(chunks) - 1
        with (no_sync() if no_sync is not None and not is_last else nullcontext()):
            with state.replay(), forward_precision(model, autocast_dtype):
                reps = _embed(model, side, chunk)
            (reps * rep_grad).sum().backward()
    return loss.detach()
