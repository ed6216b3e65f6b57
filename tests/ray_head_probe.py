"""A client of a Ray head, in a process of its own; prints its results as one JSON line.

Run by tests/test_ray_head.py as `python ray_head_probe.py job|client '<json>'`, with the environment a user would
have on their own machine (RAY_AUTH_MODE, RAY_AUTH_TOKEN...). A process of its own because Ray reads those settings
once per process, and ray.init("ray://…") is refused in a process where another Ray is initialized (the test
session's).

job: submit a job with JobSubmissionClient and wait for it. The JSON names:
  address      the dashboard's http:// address
  entrypoint   the shell command; runtime_env: the job's runtime environment
  timeout      seconds to wait for the job to end (it is stopped after that)

client: raytev's Python API through a Ray client. The JSON names:
  address      the ray:// address
  connect      "ray.init": ray.init(address) as a user does before calling raytev (RAY_AUTH_MODE is the caller's);
               "raytev": raytev.cluster.connect(address) (raytev's own connection, which passes the token through)
  attempts     connections tried before giving up (Ray Client's first one fails now and then)
  api          optional: {"model", "beir", "corpus", "out"}: encode the tiny BEIR folder's queries, index the
               corpus embeddings, search and evaluate with raytev's Python API
"""

from __future__ import annotations

import json
import os
import sys
import time


def connect(address: str, how: str, attempts: int) -> int:
    """Connect as asked; the number of attempts it took. The last error is raised when none succeeded."""
    import ray

    from raytev.cluster import connect as raytev_connect

    for attempt in range(1, attempts + 1):
        try:
            if how == "ray.init":
                env_vars = {"TOKENIZERS_PARALLELISM": "false", "RAYTEV_CACHE_DIR": os.environ["RAYTEV_CACHE_DIR"]}
                ray.init(address, runtime_env={"env_vars": env_vars})
            else:
                raytev_connect(address)
            return attempt
        except Exception as error:  # noqa: BLE001 - ConnectionError from Ray, RaytevError from raytev
            print(f"connection attempt {attempt} failed: {type(error).__name__}: {error}", file=sys.stderr)
            if attempt == attempts:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def run_api(model: str, beir: str, corpus: str, out: str) -> dict:
    """encode the queries, build_index over `corpus` (embeddings), search and evaluate, called as a user would.

    From a Ray client each call runs as a task on the cluster (raytev.cluster.call_on_cluster): Ray Data does not
    run in a client's process. The paths are the cluster's (here the same machine's).
    """
    import raytev

    def timed(function, **options):
        started = time.perf_counter()
        try:
            return function(**options)
        finally:
            print(f"{function.__name__}: {time.perf_counter() - started:.1f} s", file=sys.stderr)

    queries = timed(raytev.encode, model_name_or_path=model, dataset_path=beir, dataset_split="train",
                    encode_is_query=True, encode_output_path=f"{out}/queries", num_actors=1)
    built = timed(raytev.build_index, passage_reps=corpus, index_output_path=f"{out}/index")
    searched = timed(raytev.search, query_reps=f"{out}/queries", passage_reps=f"{out}/index", depth=5,
                     save_ranking_to=f"{out}/run.txt")
    metrics = timed(raytev.evaluate, run=f"{out}/run.txt", qrels=f"{beir}/qrels/train.tsv")
    return {"query_rows": queries.rows, "index": [built.info.spec, built.info.ntotal], "ranked": searched.rankings,
            "metrics": metrics}


def job(arguments: dict) -> dict:
    """Submit, wait until the job ends (or the timeout), and return its status and logs."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(arguments["address"])
    job_id = client.submit_job(entrypoint=arguments["entrypoint"], runtime_env=arguments["runtime_env"])
    deadline = time.monotonic() + arguments["timeout"]
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
        status = client.get_job_status(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    return {"job_id": job_id, "status": status.value,
            "finished": status.is_terminal(), "logs": client.get_job_logs(job_id)}


def client(arguments: dict) -> dict:
    """Connect through the Ray client, run the API when asked, and say how the connection went."""
    import ray

    started = time.perf_counter()
    attempts = connect(arguments["address"], arguments["connect"], arguments.get("attempts", 4))
    print(f"connected in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    result = {"attempts": attempts, "auth_mode": os.environ.get("RAY_AUTH_MODE"),
              "client": ray.util.client.ray.is_connected(), "cpus": ray.cluster_resources().get("CPU")}
    if arguments.get("api"):
        result.update(run_api(**arguments["api"]))
    ray.shutdown()
    return result


if __name__ == "__main__":
    print(json.dumps({"job": job, "client": client}[sys.argv[1]](json.loads(sys.argv[2]))))
