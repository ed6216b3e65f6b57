"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis), over an in-process stand-in that really searches.

Bounded and repeatable: a fixed number of derandomized cases per operation, no example database, no shrinking.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from raytev.serving.http import make_api, token_digest
from raytev.serving.validation import Limits, check_dimension

DIM, ROWS = 8, 50
LIMITS = Limits(max_queries=8, max_k=60, max_body_bytes=1 << 20)  # k beyond the 50 rows is asked too
BEARER = {"Authorization": "Bearer fuzz-token"}
# Cases per operation, generation mode, and whether the token is sent ("generated": the Authorization header as
# schemathesis made it: a made-up token, mangled or missing). The GETs take no input: a few cases are all there are.
RUNS = {"texts": [("POST /search", "positive", "token", 300), ("POST /search", "negative", "token", 300),
                  ("POST /search", "negative", "generated", 30), ("GET /info", "positive", "token", 10),
                  ("GET /info", "negative", "generated", 10), ("GET /healthz", "positive", "token", 10)],
        # A service without a query encoder states another body: vectors only.
        "vectors only": [("POST /search", "positive", "token", 60), ("POST /search", "negative", "token", 60)]}
SLOW_S = 5.0  # no answer may take longer (a hang): an in-process search of 50 rows takes milliseconds


class ExactSearch:
    """The service stand-in: exact inner-product top-k over 50 vectors of dimension 8; texts hashed to vectors."""

    def __init__(self, text_queries: bool = True):
        self.text_queries, self.reranks = text_queries, False
        self.matrix = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        """A deterministic vector per text (its SHA-256 bytes, centred)."""
        digests = [np.frombuffer(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:DIM], np.uint8)
                   for text in texts]
        return (np.stack(digests).astype(np.float32) - 127.5) / 127.5

    def exact(self, vectors: np.ndarray, k: int) -> list[list[dict]]:
        """The k best rows per vector by inner product, best first (ties by row)."""
        with np.errstate(all="ignore"):  # huge query numbers overflow float32 scores on purpose
            scores = vectors @ self.matrix.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[{"docid": f"doc{row}", "score": float(row_scores[row]), "stage": "retriever"} for row in row_order]
                for row_scores, row_order in zip(scores, order)]

    async def search(self, query):
        check_dimension(query, DIM)
        return self.exact(query.vectors if query.texts is None else self.encode(query.texts), query.k)

    async def info(self):
        return {"model": "hash", "dim": DIM, "ntotal": ROWS, "shards": 1, "index_type": "Flat", "index": "memory",
                "corpus": None, "text_queries": self.text_queries, "http_front": "proxy", "swap_errors": [],
                "shard_parts": [{"shard": 0, "rows": [0, ROWS], "ntotal": ROWS, "batches": 0, "requests": 0,
                                 "search_seconds": 0.0}]}


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          positive_data_acceptance, negative_data_rejection]


def fuzz(operation, mode: GenerationMode, token: bool, examples: int, seen: list) -> None:
    """Run `examples` derandomized cases of one operation; every answer checked; each case appended to `seen`."""
    headers = BEARER if token else None

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
    def run(case):
        negated = {location.value for location, part in case.meta.components.items() if part.mode.is_negative}
        started = time.perf_counter()
        response = case.call(headers=headers)
        took = time.perf_counter() - started
        seen.append((",".join(sorted(negated)), response.status_code))
        sent = f"{case.method} {case.path} headers={case.headers if headers is None else '(token)'} " \
               f"body={case.body!r:.300}"
        assert took < SLOW_S, f"{sent}: {took:.1f} s"
        case.validate_response(response, checks=CHECKS, headers=headers)
        status = response.status_code
        if not token and case.path != "/healthz":
            assert status == 401, f"{sent}: no token but {status} {response.text[:300]}"
        elif mode is GenerationMode.POSITIVE:
            assert status == 200, f"{sent}: a schema-valid request got {status} {response.text[:300]}"
        else:
            assert 400 <= status < 500, f"{sent}: a schema-invalid request got {status} {response.text[:300]}"
        if status >= 400:
            answer = json.loads(response.content)
            assert list(answer) == ["error"] and isinstance(answer["error"], str) and answer["error"].strip(), \
                f"{sent}: {status} {response.text[:300]}"

    run()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", list(RUNS))
def test_the_api_fuzzed_from_its_own_schema_answers_every_case_and_still_searches_afterwards(variant, record_property):
    service = ExactSearch(text_queries=variant == "texts")
    app = make_api(service, LIMITS, token_digest("fuzz-token"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=BEARER)
    body = schema.raw_schema["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    vectors = body["properties"]["vectors"]
    assert vectors.get("anyOf", [vectors])[0]["items"]["maxItems"] == DIM  # the stand-in said its dimension
    started, counts, answers = time.perf_counter(), {}, {}
    for label, mode, token, examples in RUNS[variant]:
        method, path = label.split()
        seen = []
        fuzz(schema[path][method], GenerationMode(mode), token == "token", examples, seen)
        run = f"{label} {mode} {token}"
        counts[run] = len(seen)
        answers[run] = dict(Counter(f"{negated or 'nothing'} negated: {status}" for negated, status in seen))
        # The GETs have a single distinct case or a few; /search's input space is never used up.
        assert len(seen) >= (0.8 * examples if path == "/search" else 1), (run, len(seen))
    print(f"fuzz cases run: {counts}, {sum(counts.values())} in all, in {time.perf_counter() - started:.1f} s; "
          f"answers: {answers}")
    record_property("fuzz_cases", counts)

    # Afterwards a good request is answered, and by the exact search.
    vectors = np.random.default_rng(1).standard_normal((3, DIM)).astype(np.float32)
    good = {"vectors": vectors.tolist(), "k": 7}
    response = schema["/search"]["POST"].Case(body=good).call(headers=BEARER)
    assert response.status_code == 200 and response.json() == {"results": service.exact(vectors, 7)}
    if service.text_queries:
        texts = ["what is a cat", "  a dog "]
        response = schema["/search"]["POST"].Case(body={"queries": texts, "k": 60}).call(headers=BEARER)
        assert response.status_code == 200 and response.json() == {"results": service.exact(service.encode(texts), 60)}
