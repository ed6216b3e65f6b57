"""The corpus store the ingress returns texts from: the same answers as a dict of the corpus, built once per corpus
into the cache, complete or absent."""

from __future__ import annotations

import os
import random

import pytest
from helpers import write_jsonl

from raytev.serving import corpus_store as store_module
from raytev.data.reading import read_passages
from raytev.data.sources import RecordFiles
from raytev.errors import DataError, ProblemLog, RaytevError
from raytev.serving.corpus_store import CorpusStore, corpus_files, corpus_store

# Multi-byte UTF-8 (2, 3 and 4 bytes), upper and lower case, digits, punctuation: byte order != naive expectations.
ALPHABET = ["a", "B", "z", "Z", "0", "~", "-", "é", "ß", "ÿ", "Ā", "日本", "😀"]


def as_dict(path) -> dict[str, tuple[str, str]]:
    """What the ingress held before the store: docid -> (title, text), filled in reading order."""
    problems = ProblemLog()
    passages = read_passages(RecordFiles("corpus", (path,)), problems)
    problems.raise_if_any()
    return {docid: (passage.title, passage.text) for docid, passage in passages.items()}


def test_the_store_answers_what_a_dict_of_the_corpus_answered(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "BATCH_ROWS", 7)  # small batches: lookups and the build cross many of them
    monkeypatch.setattr(store_module, "KEY_STRIDE", 3)  # blocks of 3 rows, a short one at each batch's end
    rng = random.Random(0)
    records = []
    for number in range(400):  # ~300 distinct docids: many given twice or more, the last record must win
        docid = "d" + "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 3)))
        record = {"docid": docid, "text": f"text {number} of {docid} ✓"}
        if number % 3:
            record["title"] = f"títle {number}"
        records.append(record)
    records.append({"_id": "beir-id", "title": "T", "text": "BEIR's field name"})
    path = write_jsonl(tmp_path / "corpus.jsonl", records)
    expected = as_dict(path)
    assert len(expected) < len(records)  # duplicates are there

    store = corpus_store(str(path), tmp_path / "cache")
    assert len(store) == len(expected)
    assert store.passages(list(expected)) == list(expected.values())
    missing = ["", "d", "D", "dé", "d😀😀😀😀", "beir", "beir-id ", "\x00", "zzz", "日本"]
    missing = [docid for docid in missing if docid not in expected]
    assert store.passages(missing) == [(None, None)] * len(missing)
    # Shuffled, repeated, mixed with missing ones: each answer in its place.
    asked = list(expected) * 2 + missing
    rng.shuffle(asked)
    assert store.passages(asked) == [expected.get(docid, (None, None)) for docid in asked]


def test_the_store_is_built_once_per_corpus_complete_or_absent(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"docid": "d1", "title": "T", "text": "a cat"},
                                                   {"_id": "d2", "text": "a dog"}])
    cache = tmp_path / "cache"
    first = corpus_store(str(path), cache)
    assert first.passages(["d1", "d2", "d3"]) == [("T", "a cat"), ("", "a dog"), (None, None)]
    assert sorted(entry.name for entry in cache.iterdir()) == [first.path.name]  # no scratch or temporary left

    def no_second_build(*_):
        raise AssertionError("built again")

    monkeypatch.setattr(store_module, "build_store", no_second_build)
    assert corpus_store(str(path), cache).path == first.path  # reused
    monkeypatch.undo()
    # Another corpus file (a changed one: other size and time) gets its own store.
    write_jsonl(path, [{"docid": "d1", "text": "a changed cat"}])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    changed = corpus_store(str(path), cache)
    assert changed.path != first.path and changed.passages(["d1", "d2"]) == [("", "a changed cat"), (None, None)]
    # A corpus with bad records leaves nothing behind.
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"docid": "d1", "text": "fine"}, {"docid": "d2"}])
    with pytest.raises(DataError, match="bad.jsonl:2"):
        corpus_store(str(bad), cache)
    assert sorted(entry.name for entry in cache.iterdir()) == sorted([first.path.name, changed.path.name])


def test_corpus_names_and_an_empty_corpus(tmp_path):
    assert len(corpus_store("scifact", tmp_path / "cache")) == 5183
    with pytest.raises(RaytevError, match="file not found"):
        corpus_files(str(tmp_path / "missing.jsonl"))
    (tmp_path / "not-beir").mkdir()
    with pytest.raises(RaytevError, match="not a BEIR one"):
        corpus_files(str(tmp_path / "not-beir"))
    empty = corpus_store(str(write_jsonl(tmp_path / "empty.jsonl", [])), tmp_path / "cache")
    assert len(empty) == 0 and empty.passages(["d1"]) == [(None, None)]
    assert len(CorpusStore(empty.path)) == 0


def test_lookups_read_the_file_without_mapping_it(tmp_path):
    # A mapping would put every page-cache folio a lookup touches into the reader's RSS (DEVELOPERS.md).
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"docid": f"d{i:05d}", "title": f"t{i}", "text": "x" * (i % 300)}
                                                   for i in range(3000)])
    store = corpus_store(str(path), tmp_path / "cache")
    asked = [f"d{i:05d}" for i in random.Random(1).sample(range(4000), 1500)]
    answers = store.passages(asked)
    assert answers == [(f"t{int(d[1:])}", "x" * (int(d[1:]) % 300)) if int(d[1:]) < 3000 else (None, None)
                       for d in asked]
    maps = open("/proc/self/maps").read()
    assert str(store.path) not in maps and store.path.name not in maps
