"""The Ray Serve application: ingress (FastAPI) -> query encoder -> index shard(s) -> merged top-k.

`raytev serve` runs it; `raytev.serve.app:build_app` is the builder `serve run` / `serve deploy` import;
SearchClient queries it from Python.
"""

from raytev.serve.client import SearchClient, SearchError

__all__ = ["SearchClient", "SearchError"]
