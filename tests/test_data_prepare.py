"""The data stage end to end on small files: sources, token tables, the cache's hits and misses, atomicity."""

from __future__ import annotations

import os

import pytest
from helpers import group, make_config, passage, write_jsonl, write_tiny_tokenizer
from transformers import AutoTokenizer

from raytev.config.sections import DataSection
from raytev.config.stages import PrepareConfig
from raytev.data.cache import FILE_HASHES
from raytev.data.prepare import prepare as prepare_stage
from raytev.data.prepare import validate_data
from raytev.data.sources import HubDataset, resolve_source
from raytev.errors import DataError, RaytevError


def prepare(tokenizer_dir, **flags):
    return prepare_stage(make_config(PrepareConfig, model_name_or_path=str(tokenizer_dir), **flags))


@pytest.fixture
def train_jsonl(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", [
        group("q1", "what is a cat", [passage("d1", "a cat is a small animal", "cat")],
              [passage("d2", "a dog barks", "dog"), passage("d3", "the dog")], answers=["cat"]),
        group("q2", "what is a dog", [passage("d2", "a dog barks", "dog"), passage("d4", "dog")],
              [passage("d1", "a cat")]),
    ])


# --- sources -------------------------------------------------------------------------------------------------

def test_sources_resolve_bundled_beir_files_and_folders(tmp_path, tiny_beir, train_jsonl):
    bundled = resolve_source(DataSection(dataset_name="scifact", dataset_split="test"))
    assert bundled.qrels.name == "test.tsv" and bundled.corpus.paths[0].name == "corpus.jsonl.gz"
    assert resolve_source(DataSection(dataset_path=str(tiny_beir))).qrels == tiny_beir / "qrels" / "train.tsv"
    assert resolve_source(DataSection(dataset_path=str(train_jsonl))).queries.kind == "groups"
    assert resolve_source(DataSection(dataset_path=str(tmp_path), dataset_name="json")).queries.paths == (
        train_jsonl,)  # a folder of JSONL files, as Tevatron v1's --train_dir
    corpus = write_jsonl(tmp_path / "c" / "corpus.jsonl", [{"_id": "d", "text": "x"}])
    assert resolve_source(DataSection(dataset_path=str(corpus))).corpus is not None
    assert resolve_source(DataSection(dataset_path=str(corpus), encode_is_query=True)).queries.kind == "queries"
    tsv = tmp_path / "queries.tsv"
    tsv.write_text("1\twhat\n")
    assert resolve_source(DataSection(dataset_path=str(tsv), encode_is_query=True)).queries.kind == "queries"


def test_unknown_split_lists_the_available_ones(tiny_beir):
    with pytest.raises(RaytevError, match="no split 'dev'.*choose --dataset_split from test, train"):
        resolve_source(DataSection(dataset_path=str(tiny_beir), dataset_split="dev"))


def test_no_data_and_unrecognizable_files_are_explained(tmp_path):
    with pytest.raises(RaytevError, match="no data given.*scifact"):
        resolve_source(DataSection())
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    with pytest.raises(RaytevError, match=r"odd\.jsonl:1: cannot tell what this file holds"):
        resolve_source(DataSection(dataset_path=str(odd)))


def test_hub_names_parse_like_tevatron():
    assert HubDataset.parse("Tevatron/msmarco-passage", None, "train") == HubDataset("Tevatron/msmarco-passage",
                                                                                    None, "train")
    assert HubDataset.parse("Tevatron/wikipedia-nq/dev", None, "train").split == "dev"
    assert HubDataset.parse("Tevatron/beir:scifact", None, "test") == HubDataset("Tevatron/beir", "scifact", "test")


def test_hub_datasets_offline_say_to_pass_local_files():
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    with pytest.raises(RaytevError, match="(?s)Tevatron/scifact/train.*--dataset_path.*--dataset_name scifact"):
        resolve_source(DataSection(dataset_name="Tevatron/scifact"))


# --- token tables ---------------------------------------------------------------------------------------------

def test_inline_groups_become_a_queries_table_with_their_tokens(tiny_tokenizer_dir, train_jsonl):
    prepared = prepare(tiny_tokenizer_dir, dataset_path=str(train_jsonl), passage_max_len=6, query_max_len=4)
    assert prepared.corpus is None and prepared.queries.rows == 2
    table = prepared.queries.read().to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    encode = lambda text, n: tokenizer(text, max_length=n, truncation=True)["input_ids"]  # noqa: E731
    assert table[0]["query_id"] == "q1" and table[0]["answers"] == ["cat"]
    assert table[0]["input_ids"] == encode("what is a cat", 4)
    assert table[0]["positive_input_ids"] == [encode("cat a cat is a small animal", 6)]
    assert table[0]["negative_input_ids"] == [encode("dog a dog barks", 6), encode("the dog", 6)]
    assert table[1]["positive_docids"] == ["d2", "d4"] and table[1]["negative_docids"] == ["d1"]
    manifest = prepared.queries.manifest
    assert (manifest["positives"], manifest["negatives"], manifest["min_negatives"]) == (3, 3, 1)
    assert manifest["settings"]["pad_token_id"] == tokenizer.pad_token_id


