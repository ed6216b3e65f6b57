"""The HTTP API's answers as pydantic models, which the OpenAPI schema names (a request's model is validation.py's)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Hit(BaseModel):
    """One retrieved passage; title and text when the service was given the corpus; the stage that scored it."""

    docid: str
    score: float
    stage: str = Field(description="What gave the score: 'retriever' (the index) or 'reranker' (the cross-encoder "
                                   "that rescored the top hits); scores of the two do not compare.")
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
    reranker: str | None = None  # the cross-encoder that rescores text queries' top hits, if any
    rerank_depth: int | None = None  # how many of them
    shard_parts: list[ShardInfo]
    swap_errors: list[str]


class ErrorResponse(BaseModel):
    """What was wrong with a request."""

    error: str
