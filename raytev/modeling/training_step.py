"""The training steps: the plain full-batch step, and GradCache (Gao et al., 2021) beside it with the same
interface, plus the pieces both share (inputs, autocast, scaled backward, RNG replay).

GradCache computes a large-batch contrastive step chunk by chunk in bounded memory: pass 1 embeds every chunk
without a graph; the full-batch loss is back-propagated to those embeddings only; pass 2 re-runs each chunk with
a graph from the same RNG state (so dropout masks repeat) and back-propagates the cached embedding gradients.
Parameter gradients then equal a full-batch step's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch

from raytev.errors import RaytevError
from raytev.modeling.dense import DenseModel
from raytev.modeling.loss import distillation_loss, group_scores
from raytev.modeling.reranker import grouped_softmax_loss

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def unwrap(model: torch.nn.Module) -> DenseModel:
    """The DenseModel inside a DistributedDataParallel (or similar `.module`) wrapper, or the model itself."""
    return getattr(model, "module", model)


def query_inputs(batch: dict) -> dict:
    """The query half of a training batch as encoder inputs."""
    return {"input_ids": batch["query_input_ids"], "attention_mask": batch["query_attention_mask"]}


def passage_inputs(batch: dict) -> dict:
    """The passage half of a training batch as encoder inputs."""
    return {"input_ids": batch["passage_input_ids"], "attention_mask": batch["passage_attention_mask"]}


def forward_precision(model: torch.nn.Module, autocast_dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to `autocast_dtype` on the model's device type, or nothing when it is None."""
    if autocast_dtype is None:
        return nullcontext()
    if autocast_dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast dtype must be one of {AUTOCAST_DTYPES} or None, got {autocast_dtype}")
    device_type = next(unwrap(model).parameters()).device.type
    return torch.autocast(device_type=device_type, dtype=autocast_dtype)


def backward_loss(loss: torch.Tensor, scaler=None) -> None:
    """loss.backward(), scaled first when a GradScaler is given (it unscales before the optimizer step)."""
    (scaler.scale(loss) if scaler is not None else loss).backward()


@contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Whether backward passes in the block reduce gradients across workers (DDP's no_sync, FSDP2's
    set_requires_gradient_sync); off, gradients accumulate locally until a later backward with it on. Nestable:
    inside an outer 'off', 'on' changes nothing."""
    if enabled:
        yield
        return
    no_sync = getattr(model, "no_sync", None)  # DDP
    if no_sync is not None:
        with no_sync():
            yield
        return
    if not hasattr(model, "set_requires_gradient_sync"):  # one process: nothing is reduced anyway
        yield
        return
    depth = getattr(model, "_raytev_sync_off_depth", 0)  # FSDP2 has no getter to restore from
    model._raytev_sync_off_depth = depth + 1
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model._raytev_sync_off_depth = depth
        if depth == 0:
            model.set_requires_gradient_sync(True)


def micro_batches(batch: dict, count: int) -> list[dict]:
    """Cut a training batch into `count` equal micro-batches of whole queries with their passage groups (passages
    are group-major, so the same cut applies to both)."""
    if count == 1:
        return [batch]
    rows = len(next(iter(batch.values())))  # queries first (a retriever's), or group-major pairs (a reranker's)
    if rows % count:
        raise ValueError(f"{rows} rows cannot be cut into {count} equal micro-batches")
    parts = {name: tensor.chunk(count) for name, tensor in batch.items()}
    return [{name: chunks[index] for name, chunks in parts.items()} for index in range(count)]


def plain_step(model: torch.nn.Module, batch: dict, *, autocast_dtype: torch.dtype | None = None, scaler=None,
               loss_scale: float = 1.0) -> torch.Tensor:
    """Forward the whole batch, back-propagate its loss (times `loss_scale`) into `.grad`, and return the loss
    detached."""
    with forward_precision(model, autocast_dtype):
        loss = model(query=query_inputs(batch), passage=passage_inputs(batch)).loss
    backward_loss(loss * loss_scale, scaler)
    return loss.detach()


def distill_step(model: torch.nn.Module, batch: dict, *, distil_temperature: float = 1.0, distil_weight: float = 1.0,
                 autocast_dtype: torch.dtype | None = None, scaler=None, loss_scale: float = 1.0) -> torch.Tensor:
    """A retriever's step on a teacher's scores: KL of the teacher's distribution over each group (its scores over
    `distil_temperature`) to the student's (similarities over the model's temperature), mixed with the contrastive
    loss by `distil_weight` (1: distillation alone); back-propagated (times `loss_scale`), returned detached."""
    with forward_precision(model, autocast_dtype):
        output = model(query=query_inputs(batch), passage=passage_inputs(batch))
    loss = distilled_loss(model, batch, output.q_reps, output.p_reps, distil_temperature=distil_temperature,
                          distil_weight=distil_weight, contrastive=output.loss)
    backward_loss(loss * loss_scale, scaler)
    return loss.detach()


def contrastive_loss(model: torch.nn.Module, batch: dict, q_reps: torch.Tensor, p_reps: torch.Tensor) -> torch.Tensor:
    """The model's own loss of the embeddings (in-batch and hard negatives, shared across workers)."""
    return unwrap(model).compute_loss(q_reps, p_reps)[1]


