"""Distillation into the retriever: the KL loss over each query's group and its gradient against the closed form,
and a query's own group picked out of the batch's scores."""

from __future__ import annotations

import torch

from raytev.modeling.loss import distillation_loss, group_scores


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
