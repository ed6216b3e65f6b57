"""Training on Ray Train end to end with a tiny model: gradients, loss, export, checkpoints, resume, failures."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from helpers import save_tiny_bert, toy_training_groups, write_jsonl
from modeling_helpers import max_gradient_difference
from ray_train_probe import full_batch_gradients, one_step_gradients
from transformers import AutoModel, AutoTokenizer

import raytev
from raytev.compat import registered_checkpoint
from raytev.errors import RaytevError
from raytev.modeling.dense import DenseModel
from raytev.training.state import CHECKPOINT_PATTERN, latest_checkpoint

pytestmark = pytest.mark.slow

TINY = dict(train_group_size=3, per_device_train_batch_size=4, learning_rate=1e-3, pooling="mean", normalize=True,
            temperature=0.1, logging_steps=1, shuffle_buffer_size=0)


@pytest.fixture
def tiny_run(tmp_path):
    """A tiny model folder and 40 training groups."""
    model = save_tiny_bert(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", toy_training_groups(40))
    return {"model_name_or_path": str(model), "dataset_path": str(data), "output_dir": str(tmp_path / "out")}


def logged_steps(log: list[dict]) -> list[int]:
    return [entry["step"] for entry in log if "step" in entry]


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_two_workers_give_the_full_batch_gradients(ray_session, tmp_path, untied):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    folder = save_tiny_bert(tmp_path / "model")
    out = tmp_path / "grads.pt"
    TorchTrainer(one_step_gradients, train_loop_config={"model": str(folder), "untied": untied, "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
    distributed = torch.load(out)
    reference = full_batch_gradients(folder, untied)
    assert max_gradient_difference(distributed, reference) <= 1e-5
    assert sum(bool(g.abs().max() > 1e-6) for g in reference.values()) > 0.8 * len(reference)


def test_in_process_training_lowers_the_loss_and_exports_a_loadable_model(ray_session, tiny_run):
    result = raytev.train(**tiny_run, **TINY, num_train_epochs=3, num_workers=0, save_steps=10)
    assert result.steps == 30 and result.epochs == 3  # 40 queries // 4 per step = 10 steps an epoch
    losses = [entry["loss"] for entry in result.log]
    assert losses[-1] < 0.5 * losses[0]
    out = Path(tiny_run["output_dir"])
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == list(
        range(1, 31))
    assert AutoModel.from_pretrained(str(out)) is not None
    assert AutoTokenizer.from_pretrained(str(out)).convert_tokens_to_ids("cat") > 4
    # The exported model embeds exactly as the final checkpoint's model does.
    exported = DenseModel.from_pretrained(str(out)).eval()
    checkpoint = DenseModel.from_pretrained(str(latest_checkpoint(out / "checkpoints") / "model")).eval()
    ids = torch.tensor([[2, 8, 9, 3], [2, 10, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert torch.equal(exported.encode_query(ids, mask), checkpoint.encode_query(ids, mask))
    assert exported.settings.pooling == "mean" and exported.settings.temperature == 0.1


def test_rerunning_resumes_from_the_last_checkpoint(ray_session, tiny_run):
    first = raytev.train(**tiny_run, **TINY, max_steps=6, save_steps=3, num_workers=0)
    assert first.steps == 6 and first.resumed_from is None
    with pytest.raises(RaytevError, match="already trained to step 6"):
        raytev.train(**tiny_run, **TINY, max_steps=6, save_steps=3, num_workers=0)
    with pytest.raises(RaytevError, match="global batch of 4 queries, this run has 8"):
        raytev.train(**{**tiny_run, **TINY, "per_device_train_batch_size": 8}, max_steps=10, num_workers=0)
    second = raytev.train(**tiny_run, **TINY, max_steps=10, save_steps=3, num_workers=0)
    assert second.steps == 10 and second.resumed_from == 6
    assert logged_steps(second.log) == list(range(1, 11))  # steps 1-6 from the first run, none repeated
    fresh = raytev.train(**tiny_run, **TINY, max_steps=4, save_steps=2, num_workers=0, overwrite_output_dir=True)
    assert fresh.resumed_from is None and logged_steps(fresh.log) == [1, 2, 3, 4]


def test_gradcache_and_bf16_train_through_the_loop(ray_session, tiny_run):
    result = raytev.train(**tiny_run, **TINY, num_train_epochs=2, num_workers=0, save_steps=100, grad_cache=True,
                          gc_q_chunk_size=2, gc_p_chunk_size=5, bf16=True)
    losses = [entry["loss"] for entry in result.log]
    assert result.steps == 20 and all(loss == loss for loss in losses) and losses[-1] < losses[0]


def test_fp16_trains_with_a_gradient_scaler(ray_session, tiny_run):
    result = raytev.train(**tiny_run, **TINY, max_steps=8, num_workers=0, save_steps=8, fp16=True)
    losses = [entry["loss"] for entry in result.log]
    assert result.steps == 8 and all(loss == loss and loss < 10 for loss in losses)
    saved = torch.load(latest_checkpoint(Path(tiny_run["output_dir"]) / "checkpoints") / "optimizer.pt",
                       weights_only=True)
    assert saved["scaler"] is not None and saved["scaler"]["scale"] > 0  # the scaler's state is checkpointed


def kill_a_worker_once_a_checkpoint_is_registered(run_dir: Path, started: float, killed: list,
                                                  timeout: float = 240) -> None:
    """SIGKILL one of this run's Ray Train worker processes, as a lost node would, once Ray holds a checkpoint."""
    deadline = time.time() + timeout
    # A checkpoint's files land before Ray registers it: a worker killed in between restarts from scratch.
    while time.time() < deadline and (registered := registered_checkpoint(run_dir)) is None:
        time.sleep(0.05)
    for process in psutil.process_iter(["cmdline", "create_time"]):
        cmdline, created = process.info["cmdline"], process.info["create_time"]
        if cmdline and cmdline[0].startswith("ray::RayTrainWorker") and created and created >= started - 1:
            os.kill(process.pid, signal.SIGKILL)
            killed.append(int(CHECKPOINT_PATTERN.match(registered).group(1)))
            return


