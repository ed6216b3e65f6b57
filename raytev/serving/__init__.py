"""The Ray Serve application: ingress (FastAPI) -> query encoder -> index shard(s) -> merged top-k.

`raytev serve` runs it (service.py); `raytev.serving.app:build_app` is the builder `serve run` / `serve deploy`
import; SearchClient queries it from Python.
"""

from raytev.serving.client import SearchClient, SearchError

__all__ = ["SearchClient", "SearchError"]
