"""The application: the builder `serve run` / `serve deploy` import, and its Serve config (with hot swaps).

A config's `args` (the flags of `raytev serve`) say how the service is built: shards, limits, scaling, and
the model, index and corpus it starts with; changing them restarts replicas. Each deployment's `user_config`
says what it serves now: the swappable flags of the kind it serves (swaps.py). Changing only those (`swapped`, or
editing them in the YAML and `serve deploy` again) loads the new index, model or corpus beside the old one and
switches when it is complete (replica.py). Deploying and running the service is service.py's.
"""

from __future__ import annotations

import copy
import os

from raytev.config.fields import flag_fields, from_flags, non_default_flags
from raytev.config.stages import ServeConfig
from raytev.errors import RaytevError
from raytev.serving.swaps import SWAPPABLE, user_configs

IMPORT_PATH = "raytev.serving.app:build_app"
TOKEN_ENV = "RAYTEV_AUTH_TOKEN"
INGRESS_MAX_ONGOING_REQUESTS = 256  # the ingress only waits on the others: let it hold many requests at once
# Flags that place the application (config level) or act in the CLI only, not in the builder's args.
NOT_BUILDER_ARGS = frozenset(name for name, (_, field) in flag_fields(ServeConfig).items()
                             if not field.metadata["builder"])


def config_from_args(args: dict) -> ServeConfig:
    """The ServeConfig of a Serve application's `args` (flag names without '--')."""
    return from_flags(ServeConfig, args, "the application's args")


def absolute_paths(args: dict) -> dict:
    """`args` with the local paths it names (index parts, corpus, model, tokenizer) made absolute: replicas do
    not run in this directory. Names that are not local paths (hub models, bundled datasets) stay as they are."""
    def absolute(text: str) -> str:
        path = os.path.expanduser(text)
        return os.path.abspath(path) if os.path.exists(path) else text

    fixed = dict(args)
    if fixed.get("index"):
        fixed["index"] = ",".join(absolute(part.strip()) for part in fixed["index"].split(",") if part.strip())
    for name in ("corpus", "model_name_or_path", "tokenizer_name", "reranker_name_or_path"):
        if fixed.get(name):
            fixed[name] = absolute(fixed[name])
    return fixed


def token_sha256(config: ServeConfig) -> str | None:
    """The digest of the bearer token: given as such, from --auth_token, or from $RAYTEV_AUTH_TOKEN."""
    from raytev.serving.http import token_digest

    if config.auth_token_sha256:
        return config.auth_token_sha256.lower()
    token = config.auth_token or os.environ.get(TOKEN_ENV)
    return token_digest(token) if token else None


def replica_options(config: ServeConfig, gpus: float = 0) -> dict:
    """Replicas (fixed or autoscaled), queue depth and resources of the encoder and of each shard."""
    # A replica must be let hold a whole batch, and the next one filling while it runs. raytev's searches show
    # progress bars, which in a replica would write a log line per request.
    options = {"max_ongoing_requests": 2 * config.max_batch_size,
               "ray_actor_options": {"num_cpus": config.cpus_per_replica, **({"num_gpus": gpus} if gpus else {}),
                                     "runtime_env": {"env_vars": {"TQDM_DISABLE": "1"}}}}
    if config.max_replicas:
        options["autoscaling_config"] = {"min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
                                         "target_ongoing_requests": config.target_ongoing_requests}
        options["max_ongoing_requests"] = max(options["max_ongoing_requests"],
                                              int(2 * config.target_ongoing_requests))
    else:
        options["num_replicas"] = config.num_replicas
    return options


