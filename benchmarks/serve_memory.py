"""Memory per replica of `raytev serve` on a big flat index with a corpus: raytev at an earlier commit (the peer, e.g.
the last one before the index and the corpus were memory-mapped) against this checkout, one run after the other.

Data (made once in --work, then reused): a --rows x --dim flat index of normalized random vectors, built with
raytev's EmbeddingsWriter, build_index and save_index; a JSONL corpus of the same docids with ~--text_bytes of text
each; a tiny random BERT as the query model (queries are vectors: the encoder replica is measured as deployed).

Each run is the command a user runs, with its own local Ray: `python -m raytev serve --index ... --num_shards 2
--corpus ... --model_name_or_path ... --address local`, the checkout chosen by PYTHONPATH (the peer's is extracted
with `git archive`). Once /info answers and the command has printed its banner, --requests vector queries (k=10,
with titles and texts) are sent, the answers of the two runs are compared, and every Serve replica process (the
command's descendants titled ray::ServeReplica:<app>:<deployment>) is read from /proc: RSS, peak RSS, its own
(anonymous) memory, resident pages of mapped files, shared memory, PSS and USS. Mapped pages count in RSS but
belong to the page cache: shared by every process mapping them and reclaimable. /proc/<pid>/smaps splits each
replica's mapped pages by file: the index, the corpus store (raytev's cache), the corpus file, shared libraries
(.so files) and any other file, so a replica's RSS reads as its own memory + libraries + data pages.

    python benchmarks/serve_memory.py --before 50ca84e [--rows 1600000] [--work /tmp/serve-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import write_result  # noqa: E402
from serve_load import free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
APP = "raytev"
MIB = 2**20
FIGURES = ("rss", "peak_rss", "anonymous", "file", "shared_memory", "pss", "uss")


def prepare(work: Path, rows: int, dim: int, text_bytes: int) -> dict:
    """The index folder, corpus file and model folder in `work`, made unless a previous run left them."""
    settings = {"rows": rows, "dim": dim, "text_bytes": text_bytes}
    paths = {"index": work / "index", "corpus": work / "corpus.jsonl", "model": work / "model"}
    ready = work / "ready.json"
    if ready.exists() and json.loads(ready.read_text()) == settings:
        return paths
    from helpers import save_tiny_bert

    from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter
    from raytev.index.build import build_index
    from raytev.index.storage import save_index

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    step = 100_000
    embeddings = work / "embeddings"
    writer = EmbeddingsWriter(embeddings, EmbeddingsManifest(model="random", dim=dim, kind="passages",
                                                             planned_shards=-(-rows // step)))
    for number, start in enumerate(range(0, rows, step)):
        vectors = rng.standard_normal((min(step, rows - start), dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        writer.write_shard(number, [f"doc{row}" for row in range(start, start + len(vectors))], vectors)
    save_index(build_index(str(embeddings)), paths["index"])
    shutil.rmtree(embeddings)  # the index holds the vectors; the shards would only take the disk
    words = np.array([f"w{number:x}" for number in range(5000)])  # ~5 characters and a space each in a text
    with open(paths["corpus"], "w") as corpus:
        for row in range(rows):
            text = " ".join(words[rng.integers(0, len(words), text_bytes // 6)].tolist())
            corpus.write(json.dumps({"docid": f"doc{row}", "title": f"title of passage {row}",
                                     "text": f"passage {row}: {text}"}) + "\n")
    save_tiny_bert(paths["model"])
    ready.write_text(json.dumps(settings))
    return paths


def checkout_of(commit: str, work: Path) -> Path:
    """A folder holding raytev/ as it was at `commit` (extracted once with git archive)."""
    folder = work / f"raytev-{commit}"
    if not (folder / "raytev").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "raytev"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def replica_processes(command_pid: int) -> dict[str, int]:
    """Replica name (the deployment's, numbered when it has several replicas) -> pid, among the processes `raytev
    serve` started."""
    import psutil

    found: dict[str, list[int]] = {}
    for process in psutil.Process(command_pid).children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        prefix = f"ray::ServeReplica:{APP}:"
        if title.startswith(prefix):
            found.setdefault(title[len(prefix):].split()[0].split(".")[0], []).append(process.pid)
    return {name if len(pids) == 1 else f"{name}/{number}": pid
            for name, pids in sorted(found.items()) for number, pid in enumerate(sorted(pids), start=1)}


def mapped_pages(pid: int, places: dict[str, Path]) -> dict[str, int] | None:
    """Resident bytes of the files process `pid` maps, by kind: a name of `places` (files under that path), libraries
    (.so files), other files; None where /proc/<pid>/smaps cannot be read."""
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return None
    totals = dict.fromkeys([*places, "libraries", "other files"], 0)
    kind = None
    for line in lines:
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header: address range ... [pathname]
            path = fields[5] if len(fields) > 5 and fields[5].startswith("/") else None
            kind = None if path is None else next(
                (name for name, place in places.items() if path.startswith(str(place))),
                "libraries" if ".so" in Path(path).name else "other files")
        elif fields[0] == "Rss:" and kind is not None:
            totals[kind] += int(fields[1]) << 10
    return totals


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout: float) -> float:
    """Seconds until /info answers and the command has printed its banner (deploy returned); raises on exit."""
    import requests

    started, deadline = time.perf_counter(), time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"raytev serve exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            answered = requests.get(f"{url}/info", timeout=5).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            answered = False
        if answered and b"serving " in log.read_bytes():
            return time.perf_counter() - started
        time.sleep(1)
    raise RuntimeError(f"raytev serve was not serving after {timeout:.0f} s:\n{log.read_text(errors='replace')}")


def stop_service(process: subprocess.Popen) -> None:
    """Stop a `raytev serve` started in its own session: SIGTERM, then SIGKILL to the whole group (with the
    Ray it started) if it has not ended within two minutes."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure(label: str, checkout: Path, paths: dict, work: Path, queries: np.ndarray, timeout: float,
            replicas: int = 1) -> dict:
    """One `raytev serve` run of `checkout` (`replicas` of the encoder and of each shard): its answers to `queries`
    and each replica's memory."""
    import requests

    from raytev.machine import process_memory

    port = free_port()
    log = work / f"serve-{label}.log"
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(checkout), RAYTEV_CACHE_DIR=str(work / "cache"))
    command = [sys.executable, "-m", "raytev", "serve", "--index", str(paths["index"]), "--num_shards", "2",
               "--corpus", str(paths["corpus"]), "--model_name_or_path", str(paths["model"]), "--address", "local",
               "--port", str(port), "--app_name", APP, "--num_replicas", str(replicas)]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=work,
                                   start_new_session=True)  # not in the repo: `-m raytev` would import its raytev
    url = f"http://127.0.0.1:{port}"
    try:
        start_seconds = wait_until_serving(url, process, log, timeout)
        answers = []
        for batch in np.array_split(queries, max(1, len(queries) // 8)):
            reply = requests.post(f"{url}/search", json={"vectors": batch.tolist(), "k": 10}, timeout=300)
            reply.raise_for_status()
            answers.extend(reply.json()["results"])
        time.sleep(2)
        places = {"index": paths["index"], "corpus store": work / "cache", "corpus file": paths["corpus"]}
        memory = {name: {**asdict(process_memory(pid)), "mapped": mapped_pages(pid, places)}
                  for name, pid in replica_processes(process.pid).items()}
        driver = asdict(process_memory(process.pid))
    finally:
        stop_service(process)
    printed = [line for line in log.read_text(errors="replace").splitlines() if "RSS " in line or "memory per" in line]
    return {"checkout": str(checkout), "num_replicas": replicas, "start_seconds": round(start_seconds, 1),
            "replicas": memory,
            "driver": driver, "printed_by_raytev_serve": printed, "answers": answers}


def print_table(runs: dict) -> None:
    """A table of every replica's figures in MiB, run after run, and the ratio of the runs' RSS."""
    header = f"{'run':<10} {'replica':<15}" + "".join(f"{name:>14}" for name in FIGURES)
    print(header)
    for label, run in runs.items():
        replicas = run["replicas"]
        total = {figure: sum(memory[figure] for memory in replicas.values()) for figure in FIGURES}
        for name, memory in {**replicas, "(all replicas)": total, "(driver)": run["driver"]}.items():
            print(f"{label:<10} {name:<15}" + "".join(f"{memory[figure] / MIB:>14,.0f}" for figure in FIGURES))
    before, after = runs["before"]["replicas"], runs["after"]["replicas"]
    for name in before:
        if name in after:
            print(f"after/before {name}: RSS {after[name]['rss'] / before[name]['rss']:.2f}x, peak "
                  f"{after[name]['peak_rss'] / before[name]['peak_rss']:.2f}x, own "
                  f"{after[name]['anonymous'] / before[name]['anonymous']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit to compare with (the peer)")
    parser.add_argument("--rows", type=int, default=1_600_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--text_bytes", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/serve-memory"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a run may take to start serving")
    parser.add_argument("--shared_replicas", type=int, default=0,
                        help="also run this checkout with this many replicas of each shard (PSS shows the sharing)")
    parser.add_argument("--name", default="serve_memory", help="benchmarks/results/<name>.json")
    args = parser.parse_args()

    paths = prepare(args.work, args.rows, args.dim, args.text_bytes)
    queries = np.random.default_rng(1).standard_normal((args.queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    shutil.rmtree(args.work / "cache", ignore_errors=True)  # the corpus store is built by the run, as a user's is
    runs = {"before": measure("before", checkout_of(args.before, args.work), paths, args.work, queries, args.timeout),
            "after": measure("after", REPO, paths, args.work, queries, args.timeout)}
    if args.shared_replicas:
        runs[f"after x{args.shared_replicas}"] = measure("shared", REPO, paths, args.work, queries, args.timeout,
                                                         args.shared_replicas)
    answers = [run.pop("answers") for run in runs.values()]
    same = all(answer == answers[0] for answer in answers)
    print_table(runs)
    for label, run in runs.items():
        for name, memory in run["replicas"].items():
            if memory.get("mapped"):
                parts = ", ".join(f"{kind} {size / MIB:,.0f}" for kind, size in memory["mapped"].items())
                print(f"{label:<10} {name:<15} mapped MiB: {parts}")
    print(f"start (command to serving): before {runs['before']['start_seconds']} s, after "
          f"{runs['after']['start_seconds']} s; the same answers (docids, scores, titles, texts): {same}")
    for line in runs["after"]["printed_by_raytev_serve"]:
        print(f"  raytev serve printed: {line}")
    sizes = {"index_bytes": (paths["index"] / "index.faiss").stat().st_size,
             "corpus_bytes": paths["corpus"].stat().st_size}
    settings = {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}
    path = write_result(args.name, {"settings": {**settings, **sizes, "num_shards": 2, "k": 10},
                                    "same_answers": same, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
