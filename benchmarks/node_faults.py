"""A lost worker node during training, encoding and search, on a two-node Ray cluster on this machine.

Both nodes run on 127.0.0.1, each a `ray start --block` of its own (its own raylet, ports and resources): a head
(1 CPU, resource "head") and a worker (2 CPUs, resource "worker"). The Train worker (--cpus_per_worker 2) and the
encoding actor (--cpus_per_actor 2) fit only on the worker node; the driver, Ray Train's controller and Ray Data's
reads stay on the head. Mid-run every process of the worker node is SIGKILLed (its `ray start`, raylet, agents and
workers: a machine lost), then a fresh worker node joins, as an autoscaler or an operator would bring one.

(a) `raytev train` (checkpoints every --save_steps, --max_failures 2): the killed run must resume from its last
    checkpoint and end at the uninterrupted run's step count, with its weights.
(b) `raytev encode`: the killed run must finish in the same call with every id exactly once and the uninterrupted
    run's vectors; the output folder is under /tmp, which both nodes see (same machine).
(c) `raytev search --search_workers 2 --search_cpus_per_task 2` over flat embedding shards: the run must be byte
    for byte the one-process run (`--shard_search`), uninterrupted and with the worker node killed mid-search.

Recorded: steps, the step restored from, seconds from the kill to training stepping again (and to the next shard
written), ids lost and duplicated, wall times against uninterrupted runs. Every process started here is found by a
marker in its environment and killed at the end, on failure too; other Rays on this machine are never touched.

    .venv/bin/python benchmarks/node_faults.py [--work /tmp/nodefaults] [--max_steps 40] [--passages 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import write_result  # noqa: E402
from helpers import free_port, save_tiny_bert, toy_training_groups, write_jsonl  # noqa: E402

BIN = Path(sys.executable).parent
MARKER = "RAYTEV_NODE_FAULTS"  # in the environment of every process started here, with a per-process-tree value
RAY_SETTINGS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port")


def processes_marked(value: str) -> list[psutil.Process]:
    """Every process whose environment has MARKER=value (all that one `ray start` or driver started)."""
    entry = f"{MARKER}={value}".encode()
    found = []
    for process in psutil.process_iter():
        try:  # read whole: a process that set its title may have overwritten the start of its environ area
            if entry in Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0"):
                found.append(process)
        except OSError:
            continue
    return found


def kill_marked(value: str, grace: float = 0.0) -> int:
    """SIGTERM (if `grace`), then SIGKILL what is left of every process marked `value`; how many there were."""
    victims = processes_marked(value)
    left = victims
    for number, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)) if grace else ((signal.SIGKILL, 5),):
        for process in left:
            try:
                process.send_signal(number)
            except psutil.Error:
                pass
        left = psutil.wait_procs(left, timeout=wait)[1]
    return len(victims)


class Cluster:
    """A head and worker nodes on 127.0.0.1, each a `ray start --block` in its own session, found by marker."""

    def __init__(self, work: Path):
        self.work, self.run_id = work, uuid.uuid4().hex[:8]
        # A temporary folder per node, as on separate machines (one shared folder would also have each node's log
        # monitor relay the other's worker output). Short: Ray's unix socket paths are limited to ~107 characters.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="nfr-", dir="/tmp"))
        self.port = free_port()
        home = work / "home"  # no ~/.ray/auth_token here: token authentication stays off on this private cluster
        home.mkdir(parents=True, exist_ok=True)
        self.env = {name: value for name, value in os.environ.items() if name not in RAY_SETTINGS}
        self.env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{self.env.get('PATH', '')}",
                        RAYTEV_CACHE_DIR=str(work / "cache"), TOKENIZERS_PARALLELISM="false",
                        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_USAGE_STATS_ENABLED="0")
        self.markers: list[str] = []
        self.address = f"127.0.0.1:{self.port}"

    def marked_env(self, name: str) -> dict:
        marker = f"{self.run_id}-{name}"
        if marker not in self.markers:
            self.markers.append(marker)
        return {**self.env, MARKER: marker}

    def start_node(self, name: str, head: bool) -> str:
        """Start a node (`ray start --block` in a session of its own); its marker."""
        ports = {name: free_port() for name in NODE_PORTS}
        if head:
            ports.update({"port": self.port, "ray-client-server-port": free_port()})
            role = ["--head", "--num-cpus", "1", "--resources", json.dumps({"head": 1}), "--include-dashboard",
                    "false"]
        else:
            role = ["--address", self.address, "--num-cpus", "2", "--resources", json.dumps({"worker": 1})]
        command = [str(BIN / "ray"), "start", "--block", *role, "--node-ip-address", "127.0.0.1",
                   "--temp-dir", str(self.temp_dir / name), "--disable-usage-stats",
                   *(f"--{flag}={port}" for flag, port in ports.items())]
        env = self.marked_env(name)
        with open(self.work / f"ray-start-{name}.log", "w") as log:
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return env[MARKER]

    def alive_nodes(self) -> dict[str, float]:
        """Alive node id -> its CPUs, asked in a short-lived driver (this process stays out of Ray)."""
        probe = ("import json, ray; ray.init(address='%s', log_to_driver=False, logging_level='ERROR'); "
                 "print(json.dumps({n['NodeID']: n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']}))"
                 % self.address)
        done = subprocess.run([sys.executable, "-c", probe], env=self.marked_env("probe"), capture_output=True,
                              text=True, timeout=120)
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {}

    def wait_for_workers(self, count: int, timeout: float = 180) -> None:
        """Wait until `count` worker nodes (2 CPUs) and the head are alive."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sorted(self.alive_nodes().values()) == sorted([1.0] + [2.0] * count):
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach a head and {count} worker node(s); see {self.work}")

    def stop(self) -> None:
        """Every process started here, however far it got; then the temporary folder."""
        for marker in reversed(self.markers):
            kill_marked(marker, grace=3)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class Driver:
    """A raytev command run as a user runs it (its own process, marked), its output lines timestamped."""

    def __init__(self, cluster: Cluster, name: str, command: list[str]):
        self.lines: list[tuple[float, str]] = []
        self.log = open(cluster.work / f"{name}.log", "w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, env=cluster.marked_env(name), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            self.log.write(line)
            self.log.flush()

    def wait(self, timeout: float = 900) -> float:
        """Wait for the command; its wall time. Fails with its output's tail if it failed."""
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        self.log.close()
        seconds = time.monotonic() - self.started
        if code != 0:
            tail = "\n".join(line for _, line in self.lines[-40:])
            raise RuntimeError(f"{self.process.args[2:4]} exited with {code}:\n{tail}")
        return seconds


def raytev(stage: str, **flags) -> list[str]:
    """`python -m raytev <stage> --flag value ...`."""
    command = [sys.executable, "-m", "raytev", stage]
    for flag, value in flags.items():
        command += [f"--{flag}", str(value).lower() if isinstance(value, bool) else str(value)]
    return command


def kill_worker_node(marker: str) -> tuple[float, list[str]]:
    """SIGKILL every process of a worker node at once, as a lost machine; (kill time, the processes' titles)."""
    victims, titles = processes_marked(marker), []
    for process in victims:
        try:
            titles.append((process.cmdline() or [process.name()])[0].split("/")[-1])
        except psutil.Error:
            pass
    killed_at = time.monotonic()
    for process in victims:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=10)
    return killed_at, sorted(titles)


