"""Encoding on a Ray Data actor pool: right vectors, resumable shards, slices, queries, Tevatron pickles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_config, resolved, save_tiny_bert, save_tiny_sentence_transformer, write_jsonl

from raytev.config.sections import DataSection
from raytev.config.stages import EncodeConfig
from raytev.data.prepare import prepare_data
from raytev.encoding.embeddings import load_embeddings, read_manifest, read_tevatron_pickle
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
    queries = write_jsonl(tmp_path / "queries.jsonl",
                          [{"query_id": f"q{i}", "query": "what is a dog"} for i in range(5)])
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
    # Shards are what actors take: an input of fewer than 64 full shards is cut shorter (not under 1,024 rows)...
    assert shard_ranges(5_183, 0, 1, 50_000) == [(start, min(start + 1024, 5_183)) for start in range(0, 5_183, 1024)]
    assert len(shard_ranges(200_000, 0, 1, 50_000)) == 64
    # ... and a large one keeps --rows_per_shard.
    assert shard_ranges(8_800_000, 0, 1, 50_000)[:2] == [(0, 50_000), (50_000, 100_000)]


def shard_files(folder):
    """Each shard file's name -> (inode, modification time): a rewritten file gets new ones."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in sorted(folder.glob("shard-*"))}


def test_actor_written_shards_equal_driver_written_ones_and_the_model_one_text_at_a_time(ray_session, corpus, tmp_path):
    result = run_encode(corpus)  # 2 actors, 4 shards of 10: each actor writes the shards it encodes
    assert (result.rows, result.shards, result.dim) == (40, 4, 32)
    ids, vectors = load_embeddings(str(corpus["out"]))
    expected_ids, expected = reference_vectors(corpus)
    assert ids.tolist() == expected_ids  # every id once, in input order, across actors and shards
    np.testing.assert_allclose(vectors, expected, atol=1e-5)  # padding and length sorting change nothing
    manifest = read_manifest(corpus["out"])
    assert manifest.complete and manifest.count == 40 and manifest.kind == "passages"
    assert sorted(manifest.shards) == sorted(shard_files(corpus["out"]))  # every shard recorded, nothing else

    # Written by this process instead (--num_actors 0, the driver): the same ids and the very same vectors, as the
    # same shards are cut into the same length-sorted batches.
    corpus["out"] = tmp_path / "in-process"
    run_encode(corpus, num_actors=0)
    driver_ids, driver_vectors = load_embeddings(str(corpus["out"]))
    assert driver_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(driver_vectors, vectors)


def test_a_deleted_shard_alone_is_encoded_again(ray_session, corpus):
    run_encode(corpus)
    ids, vectors = load_embeddings(str(corpus["out"]))
    before = shard_files(corpus["out"])
    (corpus["out"] / "shard-00002.parquet").unlink()
    result = run_encode(corpus)
    assert (result.rows, result.reused_shards) == (10, 3)
    after = shard_files(corpus["out"])
    assert {name: after[name] for name in before if name != "shard-00002.parquet"} == \
        {name: stat for name, stat in before.items() if name != "shard-00002.parquet"}  # untouched
    assert after["shard-00002.parquet"] != before["shard-00002.parquet"]
    again_ids, again_vectors = load_embeddings(str(corpus["out"]))
    assert again_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(again_vectors, vectors)


def test_an_actor_failing_on_one_shard_leaves_no_part_of_it_and_a_rerun_finishes(ray_session, corpus):
    run_encode(corpus, num_actors=0)
    (corpus["out"] / "shard-00001.parquet").unlink()
    (corpus["out"] / "shard-00001.parquet").mkdir()  # an actor encodes shard 1, then cannot move it into place
    with pytest.raises(Exception, match="shard-00001.parquet"):
        run_encode(corpus)
    leftovers = [path.name for path in corpus["out"].iterdir() if path.name.startswith(".")]
    assert leftovers == []  # no temporary file of the failed shard (or any other) is left behind
    manifest = read_manifest(corpus["out"])
    assert "shard-00001.parquet" not in manifest.shards
    assert all((corpus["out"] / name).is_file() for name in manifest.shards)
    (corpus["out"] / "shard-00001.parquet").rmdir()
    result = run_encode(corpus)
    assert (result.rows, result.reused_shards) == (10, 3)
    ids, vectors = load_embeddings(str(corpus["out"]))
    expected_ids, expected = reference_vectors(corpus)
    assert ids.tolist() == expected_ids
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