def test_prefixes_and_separator_change_the_text_that_is_tokenized(tiny_tokenizer_dir, train_jsonl):
    prepared = prepare(tiny_tokenizer_dir, dataset_path=str(train_jsonl), query_prefix="query: ",
                       passage_prefix="passage: ", title_separator=" . ")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    row = prepared.queries.read().to_pylist()[0]
    assert row["input_ids"] == tokenizer("query: what is a cat", max_length=32, truncation=True)["input_ids"]
    assert row["positive_input_ids"][0] == tokenizer("passage: cat . a cat is a small animal")["input_ids"]


def test_beir_split_becomes_corpus_and_groups(tiny_tokenizer_dir, tiny_beir):
    prepared = prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir), num_negatives=4, seed=3)
    assert prepared.corpus.rows == 12
    corpus = prepared.corpus.read().to_pylist()
    by_docid = {row["docid"]: row["input_ids"] for row in corpus}
    groups = prepared.queries.read().to_pylist()
    # q2's only judgement has score 0: no positive, so no training group.
    assert [g["query_id"] for g in groups] == ["q0", "q1"]
    assert groups[0]["positive_docids"] == ["d0", "d1"]
    for g in groups:
        assert len(g["negative_docids"]) == 4 and not set(g["negative_docids"]) & set(g["positive_docids"])
        assert g["positive_input_ids"] == [by_docid[d] for d in g["positive_docids"]]
        assert g["negative_input_ids"] == [by_docid[d] for d in g["negative_docids"]]
    again = prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir), num_negatives=4, seed=3,
                    dataset_cache_dir=str(tiny_beir.parent / "other-cache"))
    assert [g["negative_docids"] for g in again.queries.read().to_pylist()] == [g["negative_docids"] for g in groups]


def test_run_file_negatives_are_its_top_non_positives(tiny_tokenizer_dir, tiny_beir, tmp_path):
    run = tmp_path / "run.txt"
    run.write_text("q0\td0\t9\nq0\td5\t8\nq0\td6\t7\nq0\td7\t6\nq1\td8\t1\n")
    prepared = prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir), negatives_run=str(run), num_negatives=2)
    groups = {g["query_id"]: g for g in prepared.queries.read().to_pylist()}
    assert groups["q0"]["negative_docids"] == ["d5", "d6"] and groups["q1"]["negative_docids"] == ["d8"]


def test_docid_groups_resolve_against_a_corpus(tiny_tokenizer_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"docid": f"d{i}", "text": f"passage {i}"} for i in range(3)])
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"query_id": "q", "query_text": "what", "positive_document_ids": ["d2"], "negative_document_ids": ["d0"]}])
    prepared = prepare(tiny_tokenizer_dir, dataset_path=str(train), corpus_path=str(corpus))
    row = prepared.queries.read().to_pylist()[0]
    corpus_rows = prepared.corpus.read().to_pylist()
    assert row["positive_input_ids"] == [corpus_rows[2]["input_ids"]]
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"query_id": "q", "query": "w", "positive_document_ids": ["d9"]}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'positive_document_ids': docid 'd9' is not in"):
        prepare(tiny_tokenizer_dir, dataset_path=str(bad), corpus_path=str(corpus))
    with pytest.raises(DataError, match="no corpus was given: pass --corpus_path"):
        prepare(tiny_tokenizer_dir, dataset_path=str(train))


def test_tsv_corpus_with_and_without_header(tiny_tokenizer_dir, tmp_path):
    plain = tmp_path / "collection.tsv"
    plain.write_text("d1\ta cat\nd2\ta dog\n")
    dpr = tmp_path / "psgs.tsv"
    dpr.write_text("id\ttext\ttitle\nd1\ta cat\tCat\n")
    assert [r["docid"] for r in prepare(tiny_tokenizer_dir, dataset_path=str(plain)).corpus.read().to_pylist()] == [
        "d1", "d2"]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    row = prepare(tiny_tokenizer_dir, dataset_path=str(dpr)).corpus.read().to_pylist()[0]
    assert row["input_ids"] == tokenizer("Cat a cat")["input_ids"]


# --- the cache --------------------------------------------------------------------------------------------------

def test_second_run_is_a_cache_hit(tiny_tokenizer_dir, tiny_beir, isolated_cache):
    first = prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir))
    second = prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir))
    assert first.reused == {"corpus": False, "queries": False} and second.all_reused
    assert second.corpus.path == first.corpus.path and second.queries.path == first.queries.path
    tables = [path.name.split("-")[0] for path in isolated_cache.iterdir() if path.name != FILE_HASHES]
    assert sorted(tables) == ["corpus", "queries"]


def test_another_split_reuses_the_corpus(tiny_tokenizer_dir, tiny_beir):
    train = prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir))
    test = prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir), dataset_split="test")
    assert test.reused == {"corpus": True, "queries": False} and test.corpus.path == train.corpus.path
    assert [row["query_id"] for row in test.queries.read().to_pylist()] == ["q3"]