def build_app(args: dict):
    """The Serve application for a config's `args`: ingress, query encoder (with a model), index shards, reranker
    (with one)."""
    from raytev.serving.encoder import QueryEncoder
    from raytev.serving.ingress import Ingress
    from raytev.serving.reranker import Reranker
    from raytev.serving.shard import IndexShard

    config = config_from_args(args)
    configs = user_configs(config)
    shards = [IndexShard.options(name=f"IndexShard{shard}", user_config=configs[f"IndexShard{shard}"],
                                 **replica_options(config)).bind(shard, config.num_shards)
              for shard in range(config.num_shards)]
    encoder = None
    use_gpu = config.cluster.use_gpu
    encoder = reranker = None
    if config.model.model_name_or_path:
        encoder = QueryEncoder.options(user_config=configs["QueryEncoder"],
                                       **replica_options(config, gpus=1 if use_gpu else 0)).bind(use_gpu)
    # The ingress is light (it merges); as many of it as of the others, so that losing one loses no service.
    ingress_replicas = config.min_replicas if config.max_replicas else config.num_replicas
    if config.reranker_name_or_path:
        options = replica_options(config, gpus=1 if use_gpu else 0)
        if config.reranker_replicas:
            options.pop("autoscaling_config", None)
            options["num_replicas"] = config.reranker_replicas
        reranker = Reranker.options(user_config=configs["Reranker"], **options).bind(use_gpu)
    limits = {"max_queries": config.max_queries, "max_k": config.max_k, "max_body_bytes": config.max_body_bytes}
    return Ingress.options(user_config=configs["Ingress"], max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
                           num_replicas=ingress_replicas, ray_actor_options={"num_cpus": config.cpus_per_replica}).bind(
        shards, encoder, limits, token_sha256(config), reranker, config.rerank_depth)


def application_config(config: ServeConfig) -> dict:
    """One application of a Serve config: the builder, and as its args the flags that differ from defaults."""
    args = {name: value for name, value in non_default_flags(config).items() if name not in NOT_BUILDER_ARGS}
    digest = token_sha256(config)
    if digest:
        args["auth_token_sha256"] = digest  # never the token itself: configs are shown and stored
    return {"name": config.app_name, "route_prefix": config.route_prefix, "import_path": IMPORT_PATH,
            "args": absolute_paths(args), "logging_config": {"enable_access_log": config.access_log}}


def serve_config(config: ServeConfig) -> dict:
    """A whole Serve config (what `serve run` / `serve deploy` read) for one application."""
    return {"proxy_location": "EveryNode", "http_options": {"host": config.host, "port": config.port},
            "applications": [application_config(config)]}


def swapped(config: dict, app_name: str, **changes) -> dict:
    """A copy of the Serve config `config` whose application `app_name` serves other things (index, corpus,
    model, revision, batching) through user_config only, so that deploying it swaps them in without restarting
    replicas."""
    unknown = set(changes) - SWAPPABLE
    if unknown:
        raise RaytevError(f"cannot hot swap {', '.join(sorted(unknown))}: only {', '.join(sorted(SWAPPABLE))} "
                          "change without a redeploy.")
    config = copy.deepcopy(config)
    app = next((app for app in config["applications"] if app["name"] == app_name), None)
    if app is None:
        raise RaytevError(f"the config has no application named {app_name!r}.")
    deployed = config_from_args(app["args"])
    if changes.get("model_name_or_path") and not deployed.model.model_name_or_path:
        raise RaytevError(f"{app_name} was deployed without a model (vectors only): adding a query encoder needs a "
                          "redeploy, not a swap.")
    if "reranker_name_or_path" in changes and not (changes["reranker_name_or_path"] and deployed.reranker_name_or_path):
        raise RaytevError(f"{app_name} was deployed {'with' if deployed.reranker_name_or_path else 'without'} a "
                          "reranker: adding or removing the reranker deployment needs a redeploy, not a swap (a swap "
                          "changes the reranker it serves).")
    # What earlier swaps changed lives in the deployments' user_configs, whose keys are flag names.
    overrides = {entry["name"]: entry for entry in app.get("deployments", [])}
    served = dict(app["args"])
    for entry in overrides.values():
        served.update({key: value for key, value in entry.get("user_config", {}).items() if key in SWAPPABLE})
    served.update(absolute_paths(changes))
    for name, user_config in user_configs(config_from_args(served)).items():
        overrides.setdefault(name, {"name": name})["user_config"] = user_config
    app["deployments"] = list(overrides.values())
    return config
