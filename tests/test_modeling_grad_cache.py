"""GradCache in one process: same gradients as a full-batch step, exact dropout replay, DDP no_sync, AMP."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from helpers import tiny_bert
from modeling_helpers import assert_gradients_meaningful, gradients, max_gradient_difference, toy_batch

from raytev.model.settings import DenseModelSettings
from raytev.modeling.dense import DenseModel
from raytev.modeling.training_step import grad_cache_step, passage_inputs, plain_step, query_inputs

# 5 queries x 3 passages with chunk sizes that do not divide them: 3 query chunks, 4 passage chunks.
CHUNKS = dict(q_chunk_size=2, p_chunk_size=4)


def fresh_model(untied: bool = False, dropout: float = 0.0, pooling: str = "mean") -> DenseModel:
    """The same tiny model every call (fixed seed), in train mode."""
    settings = DenseModelSettings(pooling=pooling, normalize=True, temperature=0.1, untied=untied)
    return DenseModel(tiny_bert(dropout=dropout), settings=settings).train()


def step_gradients(step, model: DenseModel, batch: dict, seed: int = 0, **options) -> tuple[float, dict]:
    """Run one step from a fixed RNG seed; return its loss and the parameter gradients."""
    torch.manual_seed(seed)
    loss = step(model, batch, **options)
    return loss.item(), gradients(model)


def rows(inputs: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) of encoder inputs."""
    return {name: tensor[start:stop] for name, tensor in inputs.items()}


def chunked_reference_gradients(model: DenseModel, batch: dict, seed: int) -> dict:
    """Full-graph step whose forwards run chunk by chunk in GradCache's order, from the same seed."""
    torch.manual_seed(seed)
    query, passage = query_inputs(batch), passage_inputs(batch)
    q_reps = [model(query=rows(query, i, i + CHUNKS["q_chunk_size"])).q_reps
              for i in range(0, len(query["input_ids"]), CHUNKS["q_chunk_size"])]
    p_reps = [model(passage=rows(passage, i, i + CHUNKS["p_chunk_size"])).p_reps
              for i in range(0, len(passage["input_ids"]), CHUNKS["p_chunk_size"])]
    model.compute_loss(torch.cat(q_reps), torch.cat(p_reps))[1].backward()
    return gradients(model)


@pytest.mark.parametrize("untied", [False, True])
@pytest.mark.parametrize("pooling, left_padding", [("mean", False), ("last", True)])
def test_grad_cache_gradients_equal_the_plain_step(untied, pooling, left_padding):
    batch = toy_batch(num_queries=5, group_size=3, seed=1, left_padding=left_padding)
    plain_loss, plain = step_gradients(plain_step, fresh_model(untied, pooling=pooling), batch)
    cached_loss, cached = step_gradients(grad_cache_step, fresh_model(untied, pooling=pooling), batch, **CHUNKS)
    assert_gradients_meaningful(plain)
    assert cached_loss == pytest.approx(plain_loss, abs=1e-6)
    assert max_gradient_difference(plain, cached) <= 1e-5


def test_with_dropout_grad_cache_equals_the_same_chunked_forwards_with_a_graph():
    batch = toy_batch(num_queries=5, group_size=3, seed=2)
    reference = chunked_reference_gradients(fresh_model(dropout=0.1), batch, seed=11)
    _, cached = step_gradients(grad_cache_step, fresh_model(dropout=0.1), batch, seed=11, **CHUNKS)
    _, full_batch = step_gradients(plain_step, fresh_model(dropout=0.1), batch, seed=11)
    assert_gradients_meaningful(reference)
    assert max_gradient_difference(reference, full_batch) > 1e-4  # dropout really is on: masks matter
    assert max_gradient_difference(reference, cached) <= 1e-5


def test_the_grad_pass_recomputes_the_cached_embeddings_bit_for_bit():
    model = fresh_model(untied=True, dropout=0.1)
    outputs = []
    model.register_forward_hook(
        lambda module, args, kwargs, out: outputs.append((out.q_reps if out.p_reps is None else out.p_reps).detach()),
        with_kwargs=True,
    )
    grad_cache_step(model, toy_batch(num_queries=5, group_size=3, seed=3), **CHUNKS)
    first_pass, second_pass = outputs[: len(outputs) // 2], outputs[len(outputs) // 2:]
    assert len(first_pass) == 3 + 4
    assert all(torch.equal(cached, replayed) for cached, replayed in zip(first_pass, second_pass))


class SyncRecorder(torch.nn.Module):
    """Stands in for DistributedDataParallel: forwards to `module` and records no_sync use."""

    def __init__(self, module: DenseModel):
        super().__init__()
        self.module = module
        self.syncing = True

    def forward(self, **inputs):
        """Delegate to the wrapped model."""
        return self.module(**inputs)

    @contextmanager
    def no_sync(self):
        """Mark the block as not synchronizing, like DDP.no_sync."""
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True


def test_under_ddp_only_the_last_chunk_backward_synchronizes():
    wrapper = SyncRecorder(fresh_model())
    syncing_at_each_backward = []
    wrapper.module.query_encoder.embeddings.word_embeddings.weight.register_hook(
        lambda grad: syncing_at_each_backward.append(wrapper.syncing)
    )
    grad_cache_step(wrapper, toy_batch(num_queries=5, group_size=3, seed=4), **CHUNKS)
    assert syncing_at_each_backward == [False] * 6 + [True]


def relative_difference(first: dict, second: dict) -> float:
    """‖a − b‖ / ‖b‖ over all gradients flattened together."""
    a = torch.cat([grad.flatten() for grad in first.values()])
    b = torch.cat([grad.flatten() for grad in second.values()])
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("step, options", [(plain_step, {}), (grad_cache_step, CHUNKS)])
def test_bf16_autocast_gives_finite_loss_and_near_fp32_gradients(step, options):
    batch = toy_batch(num_queries=5, group_size=3, seed=5)
    fp32_loss, fp32 = step_gradients(plain_step, fresh_model(), batch)
    bf16_loss, bf16 = step_gradients(step, fresh_model(), batch, autocast_dtype=torch.bfloat16, **options)
    assert torch.isfinite(torch.tensor(bf16_loss)) and bf16_loss == pytest.approx(fp32_loss, rel=0.05)
    assert 0 < relative_difference(bf16, fp32) < 0.1  # close, yet not fp32: autocast did take effect


@pytest.mark.parametrize("step, options", [(plain_step, {}), (grad_cache_step, CHUNKS)])
def test_a_grad_scaler_scales_gradients_but_not_the_returned_loss(step, options):
    batch = toy_batch(num_queries=5, group_size=3, seed=6)
    loss, unscaled = step_gradients(step, fresh_model(), batch, **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaled_loss, scaled = step_gradients(step, fresh_model(), batch, scaler=scaler, **options)
    assert scaled_loss == pytest.approx(loss, abs=1e-6)
    assert max_gradient_difference(scaled, {name: 8.0 * grad for name, grad in unscaled.items()}) <= 1e-4


def test_a_chunk_size_below_one_is_a_user_error():
    from raytev.errors import RaytevError

    with pytest.raises(RaytevError, match="chunk sizes must be at least 1"):
        grad_cache_step(fresh_model(), toy_batch(), q_chunk_size=0)
