"""--backend jax end to end on real Ray: JaxTrainer across processes, the train command, resume after a killed
worker, and encode.

Tolerances: 2 workers x 2 devices vs one process: loss 1e-6, weights after one SGD step 1e-5 relative to each
tensor's scale (float32; sums run in another order across processes);
resumed vs uninterrupted weights 1e-6; JAX vs torch embeddings 1e-4.
"""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import save_tiny_bert, toy_training_groups, write_jsonl
from modeling_helpers import toy_batch
from ray_train_probe import JAX_BATCH, jax_one_step, jax_sgd_step
from test_training import TINY, final_weights, kill_a_worker_once_a_checkpoint_is_registered, logged_steps

import raytev
from raytev.encoding.embeddings import load_embeddings

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_run(tmp_path):
    """A tiny model folder (dropout on) and 40 training groups."""
    model = save_tiny_bert(tmp_path / "model", dropout=0.1)
    data = write_jsonl(tmp_path / "train.jsonl", toy_training_groups(40))
    return {"model_name_or_path": str(model), "dataset_path": str(data), "output_dir": str(tmp_path / "out")}


def test_jax_trainer_on_two_workers_with_two_devices_each_equals_one_process(ray_session, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxTrainer

    folder = save_tiny_bert(tmp_path / "model")  # dropout off here (on in test_tevax's device tests): compiles 2x faster
    out = tmp_path / "step.pkl"
    JaxTrainer(jax_one_step, train_loop_config={"model": str(folder), "untied": False, "out": str(out),
                                                "cpu_devices": 2},
               scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
               run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
    loss, distributed = pickle.loads(out.read_bytes())
    batch = {name: tensor.numpy() for name, tensor in toy_batch(**JAX_BATCH).items()}
    reference_loss, reference = jax_sgd_step(str(folder), False, batch, jax.devices()[:1])
    assert abs(loss - reference_loss) <= 1e-6
    for got, expected in zip(distributed, reference, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
    # The step moved the weights (SGD with lr 1: new = old - gradient), so equal results compare real gradients.
    from raytev.model.resolved import resolve_folder
    from raytev.tevax.retriever import load_retriever

    initial = jax.tree.leaves(load_retriever(resolve_folder(str(folder)))[1])
    moved = sum(float(np.abs(np.asarray(before) - after).max()) > 1e-6 for before, after in zip(initial, reference))
    assert moved > 0.8 * len(reference)


def test_the_train_command_trains_with_jax_and_the_model_loads_in_transformers_and_encodes(ray_session, tiny_run,
                                                                                          tmp_path, tiny_beir,
                                                                                          monkeypatch):
    result = raytev.train(**tiny_run, **TINY, num_train_epochs=3, num_workers=0, save_steps=10, backend="jax",
                          jax_cpu_devices=2)
    assert result.steps == 30
    losses = [entry["loss"] for entry in result.log]
    assert losses[-1] < 0.5 * losses[0]
    out = Path(tiny_run["output_dir"])
    trained, start = final_weights(str(out)), final_weights(tiny_run["model_name_or_path"])
    assert trained.keys() == start.keys() and "pooler.dense.weight" in trained  # the pooler is carried through
    assert max(float((trained[name] - start[name]).abs().max()) for name in start) > 1e-3

    # encode --backend jax == encode --backend torch on the trained model (in-process and on an actor).
    common = dict(model_name_or_path=str(out), dataset_path=str(tiny_beir), passage_max_len=24,
                  per_device_eval_batch_size=5)
    raytev.encode(**common, encode_output_path=str(tmp_path / "torch"), num_actors=0)
    raytev.encode(**common, encode_output_path=str(tmp_path / "jax"), num_actors=0, backend="jax")
    raytev.encode(**common, encode_output_path=str(tmp_path / "jax-actor"), num_actors=1, backend="jax",
                  jax_cpu_devices=2)
    torch_ids, torch_vectors = load_embeddings(str(tmp_path / "torch"))
    for name in ("jax", "jax-actor"):
        ids, vectors = load_embeddings(str(tmp_path / name))
        assert list(ids) == list(torch_ids)
        assert np.abs(vectors - torch_vectors).max() <= 1e-4, name

    # The pipeline hands --backend to its encoding stages.
    import raytev.tevax.inference as inference

    sides, make_embedder = [], inference.make_embedder
    monkeypatch.setattr(inference, "make_embedder", lambda model, is_query, *rest: sides.append(is_query) or
                        make_embedder(model, is_query, *rest))
    piped = {backend: raytev.pipeline(model_name_or_path=str(out), dataset_name=str(tiny_beir), dataset_split="test",
                                      output_dir=str(tmp_path / f"pipeline-{backend}"), num_actors=0,
                                      passage_max_len=24, backend=backend).metrics for backend in ("jax", "torch")}
    assert sorted(sides) == [False, True]  # passages and queries, by JAX, in the jax run only
    assert abs(piped["jax"]["nDCG@10"] - piped["torch"]["nDCG@10"]) <= 1e-6


def test_a_killed_jax_worker_resumes_and_ends_where_an_uninterrupted_run_does(ray_session, tiny_run, tmp_path):
    run_dir = Path(tiny_run["output_dir"]) / "checkpoints"
    save_tiny_bert(Path(tiny_run["model_name_or_path"]))  # no dropout: XLA compiles it twice as fast
    # 12 steps over a 10-step epoch, checkpoints every 3: the restart may resume in either epoch.
    options = dict(TINY, shuffle_buffer_size=8, max_steps=12, save_steps=3, num_workers=1, max_failures=2,
                   save_total_limit=20, backend="jax")
    killed: list = []
    killer = threading.Thread(target=kill_a_worker_once_a_checkpoint_is_registered,
                              args=(run_dir, time.time(), killed))
    killer.start()
    result = raytev.train(**tiny_run, **options)
    killer.join()
    assert killed, "no worker was killed: the run finished before Ray registered a checkpoint"
    assert result.steps == 12 and result.resumed_from is not None and result.resumed_from % 3 == 0
    assert logged_steps(result.log) == list(range(1, 13))
    uninterrupted = raytev.train(**{**tiny_run, "output_dir": str(tmp_path / "uninterrupted")}, **options)
    assert uninterrupted.resumed_from is None
    resumed, reference = final_weights(tiny_run["output_dir"]), final_weights(str(tmp_path / "uninterrupted"))
    assert max(float((resumed[name] - reference[name]).abs().max()) for name in reference) <= 1e-6
    start = final_weights(tiny_run["model_name_or_path"])
    assert max(float((start[name] - reference[name]).abs().max()) for name in reference) > 1e-3
