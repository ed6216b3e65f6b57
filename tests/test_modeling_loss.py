"""Contrastive loss: target layout, temperature, and that training on it lowers it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import tiny_bert
from modeling_helpers import toy_batch

from raytev.model.settings import DenseModelSettings
from raytev.modeling.dense import DenseModel
from raytev.modeling.loss import contrastive_loss, contrastive_targets
from raytev.modeling.training_step import plain_step


def test_targets_point_at_the_first_passage_of_each_group():
    assert contrastive_targets(3, 12).tolist() == [0, 4, 8]
    assert contrastive_targets(2, 2).tolist() == [0, 1]


def test_loss_is_low_only_when_positives_sit_first_in_each_group():
    queries = torch.eye(3, 8)
    aligned = torch.zeros(6, 8)  # group size 2: each query's own direction at rows 0, 2, 4
    aligned[[0, 2, 4], [0, 1, 2]] = 1.0
    _, low = contrastive_loss(queries, aligned, temperature=0.05)
    misplaced = aligned[[1, 0, 3, 2, 5, 4]]  # positives moved to the second slot
    _, high = contrastive_loss(queries, misplaced, temperature=0.05)
    assert low.item() < 1e-6 and high.item() > 10


def test_loss_is_cross_entropy_of_scaled_dot_products():
    generator = torch.Generator().manual_seed(0)
    q, p = torch.randn(2, 5, generator=generator), torch.randn(4, 5, generator=generator)
    scores, loss = contrastive_loss(q, p, temperature=0.5)
    assert torch.allclose(scores, q @ p.T / 0.5)
    assert torch.allclose(loss, F.cross_entropy(q @ p.T / 0.5, torch.tensor([0, 2])))


def test_loss_falls_over_a_few_optimizer_steps():
    model = DenseModel(tiny_bert(), settings=DenseModelSettings(pooling="mean", normalize=True, temperature=0.05))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = toy_batch(num_queries=4, group_size=2, seed=3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        losses.append(plain_step(model, batch).item())
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0], losses
