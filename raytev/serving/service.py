"""`raytev serve` as a process: check the flags, connect to Ray, deploy the application, run until interrupted.

The CLI prints the result's summary (where the service answers) and then waits in `wait_until_interrupted`;
the Python API `raytev.serve(...)` returns the result at once, the service running on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from raytev.compat import serve_controller, serve_replica_actors
from raytev.config.stages import ServeConfig
from raytev.errors import RaytevError
from raytev.machine import ProcessMemory, process_memory
from raytev.serving.app import TOKEN_ENV, serve_config, token_sha256
from raytev.serving.corpus_store import corpus_store
from raytev.serving.front import set_front_for_local_ray
from raytev.serving.parts import check_index


@dataclass
class ServeResult:
    """A deployed service (or, with --print_config, only the Serve config of the flags)."""

    config: ServeConfig
    serve_config: dict  # the Serve config deployed (or to deploy)
    url: str | None  # where it answers; None when nothing was deployed
    memory: dict[str, ProcessMemory | None] = field(default_factory=dict)  # by replica (see replica_memory)

    def summary(self) -> str:
        """Where the service answers, a curl line to try and each replica's memory; with --print_config, the Serve
        config YAML."""
        if self.url is None:
            import yaml

            return yaml.safe_dump(self.serve_config, sort_keys=False).rstrip("\n")
        token = " -H 'Authorization: Bearer <token>'" if token_sha256(self.config) else ""
        query = '"queries": ["what is dense retrieval?"]' if self.config.model.model_name_or_path else \
            '"vectors": [[0.1, ...]]'
        lines = [f"serving {self.config.index} at {self.url} (API docs: {self.url}/docs); Ctrl-C stops it",
                 f"  curl -s {self.url}/search{token} -H 'Content-Type: application/json' -d '{{{query}, \"k\": 5}}'"]
        if self.memory:
            lines.append("memory per replica (mapped files grow as requests touch the index and the corpus; their "
                         "pages are the page cache's, shared by the replicas of a node):")
            width = max(map(len, self.memory))
            lines.extend(f"  {name:<{width}}  {memory.describe() if memory else 'not measurable here (no /proc)'}"
                         for name, memory in self.memory.items())
        if self.config.host not in ("127.0.0.1", "localhost", "::1") and not token:
            lines.append(f"warning: listening on {self.config.host} without a token: anyone who can reach this port "
                         f"can query it (set --auth_token or ${TOKEN_ENV}).")
        return "\n".join(lines)

    def wait_until_interrupted(self) -> None:
        """Block while the service runs; on Ctrl-C (or SIGTERM, as process managers stop things) shut Serve down."""
        if self.url is None:
            return
        import signal

        from ray import serve as ray_serve

        def interrupt(*_):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            # A second Ctrl-C or SIGTERM (`timeout` and process managers send their own) must not cut the shutdown
            # short: that leaves Serve's HAProxy process running and holding the port.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print("stopping the service (a few seconds)...", flush=True)
            ray_serve.shutdown()
            print("stopped serving", flush=True)


def serve(config: ServeConfig) -> ServeResult:
    """`raytev serve`: check the index, build the corpus store, connect to Ray (or start it here), deploy the service,
    and measure its replicas' memory."""
    if config.print_config:
        return ServeResult(config, serve_config(config), None)
    check_index(config.index, config.num_shards)
    if config.corpus:
        # Built once here, into the cache folder, for the ingress to map; a bad corpus fails before any replica starts.
        corpus_store(config.corpus)
    import ray

    from raytev.cluster import connect

    address = config.cluster.address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized() and address in (None, "", "local"):
        set_front_for_local_ray(config.http_ingress)  # a cluster's front was set when it started
    connect(config.cluster.address, config.cluster.verbose)
    deployed = serve_config(config)
    deploy(deployed)
    return ServeResult(config, deployed, service_url(config), replica_memory(config))


def replica_memory(config: ServeConfig) -> dict[str, ProcessMemory | None]:
    """The memory of every replica of the application, by deployment name (numbered when it has several replicas)."""
    import ray

    calls = {}
    for deployment, actors in serve_replica_actors(config.app_name).items():
        for number, actor in enumerate(actors, start=1):
            # __ray_call__ (a Ray DeveloperAPI) runs the function in the replica's own process, on whatever node.
            calls[deployment if len(actors) == 1 else f"{deployment}/{number}"] = actor.__ray_call__.remote(
                _memory_of_this_process)
    return dict(zip(calls, ray.get(list(calls.values()), timeout=60)))


def _memory_of_this_process(_actor) -> ProcessMemory | None:
    return process_memory()


def service_url(config: ServeConfig) -> str:
    """Where the service answers (a host of 0.0.0.0 is reached at 127.0.0.1 from this machine)."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.port}{config.route_prefix.rstrip('/')}"


def deploy(config: dict, timeout_s: float = 600.0) -> None:
    """Deploy a Serve config on the connected Ray cluster (as `serve run <config.yaml>` does) and wait until
    its applications run; a failure raises RaytevError with Serve's message."""
    from ray import serve as ray_serve
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_controller(schema.http_options.model_dump(), schema.proxy_location)
    names = [app.name for app in schema.applications]
    before = {name: status.last_deployed_time_s for name, status in ray_serve.status().applications.items()}
    client.deploy_apps(schema)
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = ray_serve.status().applications
        pending = []
        for name in names:
            status = statuses.get(name)
            if status is None or status.last_deployed_time_s == before.get(name) or \
                    status.status in ("DEPLOYING", "NOT_STARTED"):
                pending.append(name)
            elif status.status != "RUNNING":
                raise RaytevError(f"Serve application {name!r} is {status.status}: {status.message}")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RaytevError(f"Serve applications {', '.join(pending)} were not running after {timeout_s:.0f} s; "
                              "see `serve status`.")
        time.sleep(0.25)
