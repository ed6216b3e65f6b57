"""A search request checked before any work: the raw body in, texts or vectors and k out, or what was wrong."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from raytev.serving.schema import SearchRequest


class RequestError(Exception):
    """A request the service refuses: the HTTP status and a message saying what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


FLOAT32_MAX = float(np.finfo(np.float32).max)
# The characters str.isspace() calls whitespace, spelled out: \S in a schema's pattern means another set in each
# regex dialect (ECMA-262, Python, Rust disagree on \x1c-\x1f, \x85, \ufeff), so a text's "non-blank" is this class.
NON_BLANK = "[^\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NON_BLANK = re.compile(NON_BLANK)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_queries: int = 64
    max_k: int = 1000
    max_body_bytes: int = 4 << 20


@dataclass
class SearchQuery:
    """A checked request: texts or float32 vectors [n, dim] (exactly one of them), and k."""

    texts: list[str] | None
    vectors: np.ndarray | None
    k: int

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.vectors)


def parse_search_request(body: bytes, limits: Limits, text_queries: bool = True) -> SearchQuery:
    """The query in a /search body; RequestError (400 malformed, 422 invalid) saying what was wrong."""
    try:
        # pydantic's JSON parser is ~5x faster than json.loads on vectors, and accepts NaN (refused below).
        request = SearchRequest.model_validate_json(body)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        if any(problem["type"] == "json_invalid" for problem in problems):
            raise RequestError(400, f"malformed JSON: {problems[0]['msg'].removeprefix('Invalid JSON: ')}") \
                from None
        raise RequestError(422, _describe(problems)) from None
    if (request.queries is None) == (request.vectors is None):
        raise RequestError(422, 'give either "queries" (a list of texts) or "vectors" (a list of vectors), '
                                f'not {"both" if request.queries is not None else "neither"}.')
    if not 1 <= request.k <= limits.max_k:
        raise RequestError(422, f"k must be between 1 and {limits.max_k}, got {request.k}.")
    items = request.queries if request.queries is not None else request.vectors
    field = "queries" if request.queries is not None else "vectors"
    if not items:
        raise RequestError(422, f'"{field}" is empty: give at least one.')
    if len(items) > limits.max_queries:
        raise RequestError(422, f"{len(items)} {field} in one request; at most {limits.max_queries} are accepted: "
                                "split them over several requests.")
    if request.queries is not None:
        if not text_queries:
            raise RequestError(422, "this service has no query encoder (it was started without a model): send "
                                    '"vectors" instead of "queries".')
        blank = [number for number, text in enumerate(request.queries) if not _NON_BLANK.search(text)]
        if blank:
            raise RequestError(422, f"queries[{blank[0]}] is empty or only whitespace.")
        return SearchQuery(request.queries, None, request.k)
    lengths = {len(vector) for vector in request.vectors}
    if len(lengths) > 1:
        raise RequestError(422, f"the vectors differ in length ({', '.join(map(str, sorted(lengths)))} numbers): "
                                "each needs the index's dimension.")
    # Compared in float64: a number just past float32's largest would round to it, yet the schema's maximum refuses it.
    vectors = np.asarray(request.vectors, dtype=np.float64)
    bad = ~(np.abs(vectors) <= FLOAT32_MAX).all(axis=1)  # NaN compares false too
    if bad.any():
        raise RequestError(422, f"vectors[{int(np.argmax(bad))}] holds NaN or infinity (or a number too large "
                                "for float32).")
    return SearchQuery(None, vectors.astype(np.float32), request.k)


def search_request_schema(limits: Limits, dim: int | None = None, text_queries: bool = True) -> dict:
    """SearchRequest's JSON schema stating the limits parse_search_request enforces, and the dimension when known.

    Refused although schema-valid, for reasons a JSON schema cannot state: a body over limits.max_body_bytes (413);
    vectors of unequal lengths, or not of the index's dimension, while the dimension is unknown (None: the index is
    loading or swapping), or after a hot swap changed it; a string holding an escaped lone surrogate (400).
    """
    schema = copy.deepcopy(SearchRequest.model_json_schema())
    properties = schema["properties"]
    texts, vectors = _array_of(properties["queries"]), _array_of(properties["vectors"])
    texts.update(minItems=1, maxItems=limits.max_queries)
    texts["items"].update(minLength=1, pattern=NON_BLANK)
    vectors.update(minItems=1, maxItems=limits.max_queries)
    vectors["items"]["minItems"] = 1
    if dim is not None:
        vectors["items"].update(minItems=dim, maxItems=dim)
    # Numbers beyond float32 become infinite and are refused.
    vectors["items"]["items"].update(minimum=-FLOAT32_MAX, maximum=FLOAT32_MAX)
    properties["k"].update(minimum=1, maximum=limits.max_k)
    if text_queries:  # exactly one of the two is a list; the other is absent or null
        schema["oneOf"] = [{"required": [name], "properties": {name: {"type": "array"}}}
                           for name in ("queries", "vectors")]
    else:  # without a query encoder texts are refused ("queries" null is still accepted): vectors, not null
        properties["queries"] = {"type": "null", "description": "This service has no query encoder: send vectors."}
        field = properties["vectors"]
        properties["vectors"] = {key: value for key, value in field.items() if key not in ("anyOf", "default")}
        properties["vectors"].update(vectors)
        schema["required"] = ["vectors"]
    return schema


def _array_of(field: dict) -> dict:
    """The array alternative of an optional list field's schema (anyOf [array, null])."""
    return next(alternative for alternative in field["anyOf"] if alternative.get("type") == "array")


def check_dimension(query: SearchQuery, dim: int) -> None:
    """Refuse query vectors whose dimension is not the index's."""
    if query.vectors is not None and query.vectors.shape[1] != dim:
        raise RequestError(422, f"the vectors have {query.vectors.shape[1]} dimensions but the index holds "
                                f"{dim}-dimensional vectors.")


def _describe(problems: list[dict]) -> str:
    """pydantic's errors as one line: where in the body and what."""
    parts = []
    for problem in problems[:3]:
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"]).lstrip(".")
        parts.append(f"{where}: {problem['msg']}" if where else
                     'the body must be a JSON object such as {"queries": ["..."], "k": 10}')
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(parts) + more
