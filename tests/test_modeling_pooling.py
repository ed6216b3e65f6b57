"""Pooling: cls, masked mean, and last real token under right and left padding."""

from __future__ import annotations

import pytest
import torch

from raytev.errors import RaytevError
from raytev.modeling.dense import pool

# Two rows of 4 tokens, hidden size 2; token t of row r holds [10*r + t, -(10*r + t)].
HIDDEN = torch.tensor([[[float(10 * r + t), -float(10 * r + t)] for t in range(4)] for r in range(2)])


def test_cls_takes_the_first_token():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(pool(HIDDEN, mask, "cls"), torch.tensor([[0.0, 0.0], [10.0, -10.0]]))


def test_mean_ignores_padding():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    expected = torch.tensor([[0.5, -0.5], [11.5, -11.5]])
    assert torch.allclose(pool(HIDDEN, mask, "mean"), expected)


def test_last_with_right_padding_takes_the_last_real_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert torch.equal(pool(HIDDEN, mask, "last"), torch.tensor([[2.0, -2.0], [13.0, -13.0]]))


def test_last_with_left_padding_takes_the_final_position():
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert torch.equal(pool(HIDDEN, mask, "last"), torch.tensor([[3.0, -3.0], [13.0, -13.0]]))


def test_last_with_mixed_lengths_left_padded():
    mask = torch.tensor([[0, 0, 0, 1], [1, 1, 1, 1]])
    assert torch.equal(pool(HIDDEN, mask, "last"), torch.tensor([[3.0, -3.0], [13.0, -13.0]]))


def test_unknown_pooling_is_a_user_error():
    with pytest.raises(RaytevError, match="unknown pooling 'max'.*cls, mean, last"):
        pool(HIDDEN, torch.ones(2, 4), "max")
