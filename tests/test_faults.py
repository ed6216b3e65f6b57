"""Faults injected into encoding and training on Ray: an encoding actor SIGKILLed mid-run, a training run's
progress-bar actor lost.

What raytev promises (raytev.encoding.encoder.run_actor_pool): Ray restarts a dead encoding actor and retries its
shard, so the same `encode` call completes; every id is in the output once, with the vectors an uninterrupted run
writes. Node-level faults (a lost worker node during encoding and training) are in benchmarks/node_faults.py: they
need a two-node cluster of their own, too slow for the suite.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from helpers import make_config, save_tiny_bert, write_jsonl

from raytev.config.stages import EncodeConfig
from raytev.encoding.embeddings import load_embeddings, read_manifest
from raytev.encoding.encoder import encode
from raytev.training.state import TrainerState
from raytev.training.worker import TrainingLog

pytestmark = pytest.mark.slow

WORDS = ["small", "cat", "dog", "animal", "barks", "the", "of", "and", "query", "passage"]
PASSAGES = 300
ROWS_PER_SHARD = 10  # 30 shards through one actor: the kill lands with most of them still to do


@pytest.fixture
def long_corpus(tmp_path):
    """A tiny model and PASSAGES passages of 20 to 60 words, in the shape test_encoding's corpus has."""
    model = save_tiny_bert(tmp_path / "model")
    rows = [{"docid": f"d{i}", "title": "t",
             "text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(20 + (i * 37) % 40))}
            for i in range(PASSAGES)]
    return {"model": str(model), "corpus": str(write_jsonl(tmp_path / "corpus.jsonl", rows))}


def run_encode(corpus: dict, out: Path, num_actors: int = 1):
    return encode(make_config(EncodeConfig, model_name_or_path=corpus["model"], dataset_path=corpus["corpus"],
                              encode_output_path=str(out), num_actors=num_actors, rows_per_shard=ROWS_PER_SHARD,
                              per_device_eval_batch_size=4, passage_max_len=128))


def own_processes(title: str) -> list[psutil.Process]:
    """This test process's descendants whose title starts with `title`: the local Ray that ray_session started
    (its raylet and workers are our children), never another user's Ray on this machine."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.cmdline() and child.cmdline()[0].startswith(title):
                found.append(child)
        except psutil.Error:  # exited while we looked
            pass
    return found


def kill_encoder_after_first_shard(out: Path, kills: list, timeout: float = 120) -> None:
    """SIGKILL the encoding actor's process once the first shard file is in place (the run is mid-way then)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        written = list(out.glob("shard-*.parquet")) if out.is_dir() else []
        victims = own_processes("ray::ShardEncoder") if written else []
        if victims:
            for victim in victims:
                os.kill(victim.pid, signal.SIGKILL)
            kills.append({"pids": [victim.pid for victim in victims], "shards_done": len(written)})
            return
        time.sleep(0.01)


def test_a_killed_encoding_actor_is_restarted_and_the_run_writes_every_id_once(ray_session, long_corpus, tmp_path):
    reference_out = tmp_path / "uninterrupted"
    reference = run_encode(long_corpus, reference_out)
    assert reference.rows == PASSAGES and reference.shards == PASSAGES // ROWS_PER_SHARD
    expected_ids, expected = load_embeddings(str(reference_out))

    out, kills = tmp_path / "killed", []
    killer = threading.Thread(target=kill_encoder_after_first_shard, args=(out, kills))
    killer.start()
    result = run_encode(long_corpus, out)  # the same call completes: no re-run needed
    killer.join()
    assert kills, "the encoding actor was never killed"
    assert kills[0]["shards_done"] < result.shards, f"killed after the last shard: {kills}"
    assert result.rows == PASSAGES and result.reused_shards == 0
    survivors = own_processes("ray::ShardEncoder")
    assert not any(process.pid in kills[0]["pids"] for process in survivors)

    manifest = read_manifest(out)
    assert manifest.complete and manifest.count == PASSAGES
    ids, vectors = load_embeddings(str(out))
    counts = Counter(ids.tolist())
    assert set(counts) == {f"d{i}" for i in range(PASSAGES)}  # none lost
    assert max(counts.values()) == 1  # none duplicated
    assert ids.tolist() == expected_ids.tolist()
    # Same code, same shards, same batches, same CPU: the restarted actor computes the very same bits.
    np.testing.assert_array_equal(vectors, expected)
    # Nothing but the shards and the manifest: a shard the actor was writing when killed left no temporary file.
    assert sorted(path.name for path in out.iterdir()) == sorted([*manifest.shards, "manifest.json"])


def test_a_temporary_file_left_by_a_killed_writer_is_removed_when_the_run_finishes(ray_session, long_corpus,
                                                                                   tmp_path):
    out = tmp_path / "emb"
    run_encode(long_corpus, out, num_actors=0)  # in-process: the clean-up is the same whoever wrote the shards
    # What a writer killed between creating its temporary file and renaming it leaves behind.
    (out / "shard-00003.parquet").unlink()
    leftover = out / ".shard-00003.parquet.0123abcd.tmp"
    leftover.write_bytes(b"PAR1 half a shard")
    result = run_encode(long_corpus, out, num_actors=0)
    assert (result.rows, result.reused_shards) == (ROWS_PER_SHARD, result.shards - 1)
    assert not leftover.exists()
    ids, _ = load_embeddings(str(out))
    assert sorted(Counter(ids.tolist()).values()) == [1] * PASSAGES


def test_a_lost_progress_bar_actor_does_not_fail_training(ray_session):
    """The driver's bar reads a queue actor; lost with its node, rank 0 trains on (its restarts would get the same
    dead handle, so raising here would fail every restart until max_failures ran out)."""
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})
    plan = SimpleNamespace(config=SimpleNamespace(cluster=SimpleNamespace(verbose=False)),
                           training=SimpleNamespace(logging_steps=1), total_steps=3, steps_per_epoch=3,
                           global_batch_size=4, progress=queue)
    log, state = TrainingLog(plan, rank=0), TrainerState()
    state.step = 1
    log.add(state, 0.5, 1e-3)
    assert queue.get(timeout=10) == {"step": 1, "loss": 0.5}
    ray_session.kill(queue.actor)
    for step in (2, 3):
        state.step = step
        log.add(state, 0.25, 1e-3)  # raised RayActorError before
    assert [entry["step"] for entry in state.log] == [1, 2, 3] and log.progress is None
