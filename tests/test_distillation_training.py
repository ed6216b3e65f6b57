"""`raytev train --distill_from RERANKER`: the teacher scores every passage of the groups once (kept in the token
cache, in the groups' order), and the step's loss is the KL of the sampled group's distributions (checked against
the teacher's own scores), alone or mixed with the contrastive loss."""

from __future__ import annotations

import pytest
import torch
from helpers import make_config, save_tiny_bert, tiny_tokenizer, toy_training_groups, write_jsonl

import raytev
from raytev.config.stages import TrainConfig
from raytev.data.cache import default_cache_dir
from raytev.data.collate import TrainingCollator
from raytev.data.prepare import prepare_data
from raytev.errors import RaytevError
from raytev.model.resolved import resolve_model
from raytev.modeling.reranker import Reranker
from raytev.reranking.teacher import distillation_table

TINY = dict(train_group_size=3, per_device_train_batch_size=4, learning_rate=1e-3, pooling="mean", normalize=True,
            temperature=0.1, logging_steps=1, shuffle_buffer_size=0)


@pytest.fixture
def world(tmp_path):
    groups = toy_training_groups(12)
    torch.manual_seed(0)
    teacher = Reranker.from_pretrained(str(save_tiny_bert(tmp_path / "encoder", seed=1)), trained=False)
    teacher.save_pretrained(tmp_path / "teacher", tokenizer=tiny_tokenizer())
    return {"groups": groups, "flags": {"model_name_or_path": str(save_tiny_bert(tmp_path / "student")),
                                        "dataset_path": str(write_jsonl(tmp_path / "train.jsonl", groups)),
                                        "output_dir": str(tmp_path / "out"), "distill_from": str(tmp_path / "teacher"),
                                        "rerank_max_len": 32, "num_actors": 0}}


def test_the_teacher_scores_every_passage_of_the_groups_in_their_order(world):
    from sentence_transformers import CrossEncoder

    config = make_config(TrainConfig, **world["flags"], **TINY)
    queries = prepare_data(config.data, resolve_model(config.model, config.text)).queries
    table = distillation_table(queries, config, default_cache_dir())
    rows = table.read(["query_id", "positive_scores", "negative_scores"]).to_pylist()
    assert [row["query_id"] for row in rows] == [group["query_id"] for group in world["groups"]]
    pairs = [(group["query"], passage["text"]) for group in world["groups"]
             for passage in group["positive_passages"] + group["negative_passages"]]
    expected = CrossEncoder(world["flags"]["distill_from"], device="cpu", max_length=32).predict(pairs)
    ours = [score for row in rows for score in row["positive_scores"] + row["negative_scores"]]
    assert len(ours) == len(expected) and max(abs(a - b) for a, b in zip(ours, expected)) <= 1e-4
    assert distillation_table(queries, config, default_cache_dir()).path == table.path  # scored once

    # The collator hands each sampled passage's own teacher score to the loss.
    batch = {name: table.read([name]).column(name).to_numpy(zero_copy_only=False)
             for name in ("query_id", "input_ids", "positive_input_ids", "negative_input_ids", "positive_scores",
                          "negative_scores")}
    arrays = TrainingCollator.for_table(table, config.training, seed=3)(batch)
    assert arrays["teacher_scores"].shape == (12, 3)
    for row, scores in enumerate(arrays["teacher_scores"]):
        negatives = dict(zip(map(tuple, batch["negative_input_ids"][row]), batch["negative_scores"][row]))
        assert scores[0] == pytest.approx(batch["positive_scores"][row][0])
        passages = arrays["passage_input_ids"][row * 3 + 1: row * 3 + 3]
        lengths = arrays["passage_attention_mask"][row * 3 + 1: row * 3 + 3].sum(axis=1)
        assert [negatives[tuple(ids[:length])] for ids, length in zip(passages, lengths)] == \
            pytest.approx(list(scores[1:]))


@pytest.mark.slow
def test_distillation_trains_the_retriever_alone_and_mixed(ray_session, world, tmp_path):
    alone = raytev.train(**world["flags"], **TINY, max_steps=6, num_workers=0, save_steps=100)
    losses = [entry["loss"] for entry in alone.log if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0]
    mixed = raytev.train(**{**world["flags"], "output_dir": str(tmp_path / "mixed")}, **TINY, max_steps=2,
                         num_workers=0, save_steps=100, distil_weight=0.5)
    assert mixed.steps == 2 and mixed.log[0]["loss"] != pytest.approx(alone.log[0]["loss"])


def test_a_run_file_gives_the_teacher_scores_and_must_cover_every_passage(world, tmp_path):
    lines = [(group["query_id"], passage["docid"], index * 0.25)
             for group in world["groups"]
             for index, passage in enumerate(group["positive_passages"] + group["negative_passages"])]
    run = tmp_path / "teacher-run.txt"
    run.write_text("".join(f"{qid}\t{docid}\t{score}\n" for qid, docid, score in lines))
    config = make_config(TrainConfig, **{**world["flags"], "distill_from": str(run)}, **TINY)
    queries = prepare_data(config.data, resolve_model(config.model, config.text)).queries
    rows = distillation_table(queries, config, default_cache_dir()).read(["positive_scores", "negative_scores"])
    assert [score for row in rows.to_pylist() for score in row["positive_scores"] + row["negative_scores"]] == \
        [score for _, _, score in lines]
    run.write_text("".join(f"{qid}\t{docid}\t{score}\n" for qid, docid, score in lines[1:]))
    config = make_config(TrainConfig, **{**world["flags"], "distill_from": str(run)}, **TINY)
    with pytest.raises(RaytevError, match=f"no score for query 'q0' and passage '{lines[0][1]}'"):
        distillation_table(queries, config, default_cache_dir())


def test_distillation_refuses_what_it_cannot_do(world):
    with pytest.raises(RaytevError, match="--distill_from with --backend jax"):
        raytev.train(**world["flags"], **TINY, backend="jax")
    with pytest.raises(RaytevError, match="--distil_weight must be in"):
        raytev.train(**world["flags"], **TINY, distil_weight=0)
    with pytest.raises(RaytevError, match="no sequence-classification head"):
        raytev.train(**{**world["flags"], "distill_from": world["flags"]["model_name_or_path"]}, **TINY, max_steps=1,
                     num_workers=0)
