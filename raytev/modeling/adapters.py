"""LoRA adapters (peft) on an encoder: new trainable ones, saved ones loaded to train on or merged to encode with."""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

from raytev.errors import RaytevError

# peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` alias: a warning no user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def is_adapted(encoder: torch.nn.Module) -> bool:
    """Whether the encoder carries peft adapters."""
    return isinstance(encoder, PeftModel)


def add_lora(encoder: PreTrainedModel, lora, base_reference: str | None = None, task: str = "retrieve") -> PeftModel:
    """The encoder with fresh LoRA adapters from the --lora flags (a LoraSection); only they train (and, for a
    reranker's sequence classifier, its new head).

    `base_reference` is what the saved adapter will name as its base (the hub name the user gave, not a local
    cache path), so that the adapter folder loads anywhere.
    """
    config = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                        target_modules=lora.target_modules,
                        task_type=TaskType.SEQ_CLS if task == "rerank" else TaskType.FEATURE_EXTRACTION)
    try:
        adapted = get_peft_model(encoder, config)
    except ValueError as error:  # peft: "Target modules {...} not found in the base model"
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in encoder.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise RaytevError(f"--lora_target_modules {lora.lora_target_modules}: {error}. This model's linear layers "
                          f"are named {', '.join(linear)}.") from None
    if base_reference:
        adapted.peft_config["default"].base_model_name_or_path = base_reference
    return adapted


def load_lora(encoder: PreTrainedModel, adapter: str, trainable: bool, cache_dir: str | None = None
              ) -> torch.nn.Module:
    """The encoder with a saved adapter: trainable (to continue training it), or merged into the weights (to
    encode: no adapter cost per token, as Tevatron encodes)."""
    try:
        adapted = PeftModel.from_pretrained(encoder, adapter, is_trainable=trainable, cache_dir=cache_dir)
    except (OSError, ValueError) as error:
        raise RaytevError(f"could not load the LoRA adapter '{adapter}': {error}\nGive the folder `raytev train "
                          "--lora` wrote (or a peft adapter on the Hugging Face hub, online).") from error
    return adapted if trainable else adapted.merge_and_unload()