def train_faults(cluster: Cluster, work: Path, worker: str, max_steps: int, save_steps: int) -> tuple[dict, str]:
    """(a): an uninterrupted run, then a run whose worker node is killed once Ray registered a checkpoint."""
    from raytev.compat import registered_checkpoint
    from raytev.training.state import CHECKPOINT_PATTERN

    model = save_tiny_bert(work / "model")
    # 4 queries a step, one worker: max_steps <= groups / 4 keeps it to one epoch (Ray Data re-reads every epoch,
    # ~12 s here), and a kill at an early checkpoint resumes mid-epoch, the harder case.
    data = write_jsonl(work / "train.jsonl", toy_training_groups(max(40, 4 * max_steps)))
    options = dict(model_name_or_path=model, dataset_path=data, address=cluster.address, num_workers=1,
                   cpus_per_worker=2, max_steps=max_steps, save_steps=save_steps, max_failures=2, logging_steps=1,
                   train_group_size=3, per_device_train_batch_size=4, learning_rate=1e-3, pooling="mean",
                   normalize=True, temperature=0.1, shuffle_buffer_size=8, save_total_limit=50, verbose=True)
    print("(a) training, uninterrupted ...", flush=True)
    baseline_s = Driver(cluster, "train-uninterrupted",
                        raytev("train", output_dir=work / "train-uninterrupted", **options)).wait()
    print(f"    {baseline_s:.1f} s", flush=True)

    print("(a) training, worker node killed after the first registered checkpoint ...", flush=True)
    out = work / "train-killed"
    run = Driver(cluster, "train-killed", raytev("train", output_dir=out, **options))
    registered = None
    while run.process.poll() is None and (registered := registered_checkpoint(out / "checkpoints")) is None:
        time.sleep(0.05)
    if registered is None:
        raise RuntimeError("training ended before Ray registered a checkpoint: raise --max_steps")
    killed_at, killed = kill_worker_node(worker)
    registered_step = int(CHECKPOINT_PATTERN.match(registered).group(1))
    print(f"    killed the worker node ({len(killed)} processes: {', '.join(killed)}) with checkpoint step "
          f"{registered_step} registered", flush=True)
    worker = cluster.start_node("worker-2", head=False)
    wall_s = run.wait()
    # Rank 0's "step n/N" lines, relayed by Ray with its pid: the killed worker's pid and the restarted one's differ
    # (Ray relays lines with a delay, so the kill time alone does not say which process printed a line).
    step_line = re.compile(r"pid=(\d+)\).* step (\d+)/\d+ ")
    steps = [(at, int(match.group(1)), int(match.group(2))) for at, line in run.lines
             if (match := step_line.search(line))]
    killed_pids = {pid for at, pid, _ in steps if at <= killed_at}
    restarted = [(at, step) for at, pid, step in steps if pid not in killed_pids]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    logged = [entry["step"] for entry in log if "step" in entry]
    resumes = [entry["from_step"] for entry in log if entry.get("event") == "resumed"]
    trained, reference = final_weights(out), final_weights(work / "train-uninterrupted")
    result = {
        "max_steps": max_steps, "save_steps": save_steps,
        "final_step": logged[-1] if logged else None,
        "logged_steps_are_1_to_final_once": logged == list(range(1, max_steps + 1)),
        "registered_checkpoint_at_kill": registered_step,
        "last_step_of_killed_worker": max((step for _, pid, step in steps if pid in killed_pids), default=None),
        "restored_from_step": resumes[0] if resumes else None, "restores": len(resumes),
        "first_step_after_restart": restarted[0][1] if restarted else None,
        "seconds_kill_to_training_again": round(restarted[0][0] - killed_at, 1) if restarted else None,
        "processes_killed": killed,
        "max_weight_difference_vs_uninterrupted": max(float(np.abs(trained[name] - reference[name]).max())
                                                      for name in reference),
        "wall_s": round(wall_s, 1), "uninterrupted_wall_s": round(baseline_s, 1),
        "summary_line": next((line for _, line in reversed(run.lines) if line.startswith("trained ")), None),
    }
    return result, worker


