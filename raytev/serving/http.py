"""The HTTP API (FastAPI): routes, bearer-token and body-size checks, and every error as {"error": "..."}.

No Ray here: the routes call a SearchService (the ingress deployment, or a stand-in in tests).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from raytev import __version__
from raytev.serving.schema import ErrorResponse, InfoResponse, SearchRequest, SearchResponse
from raytev.serving.validation import Limits, RequestError, SearchQuery, parse_search_request

OPEN_PATHS = ("/healthz",)  # answered without a token: probes of load balancers carry none, and it tells nothing
RETRY_AFTER_S = 1  # a 503 says when to try again: a swap settles, or Serve replaces a lost replica, within seconds


class SearchService(Protocol):
    """What the routes need from the service behind them."""

    text_queries: bool

    async def search(self, query: SearchQuery) -> list[list[dict]]:
        """Hits per query, best first."""

    async def info(self) -> dict:
        """The InfoResponse fields."""


def token_digest(token: str) -> str:
    """The SHA-256 (hex) of a bearer token: what configs hold instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def make_api(service: SearchService, limits: Limits, token_sha256: str | None = None) -> FastAPI:
    """The FastAPI app of the search service."""
    api = FastAPI(title="raytev search", version=__version__,
                  description="Dense retrieval over a FAISS index served with Ray Serve. Send query texts or "
                              "vectors to /search; with a token set, send `Authorization: Bearer <token>`.")
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
    @api.post("/search", response_model=SearchResponse, responses=errors,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": SearchRequest.model_json_schema()}}}})
    async def search(request: Request) -> JSONResponse:
        """Top-k passages for each query (texts or vectors)."""
        query = parse_search_request(await request.body(), limits, service.text_queries)
        return JSONResponse({"results": await service.search(query)})

    @api.get("/info", response_model=InfoResponse, responses=errors)
    async def info() -> JSONResponse:
        """The model, the index (dimension, size, type) and its shards."""
        return JSONResponse(await service.info())

    @api.get("/healthz")
    async def healthz() -> dict:
        """200 while the service answers."""
        return {"status": "ok"}

    return api


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
