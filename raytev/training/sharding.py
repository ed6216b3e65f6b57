"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for a DenseModel: weights, gradients and optimizer state split
across the workers, and checkpoints that load on any number of them (no Ray here).

Why FSDP2 and not DeepSpeed ZeRO-3: Ray Train 2.60 runs either, but FSDP2 is torch's own (no extra package or
launcher, no config file), composes with the plain torch loop raytev already has (autocast, GradCache's
chunked backward, peft adapters with frozen base weights in one sharded unit), and its checkpoints go through
torch.distributed.checkpoint, which reshards on load. Each transformer layer is its own unit, so only one
layer's full weights exist at a time in forward and backward.

Checkpoint layout: `model/` holds the full weights (gathered to rank 0; only the adapter under LoRA), as every
raytev checkpoint does, so the export and a resume on any worker count read it; `optimizer_shards/` holds each
worker's slice of the optimizer state (torch.distributed.checkpoint files), resharded when read back.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from raytev.modeling.dense import DenseModel

OPTIMIZER_SHARDS_DIR = "optimizer_shards"


def layer_class_names(model: DenseModel) -> set[str]:
    """The transformer block classes of the model's encoders (what transformers keeps whole on one device)."""
    names: set[str] = set()
    for encoder in model.encoders():
        names.update(getattr(encoder, "_no_split_modules", None) or [])
    return names


def shard_model(model: DenseModel) -> DenseModel:
    """Shard each transformer block, then the rest (embeddings, final norm) as the root unit, in place."""
    blocks = layer_class_names(model)
    if not blocks:
        raise ValueError(f"{type(model.query_encoder).__name__} names no transformer blocks (_no_split_modules): "
                         "FSDP would hold the whole model as one unit")
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether the module is an FSDP2 unit."""
    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module, trainable_only: bool) -> dict:
    """The model's full weights on rank 0's CPU (other ranks get {}); every rank must call it (it gathers).

    `trainable_only` gathers what trains (a LoRA adapter), not the frozen base: a 7B base never crosses the wire.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(model, options=options)


def save_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Every rank writes its slice of the optimizer state (with the plan rank 0 writes as .metadata)."""
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(directory))


def load_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Read the optimizer state back, resharded for this run's workers however many wrote it."""
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(directory))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
