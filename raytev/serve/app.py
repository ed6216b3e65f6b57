"""The application: the builder `serve run` / `serve deploy` import, its Serve config, deploying and hot swaps.

A config's `args` (the flags of `raytev serve`) say how the service is built: shards, limits, scaling, and
the model, index and corpus it starts with; changing them restarts replicas. Each deployment's `user_config`
says what it serves now: changing only those (`swapped`, or editing them in the YAML and `serve deploy` again)
loads the new index, model or corpus beside the old one and switches when it is complete (swap.py).
"""

from __future__ import annotations

import copy
import os
import time

from raytev.args import ModelArguments, PrecisionArguments, RayArguments, ServeArguments
from raytev.errors import RaytevError
from raytev.flags import options_from_dict

IMPORT_PATH = "raytev.serve.app:build_app"
OPTION_CLASSES = (ServeArguments, ModelArguments, PrecisionArguments, RayArguments)
TOKEN_ENV = "RAYTEV_AUTH_TOKEN"
INGRESS_MAX_ONGOING_REQUESTS = 256  # the ingress only waits on the others: let it hold many requests at once
# Flags that place the application (config level) or act in the CLI only, not in the builder's args.
NOT_BUILDER_ARGS = {"host", "port", "route_prefix", "app_name", "print_config", "auth_token", "address", "access_log",
                    "http_ingress"}
# What a hot swap may change: the rest shapes the deployments and needs a redeploy.
SWAPPABLE = {"index", "corpus", "revision", "search_parameters", "max_batch_size", "batch_wait_timeout_s",
             "model_name_or_path", "tokenizer_name", "pooling", "normalize", "untie_encoder", "query_max_len",
             "query_prefix", "append_eos_token", "per_device_eval_batch_size", "bf16", "fp16"}

Options = tuple[ServeArguments, ModelArguments, PrecisionArguments, RayArguments]


def options_from_args(args: dict) -> Options:
    """The option dataclasses from a config's `args` (flag names without '--')."""
    return options_from_dict(OPTION_CLASSES, args, "the application's args")


def absolute_paths(args: dict) -> dict:
    """`args` with the local paths it names (index parts, corpus, model, tokenizer) made absolute: replicas do
    not run in this directory. Names that are not local paths (hub models, bundled datasets) stay as they are."""
    def absolute(text: str) -> str:
        path = os.path.expanduser(text)
        return os.path.abspath(path) if os.path.exists(path) else text

    fixed = dict(args)
    if fixed.get("index"):
        fixed["index"] = ",".join(absolute(part.strip()) for part in fixed["index"].split(",") if part.strip())
    for name in ("corpus", "model_name_or_path", "tokenizer_name"):
        if fixed.get(name):
            fixed[name] = absolute(fixed[name])
    return fixed


def token_sha256(options: ServeArguments) -> str | None:
    """The digest of the bearer token: given as such, from --auth_token, or from $RAYTEV_AUTH_TOKEN."""
    from raytev.serve.http import token_digest

    if options.auth_token_sha256:
        return options.auth_token_sha256.lower()
    token = options.auth_token or os.environ.get(TOKEN_ENV)
    return token_digest(token) if token else None


def user_configs(options: Options) -> dict[str, dict]:
    """Each deployment's user_config by deployment name: what it serves and its batching."""
    serve, model, precision, cluster = options
    batching = {"max_batch_size": serve.max_batch_size, "batch_wait_timeout_s": serve.batch_wait_timeout_s}
    configs = {f"IndexShard{shard}": {"index": serve.index, "revision": serve.revision,
                                      "model": model.model_name_or_path or "",
                                      "search_parameters": serve.search_parameters, **batching}
               for shard in range(serve.num_shards)}
    if model.model_name_or_path:
        configs["QueryEncoder"] = {
            "model_name_or_path": model.model_name_or_path, "tokenizer_name": model.tokenizer_name,
            "cache_dir": model.cache_dir, "pooling": model.pooling, "normalize": model.normalize,
            "untie_encoder": model.untie_encoder, "query_max_len": serve.query_max_len,
            "query_prefix": serve.query_prefix, "append_eos_token": serve.append_eos_token, "bf16": precision.bf16,
            "fp16": precision.fp16, "use_gpu": cluster.use_gpu,
            "per_device_eval_batch_size": serve.per_device_eval_batch_size, "revision": serve.revision, **batching}
    configs["Ingress"] = {"corpus": serve.corpus, "revision": serve.revision}
    return configs


