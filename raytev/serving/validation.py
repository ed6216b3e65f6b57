"""A search request checked before any work: the raw body in, texts or vectors and k out, or what was wrong.

The rules are stated once, in a pydantic model per service (search_request_model) that checks requests and whose
JSON schema /openapi.json shows. What a schema cannot state is code: a body over max_body_bytes (413, http.py),
vectors of unequal lengths while the dimension is unknown, or not of the index's (check_dimension: a hot swap may
change it), and a string holding an escaped lone surrogate (400, malformed JSON).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Optional

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

FLOAT32_MAX = float(np.finfo(np.float32).max)
# The characters str.isspace() calls whitespace, spelled out: \S in a schema's pattern means another set in each
# regex dialect (ECMA-262, Python, Rust disagree on \x1c-\x1f, \x85, \ufeff), so a text's "non-blank" is this class.
NON_BLANK = "[^\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
ONE_OF = ("queries", "vectors")  # a request holds exactly one of these lists


class RequestError(Exception):
    """A request the service refuses: the HTTP status and a message saying what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_queries: int = 64
    max_k: int = 1000
    max_body_bytes: int = 4 << 20


@dataclass
class SearchQuery:
    """A checked request: texts or float32 vectors [n, dim] (exactly one of them), k, and whether the reranker (if
    the service has one) rescores the texts' hits."""

    texts: list[str] | None
    vectors: np.ndarray | None
    k: int
    rerank: bool = True

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.vectors)


def _integral(value):
    """A float without a fractional part (5.0, 1e2) as an int: JSON Schema's "integer" admits it, strict mode not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class SearchBody(BaseModel):
    """Queries as texts (encoded by the service's model) or as vectors, and how many hits each."""

    # Exactly one of the lists (the other absent or null): in the schema, and checked below.
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"oneOf": [
        {"required": [name], "properties": {name: {"type": "array"}}} for name in ONE_OF]})

    @model_validator(mode="after")
    def _exactly_one_list(self):
        given = [name for name in ONE_OF if getattr(self, name) is not None]
        if len(given) != 1:
            raise PydanticCustomError("one_of", 'give either "queries" (a list of texts) or "vectors" (a list of '
                                                'vectors), not {which}.', {"which": "both" if given else "neither"})
        return self


@functools.cache
def search_request_model(limits: Limits, dim: int | None = None, text_queries: bool = True,
                         reranks: bool = False) -> type[SearchBody]:
    """The /search body within `limits`, its vectors of `dim` numbers (None: not known now), texts refused (null
    only) without a query encoder, `rerank` taken only by a service with a reranker."""
    many = Field(min_length=1, max_length=limits.max_queries)
    texts = Annotated[list[Annotated[str, Field(min_length=1, pattern=NON_BLANK)]], many]
    # Compared as float64: a number just past float32's largest would round to it, yet would not be float32's.
    number = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
    vectors = Annotated[list[Annotated[list[number], Field(min_length=dim or 1, max_length=dim)]], many]
    about = {"queries": "Query texts (needs a service started with a model).",
             "vectors": "Query vectors of the index's dimension."}
    lists = {"queries": (Optional[texts], Field(None, description=about["queries"])),
             "vectors": (Optional[vectors], Field(None, description=about["vectors"]))} if text_queries else {
        "queries": (type(None), Field(None, description="This service has no query encoder: send vectors.")),
        "vectors": (vectors, Field(description=about["vectors"]))}
    # The bounds before the validator: after it, the schema would show them as unknown keywords ("ge", "le").
    k = Annotated[int, Field(ge=1, le=limits.max_k), BeforeValidator(_integral)]
    rerank = {"rerank": (bool, Field(True, description="Rescore each text query's top hits with the service's "
                                                       "reranker (vector queries have no text to rerank with)."))}
    return create_model("SearchRequest", __base__=SearchBody, __doc__=SearchBody.__doc__, **lists,
                        k=(k, Field(10, description="Hits per query.")), **(rerank if reranks else {}))


def parse_search_request(body: bytes, limits: Limits, text_queries: bool = True, reranks: bool = False
                         ) -> SearchQuery:
    """The query in a /search body; RequestError (400 malformed, 422 invalid) saying what was wrong."""
    try:
        # pydantic's JSON parser is ~5x faster than json.loads on vectors.
        request = search_request_model(limits, None, text_queries, reranks).model_validate_json(body)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        if any(problem["type"] == "json_invalid" for problem in problems):
            raise RequestError(400, f"malformed JSON: {problems[0]['msg'].removeprefix('Invalid JSON: ')}") \
                from None
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise RequestError(422, "; ".join(_in_words(problem, limits).rstrip(".") for problem in problems[:3]) +
                           more + ".") from None
    if request.queries is not None:
        return SearchQuery(request.queries, None, request.k, getattr(request, "rerank", False))
    lengths = {len(vector) for vector in request.vectors}
    if len(lengths) > 1:
        raise RequestError(422, f"the vectors differ in length ({', '.join(map(str, sorted(lengths)))} numbers): "
                                "each needs the index's dimension.")
    return SearchQuery(None, np.asarray(request.vectors, dtype=np.float32), request.k)


def check_dimension(query: SearchQuery, dim: int) -> None:
    """Refuse query vectors whose dimension is not the index's."""
    if query.vectors is not None and query.vectors.shape[1] != dim:
        raise RequestError(422, f"the vectors have {query.vectors.shape[1]} dimensions but the index holds "
                                f"{dim}-dimensional vectors.")


def _in_words(problem: dict, limits: Limits) -> str:
    """One error of the request model in the service's words: which rule what part of the body broke."""
    kind, loc, context = problem["type"], problem["loc"], problem.get("ctx", {})
    where = _path(loc)
    if not loc:  # the body as a whole
        return problem["msg"] if kind == "one_of" else \
            'the body must be a JSON object such as {"queries": ["..."], "k": 10}'
    if loc == ("rerank",) and kind == "extra_forbidden":
        return 'this service has no reranker (it was started without --reranker_name_or_path): leave out "rerank"'
    if kind == "none_required":  # texts sent to a service without a query encoder
        return 'this service has no query encoder (it was started without a model): send "vectors" instead of ' \
               '"queries"'
    if loc == ("k",) and kind in ("greater_than_equal", "less_than_equal"):
        return f"k must be between 1 and {limits.max_k}, got {problem['input']}"
    if kind == "too_short" and context["actual_length"] == 0:
        return f'"{where}" is empty: give at least one'
    if kind == "too_long" and len(loc) == 1:
        return f"{context['actual_length']} {where} in one request; at most {context['max_length']} are accepted: " \
               "split them over several requests"
    if kind in ("string_too_short", "string_pattern_mismatch"):
        return f"{where} is empty or only whitespace"
    if len(loc) == 3 and kind in ("greater_than_equal", "less_than_equal"):
        return f"{_path(loc[:2])} holds NaN or infinity (or a number too large for float32)"
    return f"{where}: {problem['msg']}"


def _path(loc: tuple) -> str:
    """Where in the body, as `vectors[1][0]`."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
