"""A Python client of the search service (keeps one HTTP connection per thread)."""

from __future__ import annotations

import os
import threading

import numpy as np
import requests

from raytev.errors import RaytevError


class SearchError(RaytevError):
    """The service refused a request or failed: the HTTP status and its error message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class SearchClient:
    """search / info / healthz of a raytev service at `url` (e.g. http://127.0.0.1:8000).

    `token` is the bearer token (default: $RAYTEV_AUTH_TOKEN, if set). Safe to share between threads.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get("RAYTEV_AUTH_TOKEN")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self._local = threading.local()

    def search(self, queries: list[str] | None = None, vectors=None, k: int = 10,
               rerank: bool | None = None) -> list[list[dict]]:
        """Per query, its k best hits ({docid, score, stage[, title, text]}); give texts or vectors [n, dim].
        `rerank`: False keeps the retriever's ranking on a service with a reranker (None: the service's default)."""
        body: dict = {"k": k}
        if rerank is not None:
            body["rerank"] = rerank
        if queries is not None:
            body["queries"] = [queries] if isinstance(queries, str) else list(queries)
        if vectors is not None:
            body["vectors"] = np.asarray(vectors, dtype=np.float32).reshape(-1, np.shape(vectors)[-1]).tolist()
        return self._call("POST", "/search", body)["results"]

    def info(self) -> dict:
        """The model, dimension, size, type and shards of the index served."""
        return self._call("GET", "/info")

    def healthz(self) -> dict:
        """{"status": "ok"} while the service answers."""
        return self._call("GET", "/healthz")

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            response = session.request(method, self.url + path, json=body, headers=self.headers, timeout=self.timeout)
        except requests.RequestException as error:
            raise SearchError(0, f"cannot reach {self.url}: {error}") from None
        if response.status_code != 200:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text[:500]
            raise SearchError(response.status_code, message)
        return response.json()