def final_weights(output_dir: Path) -> dict[str, np.ndarray]:
    """The exported model's parameters."""
    from transformers import AutoModel

    return {name: tensor.numpy() for name, tensor in AutoModel.from_pretrained(str(output_dir)).state_dict().items()}


def encode_faults(cluster: Cluster, work: Path, worker: str, passages: int, rows_per_shard: int) -> tuple[dict, str]:
    """(b): an uninterrupted encoding, then one whose worker node is killed once its first shard is written."""
    from raytev.encoding.embeddings import load_embeddings, read_manifest

    model = work / "model" if (work / "model").is_dir() else save_tiny_bert(work / "model")
    words = ["small", "cat", "dog", "animal", "barks", "the", "of", "and", "query", "passage"]
    corpus = write_jsonl(work / "corpus.jsonl", [
        {"docid": f"d{i}", "title": "t", "text": " ".join(words[(i * 7 + j) % 10] for j in range(20 + i * 37 % 100))}
        for i in range(passages)])
    options = dict(model_name_or_path=model, dataset_path=corpus, address=cluster.address, num_actors=1,
                   cpus_per_actor=2, rows_per_shard=rows_per_shard, per_device_eval_batch_size=8,
                   passage_max_len=128)
    print("(b) encoding, uninterrupted ...", flush=True)
    baseline_s = Driver(cluster, "encode-uninterrupted",
                        raytev("encode", encode_output_path=work / "enc-uninterrupted", **options)).wait()
    print(f"    {baseline_s:.1f} s", flush=True)

    print("(b) encoding, worker node killed after the first shard ...", flush=True)
    out = work / "enc-killed"
    run = Driver(cluster, "encode-killed", raytev("encode", encode_output_path=out, **options))
    while run.process.poll() is None and not (out.is_dir() and any(out.glob("shard-*.parquet"))):
        time.sleep(0.02)
    before = {path.name for path in out.glob("shard-*.parquet")}
    killed_at, killed = kill_worker_node(worker)
    print(f"    killed the worker node ({len(killed)} processes: {', '.join(killed)}) with {len(before)} shard(s) "
          "written", flush=True)
    worker = cluster.start_node("worker-3", head=False)
    next_shard_s = None
    while run.process.poll() is None:
        if next_shard_s is None and {path.name for path in out.glob("shard-*.parquet")} - before:
            next_shard_s = time.monotonic() - killed_at
        time.sleep(0.05)
    wall_s = run.wait()
    ids, vectors = load_embeddings(str(out))
    expected_ids, expected = load_embeddings(str(work / "enc-uninterrupted"))
    counts = Counter(ids.tolist())
    manifest = read_manifest(out)
    result = {
        "passages": passages, "shards": manifest.planned_shards, "shards_written_at_kill": len(before),
        "processes_killed": killed, "complete": manifest.complete,
        "ids_lost": len(set(expected_ids.tolist()) - set(counts)),
        "ids_duplicated": sum(1 for count in counts.values() if count > 1),
        "ids_unexpected": len(set(counts) - set(expected_ids.tolist())),
        "vectors_equal_uninterrupted": bool(ids.tolist() == expected_ids.tolist()
                                            and np.array_equal(vectors, expected)),
        "max_vector_difference": float(np.abs(vectors - expected).max()) if vectors.shape == expected.shape else None,
        "other_files_in_output": sorted(path.name for path in out.iterdir()
                                        if path.name != "manifest.json" and path.name not in manifest.shards),
        "seconds_kill_to_next_shard": round(next_shard_s, 1) if next_shard_s is not None else None,
        "wall_s": round(wall_s, 1), "uninterrupted_wall_s": round(baseline_s, 1),
        "summary_line": next((line for _, line in reversed(run.lines) if line.startswith("encoded ")), None),
    }
    return result, worker


