"""The Ray Data feed on a real local Ray: streamed groups become padded, correctly sampled numpy batches."""

from __future__ import annotations

import threading

import numpy as np

import pytest

from raytev.config.sections import DataSection, TrainingSection
from raytev.data.collate import TrainingCollator
from raytev.data.feed import iter_training_batches, training_dataset
from raytev.data.prepare import prepare_data
from raytev.data.sampling import GroupSampler
from raytev.errors import RaytevError
from helpers import group, passage, resolved, write_jsonl

pytestmark = pytest.mark.slow

GROUP_SIZE = 3


@pytest.fixture
def prepared_groups(tmp_path, tiny_tokenizer_dir):
    records = [group(f"q{i}", f"what is {'a ' * (i % 5)}cat {i}",
                     [passage(f"p{i}", f"cat {i}")],
                     [passage(f"n{i}-{j}", f"dog {'barks ' * j}{i}") for j in range(4)])
               for i in range(20)]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    data, training = DataSection(dataset_path=str(path), seed=11), TrainingSection(train_group_size=GROUP_SIZE)
    return prepare_data(data, resolved(tiny_tokenizer_dir)), data, training


def expected_group_tokens(queries_table, query_id, sampler, epoch):
    row = next(r for r in queries_table.read().to_pylist() if r["query_id"] == query_id)
    return sampler.sample(query_id, row["positive_input_ids"], row["negative_input_ids"], epoch)


def test_feed_yields_sampled_padded_batches(ray_session, prepared_groups):
    prepared, data, training = prepared_groups
    collator = TrainingCollator.for_table(prepared.queries, training, data.seed, epoch=2)
    dataset = training_dataset(prepared.queries, training.train_group_size)
    batches = list(iter_training_batches(dataset, collator, batch_size=8))
    assert len(batches) == 2  # 20 queries, batches of 8, the last partial batch dropped
    table_rows = prepared.queries.read().to_pylist()
    ids_in_order = [row["query_id"] for row in table_rows]
    for index, batch in enumerate(batches):
        assert batch["query_input_ids"].shape[0] == 8
        assert batch["passage_input_ids"].shape[0] == 8 * GROUP_SIZE
        for name in ("query_input_ids", "passage_input_ids"):
            assert batch[name].shape[1] % 8 == 0
        # Without shuffling the blocks stream in file order: check each group's tokens.
        for row in range(8):
            query_id = ids_in_order[index * 8 + row]
            expected = expected_group_tokens(prepared.queries, query_id, collator.sampler, epoch=2)
            for slot, tokens in enumerate(expected):
                got = batch["passage_input_ids"][row * GROUP_SIZE + slot]
                mask = batch["passage_attention_mask"][row * GROUP_SIZE + slot]
                assert got[: len(tokens)].tolist() == list(tokens) and int(mask.sum()) == len(tokens)


def test_equal_streaming_split_gives_every_worker_the_same_steps(ray_session, prepared_groups):
    prepared, data, training = prepared_groups
    collator = TrainingCollator.for_table(prepared.queries, training, data.seed)
    shards = training_dataset(prepared.queries, training.train_group_size).streaming_split(2, equal=True)
    seen: dict[int, list] = {0: [], 1: []}

    def consume(rank):
        for batch in iter_training_batches(shards[rank], collator, batch_size=4):
            seen[rank].append(batch["query_input_ids"].shape)

    threads = [threading.Thread(target=consume, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(seen[0]) == len(seen[1]) == 2  # 10 queries a worker, batches of 4, partial dropped
    assert all(shape[0] == 4 for shape in seen[0] + seen[1])


def test_feed_refuses_tables_that_cannot_form_groups(ray_session, tmp_path, tiny_tokenizer_dir):
    path = write_jsonl(tmp_path / "train.jsonl", [group("q", "what", [passage("p", "cat")], [])])
    prepared = prepare_data(DataSection(dataset_path=str(path)), resolved(tiny_tokenizer_dir))
    with pytest.raises(RaytevError, match="no negative passage.*--train_group_size 1"):
        training_dataset(prepared.queries, train_group_size=2)
    # Groups without negatives still train with in-batch negatives only: the one group streams in whole.
    rows = training_dataset(prepared.queries, train_group_size=1).take_all()
    assert [(row["query_id"], len(row["positive_input_ids"]), len(row["negative_input_ids"])) for row in rows] == [
        ("q", 1, 0)]
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"query_id": "q", "query": "what"}])
    plain = prepare_data(DataSection(dataset_path=str(queries)), resolved(tiny_tokenizer_dir))
    with pytest.raises(RaytevError, match="without positive passages"):
        training_dataset(plain.queries, train_group_size=1)
    assert GroupSampler(1).negatives_needed == 0


def test_a_resumed_epoch_gets_the_batches_an_uninterrupted_one_gets_after_the_skipped_ones(ray_session,
                                                                                             prepared_groups):
    prepared, data, training = prepared_groups
    collator = TrainingCollator.for_table(prepared.queries, training, data.seed, epoch=1)
    dataset = training_dataset(prepared.queries, training.train_group_size)
    dataset.context.execution_options.preserve_order = True  # what training's ordered ingest sets
    shuffled = dict(shuffle_buffer=8, shuffle_seed=5)
    whole = list(iter_training_batches(dataset, collator, 4, **shuffled))
    resumed = list(iter_training_batches(dataset, collator, 4, skip=2, **shuffled))
    assert len(whole) == 5 and len(resumed) == 3
    for expected, got in zip(whole[2:], resumed):
        assert expected.keys() == got.keys() and all(np.array_equal(expected[name], got[name]) for name in expected)
    # The shuffle did reorder the stream (else this test would not tell a seeded shuffle from none).
    unshuffled = list(iter_training_batches(dataset, collator, 4))
    assert any(not np.array_equal(a["query_input_ids"], b["query_input_ids"]) for a, b in zip(whole, unshuffled))
    assert len(list(iter_training_batches(dataset, collator, 4, steps=3, **shuffled))) == 3
