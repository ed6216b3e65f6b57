"""The HTTP API's bodies as pydantic models: requests are validated with them and the OpenAPI schema names them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _integral(value):
    """A float without a fractional part (5.0, 1e2) as an int: JSON Schema's "integer" admits it, strict mode not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class SearchRequest(BaseModel):
    """Queries as texts (encoded by the service's model) or as vectors, and how many hits each."""

    model_config = ConfigDict(extra="forbid", strict=True)

    queries: list[str] | None = Field(None, description="Query texts (needs a service started with a model).")
    vectors: list[list[float]] | None = Field(None, description="Query vectors of the index's dimension.")
    k: Annotated[int, BeforeValidator(_integral)] = Field(10, description="Hits per query.")


class Hit(BaseModel):
    """One retrieved passage; title and text when the service was given the corpus."""

    docid: str
    score: float
    title: str | None = None
    text: str | None = None


class SearchResponse(BaseModel):
    """Per query, in request order, its hits best first."""

    results: list[list[Hit]]


class ShardInfo(BaseModel):
    """One index shard: the rows it serves; the searches, requests and search time of the replica that answered."""

    shard: int
    rows: list[int] | None  # [low, high) of the whole index; None when each shard has its own folder
    ntotal: int
    batches: int
    requests: int
    search_seconds: float


class InfoResponse(BaseModel):
    """What the service searches."""

    model: str
    dim: int
    ntotal: int
    shards: int
    index_type: str
    index: str
    corpus: str | None
    text_queries: bool
    http_front: str  # "haproxy" (Ray Serve's high-throughput mode) or "proxy" (Serve's Python proxy)
    shard_parts: list[ShardInfo]
    swap_errors: list[str]


class ErrorResponse(BaseModel):
    """What was wrong with a request."""

    error: str
