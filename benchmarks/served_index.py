"""A served index for the reliability benchmarks (serve_faults.py, soak.py): built once with raytev's own commands,
then `raytev serve` started in its own process session, and a client that records every request.

The data is data_prepare_scale.py's synthetic BEIR folder and the model scale.py's tiny random BERT (normalized CLS,
32 dimensions, MiniLM's tokenizer): what is exercised is the service around the model, not the model.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_prepare_scale import make_beir_folder  # noqa: E402
from scale import raytev_command, tiny_model  # noqa: E402
from serve_load import free_port  # noqa: E402
from serve_memory import replica_processes, stop_service, wait_until_serving  # noqa: E402

APP = "raytev"  # serve_memory.replica_processes looks for this application's replicas


def build(work: Path, passages: int, words_per_passage: int = 60) -> dict:
    """Corpus, model, encoded corpus and queries and a flat index under `work` (each reused when complete)."""
    work.mkdir(parents=True, exist_ok=True)
    folder = make_beir_folder(work, passages, words_per_passage)
    model = tiny_model(work / "tiny-bert")
    out, cache = work / f"out-{passages}", work / f"cache-{passages}"
    common = {"dataset_name": folder, "model_name_or_path": model, "passage_max_len": 128, "dataset_cache_dir": cache}
    steps = [("corpus", raytev_command("encode", **common, encode_output_path=out / "corpus")),
             ("queries", raytev_command("encode", **common, dataset_split="train", encode_is_query=True,
                                        encode_output_path=out / "queries")),
             ("flat", raytev_command("index", passage_reps=out / "corpus", index_output_path=out / "flat"))]
    for name, command in steps:
        if not (out / name).exists():
            print(f"building {out / name}", flush=True)
            subprocess.run(command, check=True, cwd=work, stdout=subprocess.DEVNULL)
    return {"folder": folder, "model": model, "corpus": folder / "corpus.jsonl", "index": out / "flat",
            "queries": out / "queries"}


def query_bodies(paths: dict, count: int, k: int = 10) -> list[bytes]:
    """`count` request bodies alternating text queries (the train queries' texts) and vector queries (their vectors)."""
    from raytev.encoding.embeddings import load_embeddings

    texts = [json.loads(line)["text"] for _, line in zip(range(count), open(paths["folder"] / "queries.jsonl"))]
    _, vectors = load_embeddings(str(paths["queries"]))
    bodies = []
    for number in range(count):
        body = {"queries": [texts[number % len(texts)]]} if number % 2 == 0 else \
            {"vectors": [np.round(vectors[number % len(vectors)], 6).tolist()]}
        bodies.append(json.dumps({**body, "k": k}).encode())
    return bodies


@dataclass
class Service:
    """A running `raytev serve` (its own process session, with the local Ray it started)."""

    process: subprocess.Popen
    url: str
    log: Path
    start_seconds: float

    def replicas(self) -> dict[str, int]:
        """Replica name -> pid (numbered /1, /2 when a deployment has several)."""
        return replica_processes(self.process.pid)

    def stop(self) -> None:
        """SIGTERM, then the whole group."""
        stop_service(self.process)


def start(paths: dict, work: Path, timeout: float = 600, **flags) -> Service:
    """`raytev serve` of the index with the corpus and the model, on a free loopback port (paths: "index", "corpus",
    "model")."""
    port, log = free_port(), work / "serve.log"
    command = raytev_command("serve", index=paths["index"], corpus=paths["corpus"], model_name_or_path=paths["model"],
                             address="local", port=port, app_name=APP, **flags)
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=work,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        seconds = wait_until_serving(url, process, log, timeout=timeout)
    except BaseException:
        stop_service(process)
        raise
    return Service(process, url, log, seconds)


@dataclass
class Outcome:
    """One request: when it ended (monotonic s), its status (0: no HTTP answer), latency and error text."""

    ended: float
    status: int
    seconds: float
    error: str = ""
    retry_after: str | None = None


@dataclass
class Load:
    """Requests sent by a client loop, in completion order."""

    outcomes: list[Outcome] = field(default_factory=list)

    def failures(self) -> list[Outcome]:
        """The requests that did not get a 200."""
        return [outcome for outcome in self.outcomes if outcome.status != 200]


async def send(session, url: str, body: bytes) -> Outcome:
    """POST one search; the outcome, never an exception."""
    import aiohttp

    started = time.monotonic()
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            text = await response.text()
            error = "" if response.status == 200 else text[:300]
            return Outcome(time.monotonic(), response.status, time.monotonic() - started, error,
                           response.headers.get("Retry-After"))
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        return Outcome(time.monotonic(), 0, time.monotonic() - started, f"{type(error).__name__}: {error}")


async def closed_loop(url: str, bodies: list[bytes], clients: int, stop: asyncio.Event, load: Load,
                      max_requests: int) -> None:
    """`clients` workers, each sending the next request when the last is answered, until `stop` or `max_requests`."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def worker(number: int) -> None:
            position = number
            while not stop.is_set() and len(load.outcomes) < max_requests:
                load.outcomes.append(await send(session, f"{url}/search", bodies[position % len(bodies)]))
                position += clients

        await asyncio.gather(*(worker(number) for number in range(clients)))


def answers(url: str, bodies: list[bytes]) -> list:
    """The results of each body, sent one at a time."""
    import requests

    results = []
    for body in bodies:
        response = requests.post(f"{url}/search", data=body, headers={"Content-Type": "application/json"}, timeout=60)
        response.raise_for_status()
        results.append(response.json()["results"])
    return results