def search_faults(cluster: Cluster, work: Path, worker: str, passages: int, queries: int) -> tuple[dict, str]:
    """(c): `raytev search --search_workers 2` over flat shards, against one process; then the same search with the
    worker node killed once a task has written rows."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from search_scale import SHARD_ROWS, clustered_unit_vectors, write_vectors

    centres = np.random.default_rng(0).standard_normal((1000, 32))
    corpus = write_vectors(work / "search-passages", clustered_unit_vectors(passages, 1, centres), "passages", "d")
    asked = write_vectors(work / "search-queries", clustered_unit_vectors(queries, 2, centres), "queries", "q")
    common = dict(query_reps=asked, passage_reps=corpus, depth=100, batch_size=500)
    print(f"(c) search, one process ({passages:,} passages in {-(-passages // SHARD_ROWS)} shards, {queries:,} "
          "queries) ...", flush=True)
    baseline_s = Driver(cluster, "search-one", raytev("search", save_ranking_to=work / "search-one" / "run.txt",
                                                      shard_search=True, **common)).wait()
    # Tasks of 2 CPUs fit only on the worker node: it searches both parts, one after the other.
    on_ray = dict(search_workers=2, search_cpus_per_task=2, **common)
    print(f"    {baseline_s:.1f} s; on 2 Ray tasks, uninterrupted ...", flush=True)
    ray_env = {"RAY_ADDRESS": cluster.address}
    cluster.env.update(ray_env)
    try:
        ray_s = Driver(cluster, "search-ray", raytev("search", save_ranking_to=work / "search-ray" / "run.txt",
                                                     **on_ray)).wait()
        print(f"    {ray_s:.1f} s; on 2 Ray tasks, worker node killed once a task has written rows ...", flush=True)
        out = work / "search-killed"
        run = Driver(cluster, "search-killed", raytev("search", save_ranking_to=out / "run.txt", **on_ray))
        while run.process.poll() is None and not any(path.stat().st_size for path in
                                                     out.glob("raytev-search-*/task-*/scores.f32")):
            time.sleep(0.02)
        killed_at, killed = kill_worker_node(worker)
        print(f"    killed the worker node ({len(killed)} processes: {', '.join(killed)})", flush=True)
        worker = cluster.start_node("worker-4", head=False)
        wall_s = run.wait()
    finally:
        for name in ray_env:
            cluster.env.pop(name)
    reference = (work / "search-one" / "run.txt").read_bytes()
    lines = [line.split()[0] for line in (out / "run.txt").read_text().splitlines()]
    counts = Counter(lines)
    result = {
        "passages": passages, "queries": queries, "depth": 100,
        "ray_run_identical_to_one_process": (work / "search-ray" / "run.txt").read_bytes() == reference,
        "killed_run_identical_to_one_process": (out / "run.txt").read_bytes() == reference,
        "queries_lost": queries - len(counts), "queries_with_other_than_100_lines": sum(1 for c in counts.values()
                                                                                       if c != 100),
        "processes_killed": killed, "other_files_in_output": sorted(path.name for path in out.iterdir()
                                                                    if path.name != "run.txt"),
        "wall_s": round(wall_s, 1), "uninterrupted_ray_wall_s": round(ray_s, 1),
        "one_process_wall_s": round(baseline_s, 1), "seconds_from_kill_to_end": round(time.monotonic() - killed_at, 1),
    }
    return result, worker


def main() -> None:
    """Run (a), (b) and (c) on a fresh two-node cluster; print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nodefaults")
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--save_steps", type=int, default=5)
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--rows_per_shard", type=int, default=100)
    parser.add_argument("--search_passages", type=int, default=400_000)
    parser.add_argument("--search_queries", type=int, default=20_000)
    parser.add_argument("--only", choices=("train", "encode", "search"), default=None)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    cluster = Cluster(args.work)
    results: dict = {"cluster": {"head": "1 CPU, {'head': 1}", "worker": "2 CPUs, {'worker': 1}",
                                 "ip": "127.0.0.1", "work": str(args.work)}}
    started = time.monotonic()
    try:
        cluster.start_node("head", head=True)
        worker = cluster.start_node("worker-1", head=False)
        cluster.wait_for_workers(1)
        print(f"cluster up at {cluster.address} after {time.monotonic() - started:.1f} s", flush=True)
        if args.only in (None, "train"):
            results["train"], worker = train_faults(cluster, args.work, worker, args.max_steps, args.save_steps)
            print(json.dumps(results["train"], indent=1), flush=True)
            cluster.wait_for_workers(1)  # the replacement node is up before the next fault
        if args.only in (None, "encode"):
            results["encode"], worker = encode_faults(cluster, args.work, worker, args.passages,
                                                      args.rows_per_shard)
            print(json.dumps(results["encode"], indent=1), flush=True)
            cluster.wait_for_workers(1)
        if args.only in (None, "search"):
            results["search"], worker = search_faults(cluster, args.work, worker, args.search_passages,
                                                      args.search_queries)
            print(json.dumps(results["search"], indent=1), flush=True)
    finally:
        cluster.stop()
        left = [marker for marker in cluster.markers if processes_marked(marker)]
        print(f"cleaned up ({'processes left: ' + ', '.join(left) if left else 'no process left'})", flush=True)
    results["total_s"] = round(time.monotonic() - started, 1)
    name = "node_faults" if args.only is None else f"node_faults_{args.only}"  # one scenario keeps the others' file
    print(f"results: {write_result(name, results)}")


if __name__ == "__main__":
    main()
