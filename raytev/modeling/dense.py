"""A bi-encoder over any Hugging Face encoder: pooled query and passage embeddings and their loss."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from raytev.errors import RaytevError
from raytev.model.files import PASSAGE_SUBFOLDER, QUERY_SUBFOLDER
from raytev.model.resolved import ResolvedModel, resolve_folder
from raytev.model.settings import DenseModelSettings, check_pooling
from raytev.modeling.adapters import is_adapted, load_lora
from raytev.modeling.loss import contrastive_loss
from raytev.staging import staged_directory


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool [B, L, H] hidden states into [B, H]: the first token (cls), the masked mean, or the last real token."""
    method = check_pooling(method)
    if method == "cls":
        return hidden_states[:, 0]
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    # The highest masked-in position is the last real token, whichever side the padding is on.
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    last = (attention_mask.to(positions.dtype) * positions).argmax(dim=1)
    return hidden_states[torch.arange(hidden_states.size(0), device=hidden_states.device), last]


@dataclass
class DenseOutput(ModelOutput):
    """What DenseModel.forward returns; scores and loss only when both queries and passages were given."""

    loss: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    q_reps: torch.Tensor | None = None
    p_reps: torch.Tensor | None = None


def _part(state_dict: dict | None, prefix: str) -> dict | None:
    """The entries of a DenseModel state dict under one encoder, named as that encoder names them."""
    if state_dict is None:
        return None
    return {name[len(prefix):]: value for name, value in state_dict.items() if name.startswith(prefix)}


def _load_encoder(path_or_name: str, subfolder: str = "", **hf_kwargs) -> PreTrainedModel:
    """AutoModel.from_pretrained, with a load failure turned into a RaytevError that says what to check."""
    try:
        return AutoModel.from_pretrained(path_or_name, subfolder=subfolder, **hf_kwargs)
    except (OSError, ValueError) as error:  # transformers' "not found" / "unrecognized model" failures
        where = f"{path_or_name}/{subfolder}" if subfolder else path_or_name
        raise RaytevError(
            f"could not load a model from '{where}': {error}\n"
            "Give a folder with config.json and weights, or a Hugging Face name while online."
        ) from error