def final_weights(output_dir: str) -> dict[str, torch.Tensor]:
    """The exported model's parameters."""
    return dict(AutoModel.from_pretrained(output_dir).state_dict())


def test_a_killed_worker_resumes_exactly_where_an_uninterrupted_run_would_be(ray_session, tiny_run, tmp_path):
    run_dir = Path(tiny_run["output_dir"]) / "checkpoints"
    # Shuffled, and checkpoints every 3 steps of 5-step epochs: the restart resumes in the middle of an epoch.
    options = dict(TINY, shuffle_buffer_size=8, num_train_epochs=4, save_steps=3, num_workers=2, max_failures=2,
                   save_total_limit=20)
    killed: list = []
    killer = threading.Thread(target=kill_a_worker_once_a_checkpoint_is_registered,
                              args=(run_dir, time.time(), killed))
    killer.start()
    result = raytev.train(**tiny_run, **options)
    killer.join()
    assert killed, "no worker was killed: the run finished before Ray registered a checkpoint"
    assert result.steps == 20  # 4 epochs x (40 queries // 2 workers // 4 per step)
    # It resumes from the checkpoint registered at the kill, or a later one registered before the workers died.
    assert result.resumed_from is not None and killed[0] <= result.resumed_from < 20, (killed, result.resumed_from)
    assert result.resumed_from % 3 == 0
    steps = logged_steps(result.log)
    assert steps == list(range(1, 21))  # the log restored from the checkpoint continues without repeats
    resumed_at = next(i for i, entry in enumerate(result.log) if entry.get("event") == "resumed")
    assert result.log[resumed_at + 1]["step"] == result.resumed_from + 1
    # The same run, never interrupted, ends with the same weights: resuming lost and repeated nothing.
    uninterrupted = raytev.train(**{**tiny_run, "output_dir": str(tmp_path / "uninterrupted")}, **options)
    assert uninterrupted.resumed_from is None and uninterrupted.steps == 20
    resumed, reference = final_weights(tiny_run["output_dir"]), final_weights(str(tmp_path / "uninterrupted"))
    assert resumed.keys() == reference.keys()
    assert max(float((resumed[name] - reference[name]).abs().max()) for name in reference) <= 1e-6
    # ... and training moved them (equal weights because nothing trained would prove nothing).
    start = final_weights(tiny_run["model_name_or_path"])
    assert max(float((start[name] - reference[name]).abs().max()) for name in reference) > 1e-3


def test_the_train_command_takes_tevatron_v1_flags(ray_session, tiny_run, capsys, tmp_path):
    from raytev.cli import main

    argv = ["train", "--model_name_or_path", tiny_run["model_name_or_path"], "--train_dir", tiny_run["dataset_path"],
            "--output_dir", tiny_run["output_dir"], "--train_n_passages", "2", "--q_max_len", "16", "--p_max_len", "24",
            "--negatives_x_device", "false", "--per_device_train_batch_size", "8", "--max_steps", "3",
            "--num_workers", "0", "--pooling", "cls", "--save_steps", "3"]
    assert main(argv) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    arguments_file = Path(tiny_run["output_dir"]) / "training_args.json"
    arguments = json.loads(arguments_file.read_text())
    assert arguments["train_group_size"] == 2 and arguments["query_max_len"] == 16
    assert arguments["cross_worker_negatives"] is False
    assert main(argv[:-2] + ["--save_steps", "0"]) == 1
    assert "--save_steps must be at least 1" in capsys.readouterr().err
    # training_args.json is the command's JSON-file form: given back, it is the same run (already finished).
    assert main(["train", str(arguments_file)]) == 1
    assert "already trained to step 3" in capsys.readouterr().err
    # The Python API, given the same flags as keyword arguments, trains the same model.
    api = raytev.train(**{**arguments, "output_dir": str(tmp_path / "api")})
    assert api.steps == 3
    cli_weights, api_weights = final_weights(tiny_run["output_dir"]), final_weights(str(tmp_path / "api"))
    assert all(torch.equal(cli_weights[name], api_weights[name]) for name in cli_weights)
