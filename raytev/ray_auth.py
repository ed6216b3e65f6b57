"""Ray's token authentication as a client sees it: where Ray would find a token, and when to turn token mode on.

No Ray import here, so that `raytev doctor` reports the auth settings without paying for Ray's.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_HELP = ("set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN, in a file named by "
              "RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token (`ray get-auth-token` on the head prints it)")


def is_client_address(address: str | None) -> bool:
    """Whether `address` is a Ray Client address (ray://host:port): this process is then a client, not a node."""
    return bool(address) and address.startswith("ray://")


def token_source(environ: MutableMapping[str, str] = os.environ, home: Path | None = None) -> str | None:
    """Where Ray would read its authentication token from (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token,
    in Ray's order: a variable that is set is used even when it is blank), or None when there is no token."""
    if environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN" if environ["RAY_AUTH_TOKEN"].strip() else None
    named = environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else (home or Path.home()) / ".ray" / "auth_token"
    try:
        return str(path) if path.read_text().strip() else None
    except OSError:
        return None


def enable_token_auth(address: str | None, environ: MutableMapping[str, str] = os.environ,
                      home: Path | None = None) -> bool:
    """Turn Ray's token authentication on for a Ray Client connection when a token is at hand; True if it did.

    Ray sends its token only with RAY_AUTH_MODE=token, and it sets that by itself only for a cluster it starts or
    finds on this machine. A client (ray://) with a token but no mode would be refused by a token cluster; sending
    a token to a cluster without authentication is harmless. An explicit mode is kept, and other addresses
    (host:port makes this process a node of the cluster, whose mode must match the cluster's) are left to Ray.
    """
    if not is_client_address(address) or AUTH_MODE in environ or token_source(environ, home) is None:
        return False
    environ[AUTH_MODE] = "token"
    return True
