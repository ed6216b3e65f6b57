"""Encoding on a Ray Data actor pool: right vectors, resumable shards, slices, queries, Tevatron pickles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_config, resolved, save_tiny_bert, save_tiny_sentence_transformer, write_jsonl

from raytev.config.sections import DataSection
from raytev.config.stages import EncodeConfig
from raytev.data.embeddings import EmbeddingsWriter, load_embeddings, read_manifest, read_tevatron_pickle
from raytev.data.prepare import prepare_data
from raytev.encoding.encoder import encode, shard_ranges
from raytev.errors import RaytevError
from raytev.modeling.dense import DenseModel

pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(tmp_path):
    """A tiny model folder and a 40-passage corpus with queries."""
    model = save_tiny_bert(tmp_path / "model")
    path = write_jsonl(tmp_path / "corpus.jsonl",
                       [{"docid": f"d{i}", "title": "t", "text": "a small cat " * (1 + i % 7)} for i in range(40)])
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"query_id": f"q{i}", "query": "what is a dog"} for i in range(5)])
    return {"model": str(model), "corpus": str(path), "queries": str(queries), "out": tmp_path / "emb"}


def run_encode(corpus, **flags):
    flags = {"dataset_path": corpus["corpus"], "num_actors": 2, **flags}
    return encode(make_config(EncodeConfig, model_name_or_path=corpus["model"], encode_output_path=str(corpus["out"]),
                              rows_per_shard=10, per_device_eval_batch_size=4, **flags))


def reference_vectors(corpus, is_query=False):
    """The same texts encoded in this process, one batch each, as the truth."""
    data = DataSection(dataset_path=corpus["queries" if is_query else "corpus"], encode_is_query=is_query)
    prepared = prepare_data(data, resolved(corpus["model"]))
    table = (prepared.queries if is_query else prepared.corpus).read()
    model = DenseModel.from_pretrained(corpus["model"]).eval()
    vectors = []
    for tokens in table.column("input_ids").to_pylist():
        ids = torch.tensor([tokens])
        with torch.no_grad():
            encode_fn = model.encode_query if is_query else model.encode_passage
            vectors.append(encode_fn(ids, torch.ones_like(ids))[0].numpy())
    return table.column("query_id" if is_query else "docid").to_pylist(), np.stack(vectors)


def test_shard_ranges_cover_a_slice_once():
    assert shard_ranges(40, 0, 1, 10) == [(0, 10), (10, 20), (20, 30), (30, 40)]
    assert shard_ranges(10, 1, 3, 2) == [(3, 5), (5, 6)]
    covered = [row for part in range(3) for low, high in shard_ranges(10, part, 3, 2) for row in range(low, high)]
    assert covered == list(range(10))


def test_actor_pool_vectors_equal_one_by_one_encoding(ray_session, corpus):
    result = run_encode(corpus)
    assert (result.rows, result.shards, result.dim) == (40, 4, 32)
    ids, vectors = load_embeddings(str(corpus["out"]))
    expected_ids, expected = reference_vectors(corpus)
    assert ids.tolist() == expected_ids  # file order, no duplicates
    np.testing.assert_allclose(vectors, expected, atol=1e-5)  # padding and length sorting change nothing
    manifest = read_manifest(corpus["out"])
    assert manifest.complete and manifest.count == 40 and manifest.kind == "passages"


def test_encoding_in_this_process_gives_the_actor_pools_vectors(corpus):
    result = run_encode(corpus, num_actors=0)  # no Ray at all
    assert (result.rows, result.shards) == (40, 4)
    ids, vectors = load_embeddings(str(corpus["out"]))
    expected_ids, expected = reference_vectors(corpus)
    assert ids.tolist() == expected_ids
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_an_interrupted_encoding_resumes_without_redoing_or_duplicating(ray_session, corpus, monkeypatch):
    written = []
    original = EmbeddingsWriter.write_shard

    def fail_after_one(self, index, ids, vectors):
        if written:
            raise KeyboardInterrupt("stopped by the test")
        written.append(index)
        original(self, index, ids, vectors)

    monkeypatch.setattr(EmbeddingsWriter, "write_shard", fail_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_encode(corpus)
    assert len(read_manifest(corpus["out"]).shards) == 1
    monkeypatch.setattr(EmbeddingsWriter, "write_shard", original)
    redone = []
    monkeypatch.setattr(EmbeddingsWriter, "write_shard",
                        lambda self, index, ids, vectors: (redone.append(index), original(self, index, ids, vectors)))
    result = run_encode(corpus)
    assert result.reused_shards == 1 and written[0] not in redone and len(redone) == 3
    ids, vectors = load_embeddings(str(corpus["out"]))
    expected_ids, expected = reference_vectors(corpus)
    assert ids.tolist() == expected_ids and len(set(ids.tolist())) == 40
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_a_slice_of_the_input_queries_and_pickles(ray_session, corpus, tmp_path):
    corpus["out"] = tmp_path / "part1"
    run_encode(corpus, dataset_number_of_shards=2, dataset_shard_index=1)
    ids, _ = load_embeddings(str(corpus["out"]))
    assert ids.tolist() == [f"d{i}" for i in range(20, 40)]

    corpus["out"] = tmp_path / "queries.pkl"
    # The pickle is written from the shards whoever encoded them: in-process here (CI time).
    run_encode(corpus, dataset_path=corpus["queries"], encode_is_query=True, output_format="tevatron-pickle",
               num_actors=0)
    ids, vectors = read_tevatron_pickle(corpus["out"])
    expected_ids, expected = reference_vectors(corpus, is_query=True)
    assert ids.tolist() == expected_ids
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_encoding_the_wrong_side_is_explained(ray_session, corpus):
    with pytest.raises(RaytevError, match="holds no queries to encode"):
        run_encode(corpus, encode_is_query=True)


def test_a_sentence_transformers_models_prompts_are_applied_as_sentence_transformers_applies_them(
        ray_session, corpus, tmp_path):
    from sentence_transformers import SentenceTransformer

    prompts = {"query": "query: ", "document": "passage: "}
    folder = save_tiny_sentence_transformer(tmp_path / "st", prompts)
    texts = {}
    for kind, path in (("queries", corpus["queries"]), ("passages", corpus["corpus"])):
        out = tmp_path / kind
        # In-process: prompts are applied where the text is tokenized, whoever encodes (actors are tested above).
        encode(make_config(EncodeConfig, dataset_path=path, encode_is_query=kind == "queries",
                           model_name_or_path=str(folder), encode_output_path=str(out), num_actors=0))
        texts[kind] = load_embeddings(str(out))[1]
    model = SentenceTransformer(str(folder), device="cpu")
    queries = ["what is a dog"] * 5
    passages = [f"t {'a small cat ' * (1 + i % 7)}".strip() for i in range(40)]
    expected = {"queries": model.encode_query(queries), "passages": model.encode_document(passages)}
    for kind in ("queries", "passages"):
        cosines = np.sum(texts[kind] * expected[kind], axis=1) / (
            np.linalg.norm(texts[kind], axis=1) * np.linalg.norm(expected[kind], axis=1))
        assert cosines.min() >= 0.9999, (kind, cosines.min())
    # Without its prompt the same model gives other vectors: the prompt is what made them equal.
    unprompted = model.encode(queries)
    assert np.min(np.sum(unprompted * texts["queries"], axis=1)) < 0.999
    # An explicit flag wins over the model's own prompt, even an empty one (in-process: no actors to start).
    out = tmp_path / "flagged"
    encode(make_config(EncodeConfig, dataset_path=corpus["queries"], encode_is_query=True, query_prefix="",
                       model_name_or_path=str(folder), encode_output_path=str(out), num_actors=0))
    np.testing.assert_allclose(load_embeddings(str(out))[1], unprompted, atol=1e-5)