@pytest.mark.parametrize("change, rebuilt", [
    ({"query_max_len": 8}, {"queries"}),
    ({"query_prefix": "q: "}, {"queries"}),
    ({"passage_max_len": 16}, {"corpus", "queries"}),
    ({"passage_prefix": "p: "}, {"corpus", "queries"}),
    ({"title_separator": " | "}, {"corpus", "queries"}),
    ({"num_negatives": 2}, {"queries"}),
    ({"seed": 1}, {"queries"}),
])
def test_any_setting_that_shapes_a_table_rebuilds_it(tiny_tokenizer_dir, tiny_beir, change, rebuilt):
    prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir))
    again = prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir), **change)
    assert {kind for kind, reused in again.reused.items() if not reused} == rebuilt


def test_changed_content_or_tokenizer_rebuilds(tiny_tokenizer_dir, tiny_beir, tmp_path):
    prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir))
    qrels = tiny_beir / "qrels" / "train.tsv"
    qrels.write_text(qrels.read_text() + "q1\td5\t1\n")
    assert prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir)).reused == {"corpus": True, "queries": False}
    other_tokenizer = write_tiny_tokenizer(tmp_path / "other-tokenizer")
    config = other_tokenizer / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"do_lower_case": true', '"do_lower_case": false'))
    assert prepare(other_tokenizer, dataset_path=str(tiny_beir)).reused == {"corpus": False, "queries": False}


# --- bad input leaves nothing behind ------------------------------------------------------------------------

def test_malformed_training_file_fails_with_lines_and_writes_nothing(tiny_tokenizer_dir, tmp_path):
    cache = tmp_path / "new" / "cache"
    good = group("q1", "what", [passage("d1", "x")], [passage("d2", "y")])
    path = write_jsonl(tmp_path / "train.jsonl", [
        good, good, '{"query_id": "q3", "query": "broken" "positive_passages": []}', good,
        group("q5", "no positives", [], [passage("d2", "y")])])
    with pytest.raises(DataError) as error:
        prepare(tiny_tokenizer_dir, dataset_path=str(path), dataset_cache_dir=str(cache))
    text = str(error.value)
    assert f"{path}:3: invalid JSON" in text
    assert f"{path}:5: field 'positive_passages': the group has no positive passage" in text
    assert not (tmp_path / "new").exists()


def test_unknown_ids_in_qrels_are_located(tiny_tokenizer_dir, tiny_beir, isolated_cache):
    (tiny_beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tmissing-doc\t1\nq9\td1\t1\n")
    with pytest.raises(DataError) as error:
        prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir))
    assert "train.tsv:2: field 'corpus-id': docid 'missing-doc' is not in the corpus" in str(error.value)
    assert "train.tsv:3: field 'query-id': query id 'q9' is not in" in str(error.value)
    assert not isolated_cache.exists()


def test_a_failure_after_the_first_table_was_built_leaves_nothing(tiny_tokenizer_dir, tiny_beir, isolated_cache,
                                                                  monkeypatch):
    import raytev.data.prepare as stage

    def crash(*args, **kwargs):
        assert any(path.name.startswith(".corpus-") and (path / "manifest.json").is_file()
                   for path in isolated_cache.iterdir()), "the corpus table should be built by now"
        raise RuntimeError("disk full")

    monkeypatch.setattr(stage, "write_queries_table", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir))
    assert not isolated_cache.exists()


def test_duplicate_docids_name_both_lines(tiny_tokenizer_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"docid": "a", "text": "x"}, {"docid": "b", "text": "y"},
                                                     {"docid": "a", "text": "z"}])
    with pytest.raises(DataError, match=r"field 'docid': docid 'a' appears again \(first on line 1\)"):
        prepare(tiny_tokenizer_dir, dataset_path=str(corpus))


def test_unknown_run_docids_are_located(tiny_tokenizer_dir, tiny_beir, tmp_path):
    run = tmp_path / "run.txt"
    run.write_text("q0\td5\t2\nq0\tnowhere\t1\n")
    with pytest.raises(DataError, match=r"run\.txt:2: field 'docid': docid 'nowhere' is not in the corpus"):
        prepare(tiny_tokenizer_dir, dataset_path=str(tiny_beir), negatives_run=str(run))


def test_missing_tokenizer_is_explained(tiny_beir):
    with pytest.raises(RaytevError, match="missing required flag:\n  --model_name_or_path"):
        make_config(PrepareConfig, dataset_path=str(tiny_beir))
    with pytest.raises(RaytevError, match="(?s)could not be fetched.*Offline, pass a local model folder"):
        prepare_stage(make_config(PrepareConfig, dataset_path=str(tiny_beir), model_name_or_path="org/unknown"))


# --- validate ------------------------------------------------------------------------------------------------

def test_validate_counts_without_writing(tiny_beir, isolated_cache):
    report = validate_data(DataSection(dataset_path=str(tiny_beir), num_negatives=3))
    assert (report.passages, report.queries, report.positives, report.negatives) == (12, 2, 3, 6)
    assert not isolated_cache.exists()
