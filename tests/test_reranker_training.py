"""Training a cross-encoder (`raytev train --task rerank`): pairs joined from cached tokens as the tokenizer joins
them, 2 workers' step equal to the whole batch's (1e-5), a resumed run equal to an uninterrupted one, and an export
that CrossEncoder loads with raytev's scores (1e-4)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_bert, tiny_tokenizer, toy_training_groups, write_jsonl
from modeling_helpers import max_gradient_difference
from ray_train_probe import rerank_full_batch_gradients, rerank_one_step_gradients
from safetensors.torch import load_file

import raytev
from raytev.data.pairs import PairTemplate
from raytev.errors import RaytevError
from raytev.modeling.reranker import Reranker
from raytev.training.state import checkpoint_name

WORDS = "the cat dog animal small what is barks a".split()
TINY = dict(task="rerank", train_group_size=3, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1,
            rerank_max_len=24)


def test_pairs_from_cached_segments_are_what_the_tokenizer_makes_of_the_two_texts():
    tokenizer, rng = tiny_tokenizer(), random.Random(3)
    for _ in range(300):
        query = " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))
        passage = " ".join(rng.choices(WORDS, k=rng.randint(1, 40)))
        max_len = rng.randint(len(tokenizer(query)["input_ids"]) + 2, 48)  # the query fits: exact (pairs.py)
        template = PairTemplate.from_tokenizer(tokenizer, max_len)
        bare = [tokenizer(text, add_special_tokens=False)["input_ids"][:max_len] for text in (query, passage)]
        expected = tokenizer(query, passage, truncation=True, max_length=max_len, return_token_type_ids=True)
        assert template.join(*bare) == (expected["input_ids"], expected["token_type_ids"]), (query, passage, max_len)
    batch = template.batch([[7, 8], [9]], [[10, 11, 12], [13]], multiple_of=8)
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].sum(axis=1).tolist() == [8, 5]


def test_a_pair_length_with_no_room_for_text_is_refused():
    with pytest.raises(RaytevError, match="--rerank_max_len 3 leaves no room"):
        PairTemplate.from_tokenizer(tiny_tokenizer(), 3)


@pytest.mark.slow
def test_two_workers_give_the_whole_batch_reranker_gradients(ray_session, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    folder = save_tiny_bert(tmp_path / "model")
    out = tmp_path / "grads.pt"
    TorchTrainer(rerank_one_step_gradients, train_loop_config={"model": str(folder), "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
    distributed, reference = torch.load(out), rerank_full_batch_gradients(folder)
    assert max_gradient_difference(distributed, reference) <= 1e-5
    assert reference["classifier.weight"].abs().max() > 1e-4  # the loss reaches the head


@pytest.fixture
def tiny_run(tmp_path):
    model = save_tiny_bert(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", toy_training_groups(40))
    return {"model_name_or_path": str(model), "dataset_path": str(data), "output_dir": str(tmp_path / "out")}


@pytest.mark.slow
def test_a_trained_reranker_scores_the_same_in_cross_encoder(ray_session, tiny_run):
    from sentence_transformers import CrossEncoder

    result = raytev.train(**tiny_run, **{**TINY, "learning_rate": 5e-3}, num_train_epochs=3, num_workers=0,
                          save_steps=100)
    losses = [entry["loss"] for entry in result.log]
    assert result.steps == 30 and losses[-1] < 0.7 * losses[0]
    out = Path(tiny_run["output_dir"])
    assert json.loads((out / "raytev_reranker.json").read_text())["rerank_max_len"] == 24
    tokenizer, texts = tiny_tokenizer(), [("what is the cat 3", "the cat 3"), ("what is the cat 3", "a small dog 22")]
    template = PairTemplate.from_tokenizer(tokenizer, 24)
    bare = [[tokenizer(text, add_special_tokens=False)["input_ids"] for text in column] for column in zip(*texts)]
    pairs = {name: torch.from_numpy(array) for name, array in template.batch(*bare).items()}
    with torch.no_grad():
        ours = Reranker.from_pretrained(str(out)).eval()(pairs)
    theirs = CrossEncoder(str(out), device="cpu").predict(texts, convert_to_tensor=True).float().cpu()
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert ours[0] > ours[1]  # it learned: the positive above the negative


@pytest.mark.slow
def test_a_resumed_reranker_run_ends_with_the_uninterrupted_weights(ray_session, tiny_run, tmp_path):
    options = dict(TINY, max_steps=6, save_steps=3, num_workers=0, shuffle_buffer_size=8)
    raytev.train(**tiny_run, **options)
    whole = Path(tiny_run["output_dir"])
    # A run stopped after its step-3 checkpoint: the same output folder holding only that checkpoint.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoints" / checkpoint_name(3), resumed_dir / "checkpoints" / checkpoint_name(3))
    result = raytev.train(**{**tiny_run, "output_dir": str(resumed_dir)}, **options)
    assert result.resumed_from == 3 and result.steps == 6
    first, second = load_file(whole / "model.safetensors"), load_file(resumed_dir / "model.safetensors")
    assert first.keys() == second.keys()
    assert max((first[name] - second[name]).abs().max().item() for name in first) <= 1e-6
    assert [entry["loss"] for entry in result.log if "loss" in entry] == \
        [json.loads(line)["loss"] for line in (whole / "train_log.jsonl").read_text().splitlines()]


def test_rerank_training_refuses_what_a_cross_encoder_cannot_do(tiny_run):
    with pytest.raises(RaytevError, match="--grad_cache: not for --task rerank"):
        raytev.train(**tiny_run, **TINY, grad_cache=True)
    with pytest.raises(RaytevError, match="--train_group_size 2 or more"):
        raytev.train(**tiny_run, **{**TINY, "train_group_size": 1})
