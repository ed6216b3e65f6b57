"""Contrastive loss over in-batch (and, across workers, global) negatives."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def distributed_world_size() -> int:
    """Number of workers in the default process group; 1 when torch.distributed is not in use."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        return gradient * ctx.factor, None


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every worker's tensor in rank order; gradient flows only into this worker's slot.

    The one place the world size enters the gradient: every worker computes the same global loss but
    back-propagates it only into its own slot, and DDP then averages the workers' gradients. So the slot's
    gradient is multiplied by the world size, and the average equals one process's full-batch gradient, while the
    loss itself stays the global loss (what the log shows).
    """
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local.detach().contiguous())
    # all_gather's outputs carry no graph: put the live local tensor back so its gradient survives.
    gathered[dist.get_rank()] = _ScaleGradient.apply(local, float(dist.get_world_size()))
    return torch.cat(gathered)


def contrastive_targets(num_queries: int, num_passages: int, device: torch.device | None = None) -> torch.Tensor:
    """Index of each query's positive: passages are group-major with the positive first, so i * group size."""
    if num_queries == 0 or num_passages % num_queries:
        raise ValueError(f"{num_passages} passages cannot be split evenly among {num_queries} queries")
    return torch.arange(num_queries, device=device) * (num_passages // num_queries)


def contrastive_loss(q_reps: torch.Tensor, p_reps: torch.Tensor, temperature: float = 1.0,
                     cross_worker_negatives: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores q·pᵀ/temperature and their cross-entropy; with cross-worker negatives, over the global batch.

    `cross_worker_negatives=None` gathers whenever torch.distributed runs with more than one worker.
    Gathered rows stay in rank order, so query j of rank r sits at r*local_queries + j and its positive
    at r*local_passages + j*group_size: the global targets are again i * group size.
    """
    gather = distributed_world_size() > 1 and cross_worker_negatives is not False
    # Scores and softmax in fp32 even under autocast: bf16 logits lose the small margins that matter here.
    with torch.autocast(device_type=q_reps.device.type, enabled=False):
        q_reps, p_reps = q_reps.float(), p_reps.float()
        if gather:
            q_reps, p_reps = gather_with_grad(q_reps), gather_with_grad(p_reps)
        scores = q_reps @ p_reps.T / temperature
        loss = F.cross_entropy(scores, contrastive_targets(len(q_reps), len(p_reps), scores.device))
    return scores, loss


def group_scores(q_reps: torch.Tensor, p_reps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[Q, G] scores (fp32, over `temperature`) of each query against its own group of the group-major [Q*G, H]
    passages: this worker's, so each worker distils its own queries and DDP averages them."""
    with torch.autocast(device_type=q_reps.device.type, enabled=False):
        grouped = p_reps.float().view(q_reps.shape[0], -1, p_reps.shape[-1])
        return torch.einsum("qh,qgh->qg", q_reps.float(), grouped) / temperature


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, student_temperature: float = 1.0,
                      teacher_temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of each query's distribution over its group ([Q, G] scores each), averaged over the
    queries: the student learns the teacher's ranking of the whole group, not only which passage is first."""
    with torch.autocast(device_type=student.device.type, enabled=False):  # softmaxes in fp32, as the loss above
        log_student = F.log_softmax(student.float() / student_temperature, dim=-1)
        target = F.softmax(teacher.float().to(student.device) / teacher_temperature, dim=-1)
        return F.kl_div(log_student, target, reduction="batchmean")