def replica_options(serve: ServeArguments, gpus: float = 0) -> dict:
    """Replicas (fixed or autoscaled), queue depth and resources of the encoder and of each shard."""
    # A replica must be let hold a whole batch, and the next one filling while it runs. raytev's searches show
    # progress bars, which in a replica would write a log line per request.
    options = {"max_ongoing_requests": 2 * serve.max_batch_size,
               "ray_actor_options": {"num_cpus": serve.cpus_per_replica, **({"num_gpus": gpus} if gpus else {}),
                                     "runtime_env": {"env_vars": {"TQDM_DISABLE": "1"}}}}
    if serve.max_replicas:
        options["autoscaling_config"] = {"min_replicas": serve.min_replicas, "max_replicas": serve.max_replicas,
                                         "target_ongoing_requests": serve.target_ongoing_requests}
        options["max_ongoing_requests"] = max(options["max_ongoing_requests"], int(2 * serve.target_ongoing_requests))
    else:
        options["num_replicas"] = serve.num_replicas
    return options


def build_app(args: dict):
    """The Serve application for a config's `args`: ingress, query encoder (with a model), index shards."""
    from raytev.serve.encoder import QueryEncoder
    from raytev.serve.ingress import Ingress
    from raytev.serve.shard import IndexShard

    options = options_from_args(args)
    serve, model, _, cluster = options
    if not serve.index:
        raise RaytevError("the application's args need `index`: a saved index folder, an embeddings folder, or "
                          "one index folder per shard.")
    configs = user_configs(options)
    shards = [IndexShard.options(name=f"IndexShard{shard}", user_config=configs[f"IndexShard{shard}"],
                                 **replica_options(serve)).bind(shard, serve.num_shards)
              for shard in range(serve.num_shards)]
    encoder = None
    if model.model_name_or_path:
        encoder = QueryEncoder.options(user_config=configs["QueryEncoder"],
                                       **replica_options(serve, gpus=1 if cluster.use_gpu else 0)).bind()
    limits = {"max_queries": serve.max_queries, "max_k": serve.max_k, "max_body_bytes": serve.max_body_bytes}
    return Ingress.options(user_config=configs["Ingress"], max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
                           ray_actor_options={"num_cpus": serve.cpus_per_replica}).bind(
        shards, encoder, limits, token_sha256(serve))


def application_config(options: Options) -> dict:
    """One application of a Serve config: the builder, and as its args the flags that differ from defaults."""
    import dataclasses

    serve = options[0]
    args = {}
    for values in options:
        defaults = type(values)()
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            if field.name not in NOT_BUILDER_ARGS and value != getattr(defaults, field.name):
                args[field.name] = value
    digest = token_sha256(serve)
    if digest:
        args["auth_token_sha256"] = digest  # never the token itself: configs are shown and stored
    return {"name": serve.app_name, "route_prefix": serve.route_prefix, "import_path": IMPORT_PATH,
            "args": absolute_paths(args), "logging_config": {"enable_access_log": serve.access_log}}


def serve_config(options: Options) -> dict:
    """A whole Serve config (what `serve run` / `serve deploy` read) for one application."""
    serve = options[0]
    return {"proxy_location": "EveryNode", "http_options": {"host": serve.host, "port": serve.port},
            "applications": [application_config(options)]}


