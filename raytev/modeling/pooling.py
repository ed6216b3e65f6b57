"""Turn a sequence of token states into one vector per row: cls, masked mean, or last real token."""

from __future__ import annotations

import torch

from raytev.errors import RaytevError

POOLING_METHODS = ("cls", "mean", "last")


def check_pooling(method: str) -> str:
    """Return the pooling name if it is known; otherwise raise a RaytevError naming the choices."""
    if method not in POOLING_METHODS:
        raise RaytevError(
            f"unknown pooling '{method}': choose one of {', '.join(POOLING_METHODS)} "
            "('last' for decoder models such as Qwen or Mistral, 'mean' or 'cls' for BERT-like encoders)"
        )
    return method


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool [B, L, H] hidden states into [B, H] with the named method, honouring the attention mask."""
    check_pooling(method)
    if method == "cls":
        return hidden_states[:, 0]
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    # The highest masked-in position is the last real token, whichever side the padding is on.
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    last = (attention_mask.to(positions.dtype) * positions).argmax(dim=1)
    return hidden_states[torch.arange(hidden_states.size(0), device=hidden_states.device), last]
