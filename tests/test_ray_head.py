"""raytev on a Ray head started with `ray start`, token authentication on (Ray 2.60's default once a token exists):
a job submitted through the job API, the Python API through a Ray client, and raytev passing the token through.

The head runs in its own temporary folder, ports and HOME (where `ray get-auth-token --generate` puts the token), so
it shares nothing with the test session's Ray (`ray_session`, not used here) or any other Ray on the machine. Every
client runs in a process of its own with the environment a user would have (tests/ray_head_probe.py).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, make_tiny_beir, save_tiny_bert

from raytev.cluster import WORKER_ENV, worker_env
from raytev.ray_auth import enable_token_auth, token_source

TESTS = Path(__file__).parent
BIN = Path(sys.executable).parent
# Ray settings of this process that must not reach the head or the clients: the test session's Ray sets
# RAY_AUTH_MODE here when it starts, and an address would point the clients elsewhere.
RAY_SETTINGS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# Every process of the head carries this variable (with the fixture's own value): the cleanup finds them by it.
HEAD_MARKER = "RAYTEV_TEST_RAY_HEAD"


@dataclass
class RayHead:
    dashboard: str  # http://127.0.0.1:port: the job API
    client: str  # ray://127.0.0.1:port
    token: str



def user_env(**settings: str) -> dict:
    """This process's environment without its Ray settings, with this Python's scripts first on PATH, plus
    `settings`."""
    env = {name: value for name, value in os.environ.items() if name not in RAY_SETTINGS}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **settings}


def http_status(url: str, headers: dict | None = None) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def head_processes(marker: str):
    """Processes whose environment carries this head's marker: everything `ray start` started."""
    import psutil

    entry = f"{HEAD_MARKER}={marker}".encode()
    for process in psutil.process_iter():
        # /proc/<pid>/environ read whole: psutil's parser stops at the first empty entry, and a process that set
        # its title (ray::DashboardAgent) may have overwritten the start of that area with one.
        try:
            if entry in Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0"):
                yield process
        except OSError:
            continue


def stop_head(starter: subprocess.Popen, marker: str) -> None:
    """SIGTERM to every process of the head at once (`ray start` alone takes ~30 s stopping them one by one), then
    SIGKILL to what is left after a few seconds."""
    import psutil

    for signal_number, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5), (signal.SIGKILL, 10)):
        left = list(head_processes(marker))
        for process in left:
            try:
                process.send_signal(signal_number)
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=grace)
    if starter.poll() is None:
        starter.kill()
    starter.wait()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 as an operator starts one: a token first, then `ray start --head`."""
    root = tmp_path_factory.mktemp("ray-head")
    (root / "home").mkdir()
    marker = uuid.uuid4().hex
    env = user_env(HOME=str(root / "home"), RAYTEV_CACHE_DIR=str(root / "cache"), **{HEAD_MARKER: marker})
    # `ray get-auth-token --generate` writes ~/.ray/auth_token; `ray start --head` finds it and turns token
    # authentication on (without a token and without RAY_AUTH_MODE it would start with authentication off).
    token = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True,
                           text=True, timeout=120, check=True).stdout.strip()
    assert token and (root / "home" / ".ray" / "auth_token").read_text().strip() == token
    # Ray's unix sockets live under the temporary folder, and their paths are limited to ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rth-", dir="/tmp"))
    # Ports of their own: the defaults (6379, 10001, 8265, 52365) may be taken by another Ray on this machine.
    ports = {name: free_port() for name in ("port", "ray-client-server-port", "dashboard-port",
                                            "dashboard-agent-listen-port")}
    command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host",
               "127.0.0.1", "--num-cpus", "2", "--temp-dir", str(temp_dir), "--disable-usage-stats",
               *(f"--{name}={port}" for name, port in ports.items())]
    log_path = root / "ray-start.log"
    starter = None
    try:
        with open(log_path, "w") as log:
            starter = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        head = RayHead(f"http://127.0.0.1:{ports['dashboard-port']}",
                       f"ray://127.0.0.1:{ports['ray-client-server-port']}", token)
        wait_until_ready(head, starter, ports["ray-client-server-port"], log_path)
        yield head
    finally:
        if starter is not None:
            stop_head(starter, marker)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_until_ready(head: RayHead, starter: subprocess.Popen, client_port: int, log_path: Path,
                     timeout: float = 120) -> None:
    """Until the job API answers an authenticated request and the Ray client port accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if starter.poll() is not None:
            pytest.fail(f"`ray start` exited with {starter.returncode}:\n{log_path.read_text()}")
        try:
            jobs_ready = http_status(f"{head.dashboard}/api/jobs/", {"Authorization": f"Bearer {head.token}"}) == 200
            with socket.create_connection(("127.0.0.1", client_port), timeout=2):
                pass
            if jobs_ready:
                return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"the Ray head was not ready after {timeout} s:\n{log_path.read_text()}")


