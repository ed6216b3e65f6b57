"""The plain full-batch training step and the pieces every training step shares."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from raytev.modeling.dense import DenseModel

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


def plain_step(
    model: torch.nn.Module,
    batch: dict,
    *,
    autocast_dtype: torch.dtype | None = None,
    scaler=None,
) -> torch.Tensor:
    """Forward the whole batch, back-propagate its loss into `.grad`, and return the loss detached."""
    with forward_precision(model, autocast_dtype):
        loss = model(query=query_inputs(batch), passage=passage_inputs(batch)).loss
    backward_loss(loss, scaler)
    return loss.detach()
