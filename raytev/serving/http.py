"""The HTTP API (FastAPI): routes, bearer-token and body-size checks, and every error as {"error": "..."}.

No Ray here: the routes call a SearchService (the ingress deployment, or a stand-in in tests).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import math
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from raytev import __version__
from raytev.serving.schema import ErrorResponse, InfoResponse, SearchResponse
from raytev.serving.validation import (
    FLOAT32_MAX,
    Limits,
    RequestError,
    SearchQuery,
    parse_search_request,
    search_request_model,
)

OPEN_PATHS = ("/healthz",)  # answered without a token: probes of load balancers carry none, and it tells nothing
RETRY_AFTER_S = 1  # a 503 says when to try again: a swap settles, or Serve replaces a lost replica, within seconds
INFO_TIMEOUT_S = 5.0  # /openapi.json waits this long for the index's dimension, then states none


class SearchService(Protocol):
    """What the routes need from the service behind them."""

    text_queries: bool
    reranks: bool  # whether requests may say "rerank" (a reranker rescores text queries' top hits)

    async def search(self, query: SearchQuery) -> list[list[dict]]:
        """Hits per query, best first."""

    async def info(self) -> dict:
        """The InfoResponse fields."""


def token_digest(token: str) -> str:
    """The SHA-256 (hex) of a bearer token: what configs hold instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def make_api(service: SearchService, limits: Limits, token_sha256: str | None = None) -> FastAPI:
    """The FastAPI app of the search service."""
    # /openapi.json and the docs are routes of their own: the document states the dimension of the index served now.
    api = FastAPI(title="raytev search", version=__version__, openapi_url=None, docs_url=None, redoc_url=None,
                  description="Dense retrieval over a FAISS index served with Ray Serve. Send query texts or "
                              "vectors to /search; with a token set, send `Authorization: Bearer <token>`. A body "
                              f"holds at most {limits.max_body_bytes:,} bytes.")
    api.add_middleware(RequestGuard, token_sha256=token_sha256, max_body_bytes=limits.max_body_bytes)
    errors = {status: {"model": ErrorResponse} for status in (400, 401, 413, 422, 503)}

    @api.exception_handler(RequestError)
    async def refused(_: Request, error: RequestError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 503 else None
        return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)

    @api.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @api.exception_handler(Exception)
    async def failed(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    # The body is read and checked by parse_search_request (size first, then JSON, then meaning), so the
    # schema is declared for the OpenAPI document rather than as a FastAPI body parameter.
    @api.post("/search", response_model=SearchResponse, responses=errors, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {
            "schema": search_request_model(limits, None, service.text_queries,
                                      service.reranks).model_json_schema()}}}})
    async def search(request: Request) -> JSONResponse:
        """Top-k passages for each query (texts or vectors)."""
        query = parse_search_request(await request.body(), limits, service.text_queries, service.reranks)
        results = await service.search(query)
        try:
            return JSONResponse({"results": results})
        except ValueError:  # a score overflowed float32 (huge query numbers), and JSON has no infinity or NaN
            return JSONResponse({"results": finite_scores(results)})

    @api.get("/info", response_model=InfoResponse, responses=errors)
    async def info() -> JSONResponse:
        """The model, the index (dimension, size, type) and its shards."""
        return JSONResponse(await service.info())

    @api.get("/healthz")
    async def healthz() -> dict:
        """200 while the service answers."""
        return {"status": "ok"}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        """The OpenAPI document, /search's body with the dimension of the index served now when the service says."""
        body = search_request_model(limits, await index_dim(service), service.text_queries,
                                    service.reranks).model_json_schema()
        document = openapi_document(api.openapi(), body, token_sha256 is not None)
        root = request.scope.get("root_path", "").rstrip("/")
        if root:  # served under a route prefix: "Try it out" in /docs must call it there
            document["servers"] = [{"url": root}]
        return JSONResponse(document)

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        """Swagger UI over /openapi.json."""
        return get_swagger_ui_html(openapi_url=_under_root(request, "/openapi.json"), title=f"{api.title} - docs")

    @api.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        """ReDoc over /openapi.json."""
        return get_redoc_html(openapi_url=_under_root(request, "/openapi.json"), title=f"{api.title} - ReDoc")

    return api


async def index_dim(service: SearchService) -> int | None:
    """The dimension of the index served now; None while the service cannot say (loading, swapping, a replica lost)."""
    try:
        return int((await asyncio.wait_for(service.info(), INFO_TIMEOUT_S))["dim"])
    except Exception:  # whatever keeps the service from saying, the document is still served, without a dimension
        return None


def openapi_document(generated: dict, search_body: dict, bearer: bool) -> dict:
    """FastAPI's generated document (not changed) with /search's body schema and, with a token set, its scheme."""
    document = copy.deepcopy(generated)
    document["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"] = search_body
    if bearer:
        document.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
        for path in OPEN_PATHS:
            for operation in document["paths"].get(path, {}).values():
                operation["security"] = []
    return document


def finite_scores(results: list[list[dict]]) -> list[list[dict]]:
    """Scores beyond float32 saturated at its largest magnitude, NaN (overflows of both signs) ranked last as -max."""
    def finite(score: float) -> float:
        return -FLOAT32_MAX if math.isnan(score) else max(-FLOAT32_MAX, min(FLOAT32_MAX, score))

    return [sorted(({**hit, "score": finite(hit["score"])} for hit in hits), key=lambda hit: -hit["score"])
            for hits in results]


def _under_root(request: Request, path: str) -> str:
    """A path of this app as the client must ask for it (Serve mounts an app under its route prefix)."""
    return request.scope.get("root_path", "").rstrip("/") + path


class BodyTooLarge(Exception):
    """A body without Content-Length grew past the limit while it was read."""


class RequestGuard:
    """ASGI middleware: the bearer token (when set) and the body-size limit, checked before a body is read."""

    def __init__(self, app, token_sha256: str | None, max_body_bytes: int):
        self.app, self.token_sha256, self.max_body_bytes = app, token_sha256, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        """Refuse with 401 / 413 / 400, or pass the request on with a receive that counts bytes."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if self.token_sha256 and path not in OPEN_PATHS and not self._authorized(headers.get(b"authorization")):
            return await _reply(send, 401, "missing or wrong bearer token: send the header "
                                            "'Authorization: Bearer <token>'.", {"www-authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await _reply(send, 400, f"Content-Length {length[:40]!r} is not a number.")
            if int(length) > self.max_body_bytes:
                return await _reply(send, 413, f"the body is {int(length):,} bytes; at most {self.max_body_bytes:,} "
                                               "are accepted: send fewer queries per request.")
        received, started = 0, False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def watching_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if not started:
                await _reply(send, 413, f"the body is over {self.max_body_bytes:,} bytes: send fewer queries per "
                                        "request.")

    def _authorized(self, header: bytes | None) -> bool:
        scheme, _, token = (header or b"").decode("latin-1").partition(" ")
        presented = token_digest(token.strip()) if scheme.lower() == "bearer" else ""
        # Digests of equal length, compared in constant time: nothing about the token leaks through timing.
        return hmac.compare_digest(presented.encode(), self.token_sha256.encode())


async def _reply(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Send a whole JSON error response from ASGI middleware."""
    response = JSONResponse({"error": message}, status_code=status, headers=headers)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