def distilled_loss(model: torch.nn.Module, batch: dict, q_reps: torch.Tensor, p_reps: torch.Tensor, *,
                   distil_temperature: float = 1.0, distil_weight: float = 1.0,
                   contrastive: torch.Tensor | None = None) -> torch.Tensor:
    """KL to the batch's teacher scores, mixed with the contrastive loss (computed unless given) by `distil_weight`."""
    student = group_scores(q_reps, p_reps, unwrap(model).settings.temperature)
    loss = distillation_loss(student, batch["teacher_scores"], 1.0, distil_temperature)
    if distil_weight < 1:
        contrastive = contrastive if contrastive is not None else contrastive_loss(model, batch, q_reps, p_reps)
        loss = distil_weight * loss + (1 - distil_weight) * contrastive
    return loss


def rerank_step(model: torch.nn.Module, batch: dict, *, group_size: int, autocast_dtype: torch.dtype | None = None,
                scaler=None, loss_scale: float = 1.0) -> torch.Tensor:
    """A cross-encoder's step: score every pair, softmax over each query's group (its positive first), back-propagate
    (times `loss_scale`); return the loss detached."""
    pairs = {name.removeprefix("pair_"): tensor for name, tensor in batch.items()}
    with forward_precision(model, autocast_dtype):
        scores = model(pairs)
    loss = grouped_softmax_loss(scores, group_size)
    backward_loss(loss * loss_scale, scaler)
    return loss.detach()


@dataclass(frozen=True)
class RngState:
    """The CPU generator state, plus the current CUDA device's when CUDA is in use."""

    cpu: torch.Tensor
    cuda_device: int | None = None
    cuda: torch.Tensor | None = None

    @classmethod
    def capture(cls) -> RngState:
        """Snapshot the generators as they are now."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            device = torch.cuda.current_device()
            return cls(torch.get_rng_state(), device, torch.cuda.get_rng_state(device))
        return cls(torch.get_rng_state())

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the generators are put back as they were afterwards."""
        devices = [] if self.cuda_device is None else [self.cuda_device]
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.cuda_device)
            yield


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


def grad_cache_step(model: torch.nn.Module, batch: dict, *, q_chunk_size: int = 4, p_chunk_size: int = 32,
                    autocast_dtype: torch.dtype | None = None, scaler=None, loss_scale: float = 1.0,
                    loss_of: Callable = contrastive_loss) -> torch.Tensor:
    """Same effect as plain_step (or, with `loss_of` distilled_loss, distill_step): loss returned detached, `.grad`
    filled, holding one chunk's graph at a time."""
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
        loss = loss_of(model, batch, q_reps, p_reps)
    backward_loss(loss * loss_scale, scaler)  # reaches only the cached embeddings: they are graph leaves
    rep_grads = [*q_reps.grad.split([len(r) for r in cached[:num_query_chunks]]),
                 *p_reps.grad.split([len(r) for r in cached[num_query_chunks:]])]

    # Reduce gradients across workers once: after the last chunk's backward, not after each one.
    for index, ((side, chunk), state, rep_grad) in enumerate(zip(chunks, states, rep_grads)):
        with gradient_sync(model, enabled=index == len(chunks) - 1):
            with state.replay(), forward_precision(model, autocast_dtype):
                reps = _embed(model, side, chunk)
            (reps * rep_grad).sum().backward()
    return loss.detach()