def probe(kind: str, arguments: dict, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run tests/ray_head_probe.py in a process of its own."""
    return subprocess.run([sys.executable, str(TESTS / "ray_head_probe.py"), kind, json.dumps(arguments)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=TESTS)


def probe_result(finished: subprocess.CompletedProcess) -> dict:
    assert finished.returncode == 0, f"the probe failed:\n{finished.stderr[-6000:]}"
    return json.loads(finished.stdout.strip().splitlines()[-1])


def assert_ranks_best(ranked: dict, query_ids, queries: np.ndarray, docids, passages: np.ndarray, depth: int):
    """`ranked` ({qid: [(docid, score)]}) holds each query's `depth` best inner products, computed here with numpy:
    the same scores in the same order, each docid with its own score (near-ties may come in either order)."""
    scores = queries @ passages.T
    assert set(ranked) == set(query_ids)
    for row, qid in enumerate(query_ids):
        truth = dict(zip(map(str, docids), scores[row].tolist()))
        hits = ranked[qid]
        assert [score for _, score in hits] == pytest.approx(sorted(truth.values(), reverse=True)[:depth], abs=1e-4)
        assert [score for _, score in hits] == pytest.approx([truth[docid] for docid, _ in hits], abs=1e-4)
        assert len({docid for docid, _ in hits}) == depth


# --- Token pass-through (no Ray) ---

def test_token_source_follows_rays_order(tmp_path):
    home = tmp_path / "home"
    assert token_source({}, home) is None
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    assert token_source({}, home) == str(home / ".ray" / "auth_token")
    named = tmp_path / "token"
    named.write_text("named")
    assert token_source({"RAY_AUTH_TOKEN_PATH": str(named)}, home) == str(named)
    # A variable that is set wins even when it leads nowhere: Ray does not fall back to ~/.ray/auth_token.
    assert token_source({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home) is None
    assert token_source({"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_TOKEN_PATH": str(named)}, home) == "RAY_AUTH_TOKEN"
    assert token_source({"RAY_AUTH_TOKEN": "  "}, home) is None
    assert token_source({"RAY_AUTH_TOKEN": ""}, home) == str(home / ".ray" / "auth_token")  # empty means unset


@pytest.mark.parametrize(("address", "environ", "has_token", "mode"), [
    ("ray://head:10001", {}, True, "token"),  # a client with a token and no mode: token mode
    ("ray://head:10001", {"RAY_AUTH_MODE": "disabled"}, True, "disabled"),  # an explicit mode is kept
    ("ray://head:10001", {}, False, None),  # no token: nothing to send
    ("10.0.0.1:6379", {}, True, None),  # joining as a node: the node's mode must be the cluster's, Ray decides
    ("auto", {}, True, None),  # Ray itself turns token mode on for a cluster it finds here
    (None, {}, True, None),
])
def test_token_mode_is_set_only_for_a_ray_client_with_a_token(tmp_path, address, environ, has_token, mode):
    given = {**environ, **({"RAY_AUTH_TOKEN": "secret"} if has_token else {})}
    environ = dict(given)
    assert enable_token_auth(address, environ, tmp_path) == ("RAY_AUTH_MODE" not in given and mode == "token")
    assert environ.get("RAY_AUTH_MODE") == mode


def test_a_jobs_driver_does_not_set_again_what_the_job_sets():
    # Ray refuses a driver's ray.init that names a variable of the job's runtime env, even with the same value.
    job = {"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAYTEV_CACHE_DIR": "/mnt/c"}}}
    assert worker_env({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)}) == {}
    assert worker_env({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": None})}) == WORKER_ENV
    assert worker_env({}) == WORKER_ENV


def test_a_refused_ray_client_is_told_what_to_set(monkeypatch, tmp_path):
    import raytev.cluster as cluster

    # What Ray 2.60 raises, after ~30 s, for a ray:// connection without the token (or with a wrong one).
    def refuse(**_):
        raise ConnectionError("ray client connection timeout")

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", refuse)
    with pytest.raises(cluster.RaytevError) as refused:
        cluster.connect("ray://head:10001")
    for part in ("ray://head:10001", "ray client connection timeout", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN",
                 "ray get-auth-token", "RAY_AUTH_MODE=(unset), token: none found"):
        assert part in str(refused.value)
    with pytest.raises(ConnectionError):  # joining as a node: Ray's own error
        cluster.connect("10.0.0.1:6379")


# --- On a real head ---

@pytest.mark.slow
def test_the_job_api_wants_the_token(ray_head):
    assert http_status(f"{ray_head.dashboard}/api/jobs/") == 401
    assert http_status(f"{ray_head.dashboard}/api/jobs/", {"Authorization": "Bearer wrong"}) == 403
    # `ray job list` from a plain shell fails; with RAY_AUTH_MODE=token and the token it works.
    command = [str(BIN / "ray"), "job", "list", "--address", ray_head.dashboard]
    plain = subprocess.run(command, env=user_env(RAY_AUTH_TOKEN=ray_head.token), capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode != 0 and "Authentication" in plain.stdout + plain.stderr
    with_mode = subprocess.run(command, env=user_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_head.token),
                               capture_output=True, text=True, timeout=120)
    assert with_mode.returncode == 0, with_mode.stderr


@pytest.fixture(scope="module")
def job_output(ray_head, tmp_path_factory):
    """A raytev job on the head: train a tiny model 2 steps, encode the corpus and the queries, search."""
    root = tmp_path_factory.mktemp("ray-head-job")
    beir = make_tiny_beir(root)
    start = save_tiny_bert(root / "start")
    out = root / "out"
    raytev = f"{shlex.quote(sys.executable)} -m raytev"
    steps = [
        f"{raytev} train --model_name_or_path {start} --dataset_path {beir} --output_dir {out}/model --max_steps 2 "
        f"--per_device_train_batch_size 2 --train_group_size 2 --num_negatives 2 --q_max_len 16 --p_max_len 24 "
        f"--learning_rate 1e-3 --save_steps 2 --logging_steps 1 --num_workers 0",
        f"{raytev} encode --model_name_or_path {out}/model --dataset_path {beir} --encode_output_path {out}/corpus "
        f"--num_actors 1",
        f"{raytev} encode --model_name_or_path {out}/model --dataset_path {beir} --dataset_split train "
        f"--encode_is_query --encode_output_path {out}/queries --num_actors 1",
        f"{raytev} search --query_reps {out}/queries --passage_reps {out}/corpus --depth 5 "
        f"--save_ranking_to {out}/run.txt",
    ]
    # What jobs/runtime_env.yaml sets, with the token cache here. Nothing about authentication: the job's driver
    # runs on the head and inherits the head's token settings.
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAYTEV_CACHE_DIR": str(root / "cache")}}
    # The submitting user's machine: RAY_AUTH_MODE=token and the token (here in RAY_AUTH_TOKEN), as the README says.
    submitted = probe_result(probe("job", {"address": ray_head.dashboard, "entrypoint": " && ".join(steps),
                                           "runtime_env": runtime_env, "timeout": 420},
                                   user_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_head.token), timeout=480))
    return {"submitted": submitted, "beir": beir, "start": start, "out": out}


def run_file(path: Path) -> dict:
    """{qid: [(docid, score)]} of a run file."""
    from raytev.data.runs import read_run
    from raytev.errors import ProblemLog

    problems = ProblemLog()
    run = read_run(path, problems)
    problems.raise_if_any()
    return {qid: [(entry.docid, entry.score) for entry in entries] for qid, entries in run.items()}


@pytest.mark.slow
def test_a_job_trains_encodes_and_searches_on_the_head(job_output):
    from transformers import AutoModel

    from raytev.encoding.embeddings import load_embeddings

    submitted, out = job_output["submitted"], job_output["out"]
    assert submitted["status"] == "SUCCEEDED", f"job {submitted['status']}; its logs:\n{submitted['logs'][-8000:]}"
    # Trained two steps and exported a model that loads and moved away from where it started.
    log = [json.loads(line) for line in (out / "model" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "step" in entry] == [1, 2]
    trained, initial = AutoModel.from_pretrained(out / "model"), AutoModel.from_pretrained(job_output["start"])
    assert trained.config.hidden_size == 32
    assert any(not np.allclose(a.detach().numpy(), b.detach().numpy()) for a, b in
               zip(trained.parameters(), initial.parameters()))
    # Every passage and training query embedded; the run ranks each query's 5 best by inner product.
    docids, passages = load_embeddings(str(out / "corpus"))
    query_ids, queries = load_embeddings(str(out / "queries"))
    assert sorted(docids.tolist()) == sorted(f"d{i}" for i in range(12)) and passages.shape == (12, 32)
    assert query_ids.tolist() == ["q0", "q1"]
    assert_ranks_best(run_file(out / "run.txt"), query_ids.tolist(), queries, docids, passages, 5)


@pytest.mark.slow
def test_python_api_through_a_ray_client(ray_head, job_output, tmp_path):
    import raytev
    from raytev.encoding.embeddings import load_embeddings

    if job_output["submitted"]["status"] != "SUCCEEDED":
        pytest.skip("the job failed (see test_a_job_trains_encodes_and_searches_on_the_head)")
    beir, job = job_output["beir"], job_output["out"]
    out = tmp_path / "out"
    # A user's machine: RAY_AUTH_MODE=token and a copy of the head's token file, then ray.init("ray://…"); each
    # raytev call goes to the cluster as a Ray task (Ray Data does not run in a Ray client's process). The job's
    # model encodes the queries again, and its corpus embeddings are indexed and searched.
    (tmp_path / "token").write_text(ray_head.token)
    env = user_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"), HOME=str(tmp_path),
                   RAYTEV_CACHE_DIR=str(tmp_path / "cache"))
    result = probe_result(probe("client", {"address": ray_head.client, "connect": "ray.init", "attempts": 4,
                                           "api": {"model": str(job / "model"), "beir": str(beir),
                                                   "corpus": str(job / "corpus"), "out": str(out)}}, env))
    assert result["client"] and result["cpus"] == 2
    assert (result["query_rows"], result["index"]) == (2, ["Flat", 12])
    # The same query vectors as the job's, so the same ranking as the job's run.
    query_ids, queries = load_embeddings(str(out / "queries"))
    job_ids, job_queries = load_embeddings(str(job / "queries"))
    assert query_ids.tolist() == job_ids.tolist() and np.allclose(queries, job_queries, atol=1e-5)
    docids, passages = load_embeddings(str(job / "corpus"))
    assert_ranks_best(result["ranked"], job_ids.tolist(), job_queries, docids, passages, 5)
    # The metrics are those of the job's run, scored here.
    assert set(result["metrics"]) >= {"nDCG@10", "MRR@10", "R@100", "MAP"}
    expected = raytev.evaluate(run=str(job / "run.txt"), qrels=str(beir / "qrels" / "train.tsv"))
    assert result["metrics"] == pytest.approx(expected)


@pytest.mark.slow
def test_raytev_passes_the_token_to_a_ray_client(ray_head, tmp_path):
    # Only the token, as `RAY_AUTH_TOKEN=$(ray get-auth-token)` gives it: raytev's connect() sets the mode. (Ray
    # alone fails here: ray.init("ray://…") with a token but no RAY_AUTH_MODE times out after ~30 s.)
    env = user_env(RAY_AUTH_TOKEN=ray_head.token, HOME=str(tmp_path))
    result = probe_result(probe("client", {"address": ray_head.client, "connect": "raytev", "attempts": 4}, env))
    assert result["client"] and result["auth_mode"] == "token" and result["cpus"] == 2
