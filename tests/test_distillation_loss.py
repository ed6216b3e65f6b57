"""Distillation into the retriever: the KL loss over each query's group and its gradient against the closed form,
a query's own group picked out of the batch's scores, and GradCache's distillation step equal to the plain one."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import tiny_bert
from modeling_helpers import assert_gradients_meaningful, gradients, max_gradient_difference, toy_batch

from raytev.model.settings import DenseModelSettings
from raytev.modeling.dense import DenseModel
from raytev.modeling.loss import distillation_loss, group_scores
from raytev.modeling.training_step import distill_step, distilled_loss, grad_cache_step


def test_the_kl_gradient_equals_its_closed_form():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 5, generator=generator, dtype=torch.float64) * 3
    student_temperature, teacher_temperature = 0.5, 2.0
    loss = distillation_loss(student, teacher, student_temperature, teacher_temperature)
    loss.backward()
    p_teacher = torch.softmax(teacher / teacher_temperature, dim=-1)
    p_student = torch.softmax(student.detach() / student_temperature, dim=-1)
    # d/ds of mean_q sum_g p_t log(p_t / p_s(s / T)) = (p_s - p_t) / (T * Q)
    assert torch.allclose(student.grad, (p_student - p_teacher) / (student_temperature * 4), atol=1e-6)
    by_hand = (p_teacher * (p_teacher.log() - p_student.log())).sum(-1).mean()
    assert abs(loss.item() - by_hand.item()) < 1e-6
    # A student that already agrees with its teacher has nothing to learn.
    assert distillation_loss(teacher / teacher_temperature, teacher, 1.0, teacher_temperature).item() < 1e-9


def test_group_scores_are_each_querys_own_passages():
    generator = torch.Generator().manual_seed(1)
    q_reps, p_reps = torch.randn(2, 4, generator=generator), torch.randn(6, 4, generator=generator)
    full = q_reps @ p_reps.T / 0.5  # 2 queries x (2 groups of 3 passages)
    assert torch.allclose(group_scores(q_reps, p_reps, 0.5), torch.stack([full[0, :3], full[1, 3:]]), atol=1e-6)


@pytest.mark.parametrize("distil_weight", [1.0, 0.5])
def test_grad_cache_distils_with_the_gradients_of_the_plain_step(distil_weight):
    batch = toy_batch(num_queries=5, group_size=3, seed=5)
    batch["teacher_scores"] = torch.randn(5, 3, generator=torch.Generator().manual_seed(6)) * 4
    results = []
    for step, options in ((distill_step, {}), (grad_cache_step, dict(q_chunk_size=2, p_chunk_size=4, loss_of=partial(
            distilled_loss, distil_temperature=2.0, distil_weight=distil_weight)))):
        model = DenseModel(tiny_bert(dropout=0.0), settings=DenseModelSettings(pooling="mean", temperature=0.1)).train()
        options = options or dict(distil_temperature=2.0, distil_weight=distil_weight)
        loss = step(model, batch, **options)
        results.append((loss.item(), gradients(model)))
    (plain_loss, plain), (cached_loss, cached) = results
    assert_gradients_meaningful(plain)
    largest = max(grad.abs().max().item() for grad in plain.values())
    # float32 sums in another order: within 1e-5 of the largest gradient (the group KL's gradients reach ~6 here).
    assert cached_loss == pytest.approx(plain_loss, rel=1e-6)
    assert max_gradient_difference(plain, cached) <= 1e-5 * largest