class DenseModel(torch.nn.Module):
    """Tied (one encoder) or untied (query and passage encoders) dense retriever with contrastive loss."""

    def __init__(self, query_encoder: PreTrainedModel, passage_encoder: PreTrainedModel | None = None,
                 settings: DenseModelSettings | None = None, cross_worker_negatives: bool | None = None):
        super().__init__()
        self.settings = settings or DenseModelSettings(untied=passage_encoder is not None)
        if passage_encoder is not None and not self.settings.untied:
            raise ValueError("a separate passage encoder needs settings with untied=True")
        if self.settings.untied and passage_encoder is None:
            passage_encoder = copy.deepcopy(query_encoder)  # untie: both start from the same weights
        self.query_encoder = query_encoder
        if passage_encoder is not None:
            self.passage_encoder = passage_encoder
        # None gathers negatives from all workers whenever torch.distributed runs with several.
        self.cross_worker_negatives = cross_worker_negatives
        # Decoders would keep every layer's keys and values for generation: an embedding never reuses them.
        self._forward_options = {"use_cache": False} if hasattr(query_encoder.config, "use_cache") else {}

    def encoders(self) -> list[PreTrainedModel]:
        """The encoder(s): one when tied, query then passage when untied."""
        return [self.query_encoder, self.passage_encoder] if self.settings.untied else [self.query_encoder]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute layer activations in backward (non-reentrant: it works under DDP/FSDP, with frozen inputs
        under LoRA, and replays dropout's RNG, so gradients equal the unchanged model's)."""
        for encoder in self.encoders():
            if hasattr(encoder, "activation_checkpointing_enable"):  # transformers 5's name
                encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _passage_side(self) -> PreTrainedModel:
        """The encoder that reads passages: the query encoder itself when tied."""
        return self.passage_encoder if self.settings.untied else self.query_encoder

    def _encode(self, encoder: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool (and normalize, if set) the encoder's last hidden states."""
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, **self._forward_options).last_hidden_state
        # Pool and normalize in float32 whatever the encoder's dtype: bf16 sums and norms lose ranking precision.
        reps = pool(hidden.float(), attention_mask, self.settings.pooling)
        return F.normalize(reps, dim=-1) if self.settings.normalize else reps

    def encode_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Query embeddings [B, H]."""
        return self._encode(self.query_encoder, input_ids, attention_mask)

    def encode_passage(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Passage embeddings [B, H]."""
        return self._encode(self._passage_side(), input_ids, attention_mask)

    def compute_loss(self, q_reps: torch.Tensor, p_reps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and contrastive loss for these embeddings, with this model's temperature and gathering."""
        return contrastive_loss(q_reps, p_reps, self.settings.temperature, self.cross_worker_negatives)

    def forward(self, query: dict | None = None, passage: dict | None = None) -> DenseOutput:
        """Embed whichever of query / passage ({'input_ids', 'attention_mask'}) is given; loss when both are."""
        q_reps = self.encode_query(query["input_ids"], query["attention_mask"]) if query is not None else None
        p_reps = self.encode_passage(passage["input_ids"], passage["attention_mask"]) if passage is not None else None
        if q_reps is None or p_reps is None:
            return DenseOutput(q_reps=q_reps, p_reps=p_reps)
        scores, loss = self.compute_loss(q_reps, p_reps)
        return DenseOutput(loss=loss, scores=scores, q_reps=q_reps, p_reps=p_reps)

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path, pooling: str | None = None, normalize: bool | None = None,
                        temperature: float | None = None, untied: bool | None = None, query_prefix: str | None = None,
                        passage_prefix: str | None = None, cross_worker_negatives: bool | None = None,
                        cache_dir: str | None = None, **hf_kwargs) -> DenseModel:
        """Load a raytev save, or any HF / sentence-transformers model; None settings are the model's own.

        Extra keyword arguments (dtype, attn_implementation, ...) go to AutoModel.from_pretrained.
        """
        model = resolve_folder(path_or_name, pooling=pooling, normalize=normalize, temperature=temperature,
                               untied=untied, query_prefix=query_prefix, passage_prefix=passage_prefix,
                               cache_dir=cache_dir)
        return cls.from_resolved(model, cross_worker_negatives, **hf_kwargs)

    @classmethod
    def from_resolved(cls, model: ResolvedModel, cross_worker_negatives: bool | None = None,
                      trainable_adapter: bool = False, **hf_kwargs) -> DenseModel:
        """The DenseModel of a ResolvedModel: its weights in its layout (an untied save: both encoders), its
        settings, and its LoRA adapter trainable or merged into the weights for inference."""
        arguments = {**model.load_arguments(), **hf_kwargs}
        if model.separate_encoders:
            query_encoder = _load_encoder(model.path, QUERY_SUBFOLDER, **arguments)
            passage_encoder = _load_encoder(model.path, PASSAGE_SUBFOLDER, **arguments)
        else:
            query_encoder = _load_encoder(model.path, **arguments)
            passage_encoder = None  # when untied is asked for, __init__ copies the query encoder
        if model.adapter is not None:
            query_encoder = load_lora(query_encoder, model.adapter, trainable_adapter, model.cache_dir)
        return cls(query_encoder, passage_encoder, model.settings, cross_worker_negatives)

    @property
    def has_adapter(self) -> bool:
        """Whether the (tied) encoder carries LoRA adapters: a save then holds the adapter, not the weights."""
        return is_adapted(self.query_encoder)

    def save_pretrained(self, directory: str | Path, tokenizer=None, state_dict: dict | None = None,
                        max_seq_length: int | None = None) -> None:
        """Save HF weights (tied: at the top; untied: query_model/, passage_model/), settings and tokenizer.

        `state_dict`: this model's full state dict when the module holds only a shard of it (FSDP).
        `max_seq_length`: also write the sentence-transformers files with this length (tied models).
        """
        with staged_directory(directory) as staging:
            if self.settings.untied:
                self.query_encoder.save_pretrained(staging / QUERY_SUBFOLDER,
                                                   state_dict=_part(state_dict, "query_encoder."))
                self.passage_encoder.save_pretrained(staging / PASSAGE_SUBFOLDER,
                                                     state_dict=_part(state_dict, "passage_encoder."))
            else:  # with adapters: the adapter alone, naming its base model
                self.query_encoder.save_pretrained(staging, state_dict=_part(state_dict, "query_encoder."))
            self.settings.save(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            if max_seq_length is not None:
                from raytev.model.sentence_transformers import write_sentence_transformers_files

                write_sentence_transformers_files(staging, self.settings, max_seq_length)
