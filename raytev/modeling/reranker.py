"""A cross-encoder reranker: a Hugging Face sequence classifier with one logit that scores a (query, passage) pair
read together, trained as Tevatron main's reranker is: each query's positive against its hard negatives, with a
softmax over the group (the positive first).

Its folders are plain transformers folders that `sentence_transformers.CrossEncoder` loads with the same scores: the
config names an identity activation, so CrossEncoder returns the raw logit rather than its sigmoid.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import logging as transformers_logging

from raytev.errors import RaytevError
from raytev.model.resolved import ResolvedModel
from raytev.modeling.adapters import add_lora, is_adapted, load_lora

# The activation CrossEncoder applies to the logit: none (sentence-transformers 4+ reads the first key, 3.x the
# second), so that its predict() gives raytev's scores.
IDENTITY = "torch.nn.modules.linear.Identity"


def check_reranker_folder(path_or_name: str, cache_dir: str | None = None) -> None:
    """Raise a RaytevError unless the model is a sequence classifier with one label (a trained reranker's head)."""
    try:
        config = AutoConfig.from_pretrained(path_or_name, cache_dir=cache_dir)
    except (OSError, ValueError) as error:
        raise RaytevError(f"could not read the model configuration of reranker '{path_or_name}': {error}") from None
    architectures = config.architectures or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures) or config.num_labels != 1:
        raise RaytevError(
            f"'{path_or_name}' has no sequence-classification head with one label (config.json: architectures "
            f"{architectures or 'none'}, num_labels {config.num_labels}), so its scores would come from a random "
            "head: train one with `raytev train --task rerank`, or give a cross-encoder such as "
            "cross-encoder/ms-marco-MiniLM-L6-v2.")


class Reranker(torch.nn.Module):
    """Scores (query, passage) pairs with one logit each; trained with a softmax over each query's group."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        if model.config.num_labels != 1:
            raise RaytevError(f"a reranker scores with one logit; this model has {model.config.num_labels} labels")
        self.model = model

    @classmethod
    def from_pretrained(cls, path_or_name: str, trained: bool = True, **load_arguments) -> Reranker:
        """A reranker folder (`trained`: its head must be there), or any encoder to train one from (a new head)."""
        if trained:
            check_reranker_folder(path_or_name, load_arguments.get("cache_dir"))
            return cls(AutoModelForSequenceClassification.from_pretrained(path_or_name, num_labels=1, **load_arguments))
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # its report of the new head, which is what was asked for
        try:
            return cls(AutoModelForSequenceClassification.from_pretrained(path_or_name, num_labels=1, **load_arguments))
        finally:
            transformers_logging.set_verbosity(verbosity)

    @classmethod
    def from_resolved(cls, model: ResolvedModel, trained: bool = True, trainable_adapter: bool = False,
                      lora=None) -> Reranker:
        """The Reranker of a ResolvedModel: its weights (a new head unless `trained`), its LoRA adapter trainable
        or merged, or fresh adapters from the --lora flags (`lora`, a LoraSection, to train them alone)."""
        reranker = cls.from_pretrained(model.path, trained=trained and model.adapter is None, **model.load_arguments())
        if model.adapter is not None:
            reranker.model = load_lora(reranker.model, model.adapter, trainable_adapter, model.cache_dir)
        elif lora is not None and lora.lora:
            reranker.model = add_lora(reranker.model, lora, model.base_reference, task="rerank")
        return reranker

    @property
    def has_adapter(self) -> bool:
        """Whether the model carries LoRA adapters: a save then holds the adapter (and the head), not the weights."""
        return is_adapted(self.model)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (transformers' non-reentrant checkpointing)."""
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.has_adapter:
            self.model.enable_input_require_grads()

    def forward(self, pairs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N] float32 scores of N tokenized pairs (input_ids, attention_mask, token_type_ids where the model has
        them)."""
        return self.model(**pairs).logits.squeeze(-1).float()

    def save_pretrained(self, folder: str | Path, tokenizer=None) -> None:
        """A transformers folder that CrossEncoder and AutoModelForSequenceClassification load with these scores
        (with LoRA: the adapter and the head, naming the base model)."""
        config = (self.model.get_base_model() if self.has_adapter else self.model).config
        config.sentence_transformers = {"activation_fn": IDENTITY}
        config.sbert_ce_default_activation_function = IDENTITY
        self.model.save_pretrained(str(folder))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))


def grouped_softmax_loss(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Cross-entropy of each group of `group_size` consecutive scores, its first (the positive) the target."""
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    grouped = scores.view(-1, group_size)
    return F.cross_entropy(grouped, torch.zeros(grouped.shape[0], dtype=torch.long, device=scores.device))