def swapped(config: dict, app_name: str, **changes) -> dict:
    """A copy of `config` whose application `app_name` serves other things (index, corpus, model, revision,
    batching) through user_config only, so that deploying it swaps them in without restarting replicas."""
    unknown = set(changes) - SWAPPABLE
    if unknown:
        raise RaytevError(f"cannot hot swap {', '.join(sorted(unknown))}: only {', '.join(sorted(SWAPPABLE))} "
                          "change without a redeploy.")
    config = copy.deepcopy(config)
    app = next((app for app in config["applications"] if app["name"] == app_name), None)
    if app is None:
        raise RaytevError(f"the config has no application named {app_name!r}.")
    if changes.get("model_name_or_path") and not options_from_args(app["args"])[1].model_name_or_path:
        raise RaytevError(f"{app_name} was deployed without a model (vectors only): adding a query encoder needs a "
                          "redeploy, not a swap.")
    # What earlier swaps changed lives in the deployments' user_configs, whose keys are flag names.
    overrides = {entry["name"]: entry for entry in app.get("deployments", [])}
    served = dict(app["args"])
    for entry in overrides.values():
        served.update({key: value for key, value in entry.get("user_config", {}).items() if key in SWAPPABLE})
    served.update(absolute_paths(changes))
    for name, user_config in user_configs(options_from_args(served)).items():
        overrides.setdefault(name, {"name": name})["user_config"] = user_config
    app["deployments"] = list(overrides.values())
    return config


def deploy(config: dict, timeout_s: float = 600.0) -> None:
    """Deploy a Serve config on the connected Ray cluster (as `serve run <config.yaml>` does) and wait until
    its applications run; a failure raises RaytevError with Serve's message."""
    from ray import serve
    # Serve's public Python API deploys Application objects only, and each serve.run restarts every replica;
    # a config goes through the controller's apply_config, as `serve run <config>` and `serve deploy` do, and
    # a change of user_config alone then reconfigures replicas in place (the hot swap).
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(),
                                   proxy_location=schema.proxy_location)
    names = [app.name for app in schema.applications]
    before = {name: status.last_deployed_time_s for name, status in serve.status().applications.items()}
    client.deploy_apps(schema)
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = serve.status().applications
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


def service_url(serve: ServeArguments) -> str:
    """Where the service answers (a host of 0.0.0.0 is reached at 127.0.0.1 from this machine)."""
    host = "127.0.0.1" if serve.host in ("0.0.0.0", "::") else serve.host
    return f"http://{host}:{serve.port}{serve.route_prefix.rstrip('/')}"


def start_service(options: Options) -> str:
    """Check the flags, connect to Ray (or start it here) and deploy the service; returns its URL."""
    from raytev.cluster import connect
    from raytev.serve.front import set_front_for_local_ray
    from raytev.serve.parts import check_index
    from raytev.serve.passages import corpus_files

    serve = options[0]
    check_index(serve.index, serve.num_shards)
    if serve.corpus:
        corpus_files(serve.corpus)  # a missing corpus fails here, not after the replicas have started
    import ray

    address = options[3].address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized() and address in (None, "", "local"):
        set_front_for_local_ray(serve.http_ingress)  # a cluster's front was set when it started
    connect(options[3].address)
    deploy(serve_config(options))
    return service_url(serve)


def service_banner(options: Options, url: str) -> str:
    """What `raytev serve` prints once the service answers: where, and a curl line to try."""
    serve, model = options[0], options[1]
    token = " -H 'Authorization: Bearer <token>'" if token_sha256(serve) else ""
    query = '"queries": ["what is dense retrieval?"]' if model.model_name_or_path else '"vectors": [[0.1, ...]]'
    lines = [f"serving {serve.index} at {url} (API docs: {url}/docs); Ctrl-C stops it",
             f"  curl -s {url}/search{token} -H 'Content-Type: application/json' -d '{{{query}, \"k\": 5}}'"]
    if serve.host not in ("127.0.0.1", "localhost", "::1") and not token:
        lines.append(f"warning: listening on {serve.host} without a token: anyone who can reach this port can "
                     f"query it (set --auth_token or ${TOKEN_ENV}).")
    return "\n".join(lines)


def serve_until_interrupted() -> None:
    """Block while the service runs; on Ctrl-C (or SIGTERM, as process managers stop things) shut Serve down."""
    import signal

    from ray import serve

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
        serve.shutdown()
