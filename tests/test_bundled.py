"""The bundled SciFact copy and the offline MiniLM: present, attributed, and prepared with the real counts."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from helpers import make_config

from raytev.config.stages import PrepareConfig
from raytev.bundled import bundled_dataset_names, bundled_dataset_path, bundled_minilm_path, resolve_model_path
from raytev.data.prepare import prepare

SCIFACT_CORPUS_SHA256 = "dec31c8182f3d744c7d2c09423756fd1d17cbef75808db13ba01cc0aab4d1ac6"


def test_scifact_is_bundled_with_its_license_and_intact():
    assert "scifact" in bundled_dataset_names()
    root = bundled_dataset_path("scifact")
    readme = (root / "README.md").read_text()
    assert "CC BY 4.0" in readme and "ODC-By" in readme
    assert hashlib.sha256(gzip.decompress((root / "corpus.jsonl.gz").read_bytes())).hexdigest() == \
        SCIFACT_CORPUS_SHA256
    assert bundled_dataset_path("msmarco") is None


def test_minilm_name_resolves_to_the_offline_copy():
    local = bundled_minilm_path()
    assert local is not None and (local / "tokenizer.json").is_file()
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == str(local)
    assert resolve_model_path("org/other-model") == "org/other-model"


@pytest.mark.slow
def test_scifact_train_prepares_with_the_published_counts():
    config = make_config(PrepareConfig, dataset_name="scifact", dataset_split="train",
                         model_name_or_path="sentence-transformers/all-MiniLM-L6-v2")
    first = prepare(config)
    assert first.corpus.rows == 5183
    assert first.queries.rows == 809 and first.queries.manifest["positives"] == 919
    # A sentence-transformers model's own max_seq_length (256) is the default length, as MTEB encodes.
    settings = first.queries.manifest["settings"]
    assert (settings["query_max_len"], settings["passage_max_len"]) == (256, 256)
    second = prepare(config)
    assert second.all_reused and second.seconds * 10 < first.seconds
