"""Every tied model raytev saves is a sentence-transformers folder: the same vectors, the same settings back, pushed
to the Hub on request."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from helpers import (
    TINY_VOCAB,
    make_config,
    resolved,
    tiny_bert,
    tiny_tokenizer,
    toy_training_groups,
    write_jsonl,
    write_tiny_tokenizer,
)

from raytev.config.stages import TrainConfig
from raytev.data.tokenize import TextTokenizer, pad_token_id
from raytev.encoding.batch_encoder import BatchEncoder
from raytev.errors import RaytevError
from raytev.model.resolved import resolve_folder
from raytev.model.sentence_transformers import (
    WRITTEN_ENTRIES,
    model_max_seq_length,
    sentence_transformers_defaults,
    write_sentence_transformers_files,
)
from raytev.model.settings import DenseModelSettings
from raytev.modeling.dense import DenseModel
from raytev.training.hub import push_model
from raytev.training.state import MODEL_DIR
from raytev.training.trainer import export_model, finish_export

MAX_SEQ_LENGTH = 16  # short enough that LONG is truncated: the length must reach sentence-transformers too
LONG = "the small dog barks and the cat " * 6
TEXTS = ["what is a cat", "a small animal", LONG, "dog", "the dog of the cat barks", "query passage animal"]
MEAN_PROMPTED = DenseModelSettings(pooling="mean", normalize=True, query_prefix="query: ", passage_prefix="passage: ")
CLS_PLAIN = DenseModelSettings(pooling="cls", normalize=False, query_prefix="q ", passage_prefix="")
LAST_TOKEN = DenseModelSettings(pooling="last", normalize=True, query_prefix="instruct: find ",
                                passage_prefix="")


def tiny_llama():
    """A 2-layer, 32-wide random Llama over TINY_VOCAB (a decoder, for last-token pooling)."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                  max_position_embeddings=128))


def save_model(folder: Path, encoder, settings: DenseModelSettings) -> Path:
    """Save a DenseModel over `encoder` with the tiny tokenizer and the sentence-transformers files."""
    DenseModel(encoder, settings=settings).save_pretrained(folder, tokenizer=tiny_tokenizer(),
                                                           max_seq_length=MAX_SEQ_LENGTH)
    return folder


def raytev_vectors(folder: Path, texts: list[str], is_query: bool) -> np.ndarray:
    """Vectors as `raytev encode` makes them: the folder resolved as a stage resolves it, its tokenization (prompt,
    length) and its BatchEncoder."""
    model = resolved(folder)
    tokenizer = model.load_tokenizer()
    tokenize = TextTokenizer.for_queries(model, tokenizer) if is_query else TextTokenizer.for_passages(model, tokenizer)
    encoder = BatchEncoder(model, is_query, "id", 4, pad_token_id(tokenizer))
    rows = np.arange(len(texts))
    return encoder({"row": rows, "id": rows, "input_ids": tokenize(texts)})["embedding"]


@pytest.mark.parametrize("encoder, settings", [(tiny_bert, MEAN_PROMPTED), (tiny_bert, CLS_PLAIN),
                                               (tiny_llama, LAST_TOKEN)], ids=["mean-normalized", "cls", "last-llama"])
def test_sentence_transformers_gives_raytevs_vectors(tmp_path, encoder, settings):
    from sentence_transformers import SentenceTransformer

    folder = save_model(tmp_path / "model", encoder(), settings)
    model = SentenceTransformer(str(folder), device="cpu")
    assert model.max_seq_length == MAX_SEQ_LENGTH
    assert model.similarity_fn_name == ("cosine" if settings.normalize else "dot")
    queries, documents = model.encode_query(TEXTS), model.encode_document(TEXTS)
    assert np.abs(queries - raytev_vectors(folder, TEXTS, is_query=True)).max() <= 1e-4
    assert np.abs(documents - raytev_vectors(folder, TEXTS, is_query=False)).max() <= 1e-4
    # Not equal by accident: the query prompt changes the vectors, and normalization is as set.
    assert np.abs(queries - model.encode(TEXTS)).max() > 1e-3
    assert np.allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5) == settings.normalize


@pytest.mark.parametrize("settings", [MEAN_PROMPTED, CLS_PLAIN, LAST_TOKEN], ids=["mean", "cls", "last"])
def test_raytev_reads_the_files_back_as_the_settings_they_were_written_from(tmp_path, settings):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32}))
    assert write_sentence_transformers_files(tmp_path, settings, 200)
    # No raytev_model.json here: the sentence-transformers files alone give the settings back.
    assert resolve_folder(str(tmp_path)).settings == settings
    assert sentence_transformers_defaults(str(tmp_path)) == {
        "pooling": settings.pooling, "normalize": settings.normalize, "query_prefix": settings.query_prefix,
        "passage_prefix": settings.passage_prefix}
    assert model_max_seq_length(str(tmp_path)) == 200
    assert json.loads((tmp_path / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 32
    assert (tmp_path / "2_Normalize").is_dir() == settings.normalize
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary left


def test_a_saved_folder_resolves_with_the_written_length_for_both_sides(tmp_path):
    folder = save_model(tmp_path / "model", tiny_bert(), MEAN_PROMPTED)
    model = resolved(folder)
    assert (model.query_max_len, model.passage_max_len) == (MAX_SEQ_LENGTH, MAX_SEQ_LENGTH)
    assert model.settings == MEAN_PROMPTED


def test_untied_models_and_folders_without_a_model_config_get_no_files(tmp_path):
    untied = DenseModelSettings(pooling="mean", normalize=True, untied=True)
    folder = tmp_path / "untied"
    DenseModel(tiny_bert(), settings=untied).save_pretrained(folder, max_seq_length=MAX_SEQ_LENGTH)
    assert (folder / "query_model").is_dir()
    assert not [name for name in WRITTEN_ENTRIES if (folder / name).exists()]
    # A folder with no config.json (a LoRA adapter saved alone) cannot name its embedding size: nothing written.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert write_sentence_transformers_files(adapter, MEAN_PROMPTED, MAX_SEQ_LENGTH) is False
    assert list(adapter.iterdir()) == []


def fake_checkpoint(root: Path, settings: DenseModelSettings) -> Path:
    """A checkpoint folder as the training loop writes one: the DenseModel saved under model/, no ST files."""
    DenseModel(tiny_bert(), settings=settings).save_pretrained(root / MODEL_DIR)
    assert not (root / MODEL_DIR / "modules.json").exists()
    return root


def test_an_export_is_a_sentence_transformers_folder_and_drops_stale_files(tmp_path):
    from sentence_transformers import SentenceTransformer

    tokenizer = write_tiny_tokenizer(tmp_path / "tokenizer")
    out = tmp_path / "out"
    checkpoint = fake_checkpoint(tmp_path / "tied", MEAN_PROMPTED)
    export_model(checkpoint, out, tokenizer, [{"step": 1, "loss": 1.0}], {"output_dir": str(out)},
                 dataclasses.replace(MEAN_PROMPTED, query_max_len=12, passage_max_len=24))
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                 "1_Pooling/config.json", "2_Normalize", "raytev_model.json", "tokenizer_config.json"):
        assert (out / name).exists(), name
    assert model_max_seq_length(str(out)) == 24  # the passage length handed in
    again = resolved(out)  # raytev uses the export with the lengths it was trained with, not ST's single one
    assert (again.query_max_len, again.passage_max_len) == (12, 24)
    model = SentenceTransformer(str(out), device="cpu")
    assert model.prompts["query"] == "query: " and model.prompts["document"] == "passage: "
    dense = DenseModel.from_pretrained(str(out)).eval()
    ids = torch.tensor(tiny_tokenizer()(["passage: the dog barks"])["input_ids"])
    with torch.no_grad():
        expected = dense.encode_passage(ids, torch.ones_like(ids)).numpy()
    assert np.abs(model.encode_document(["the dog barks"]) - expected).max() <= 1e-4
    # Exported again untied into the same folder: sentence-transformers' files of the earlier export go too.
    untied = DenseModelSettings(pooling="mean", normalize=True, untied=True)
    export_model(fake_checkpoint(tmp_path / "untied", untied), out, tokenizer, [], {},
                 dataclasses.replace(untied, passage_max_len=24))
    assert (out / "query_model").is_dir() and not (out / "config.json").exists()
    assert not [name for name in WRITTEN_ENTRIES if (out / name).exists()]


class FakeHubApi:
    """Stands in for huggingface_hub.HfApi: records the calls, fails where told to, never touches the network."""

    calls: ClassVar[list] = []
    fail_on: str | None = None

    def create_repo(self, repo_id, private=None, exist_ok=False):
        FakeHubApi.calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok}))
        if FakeHubApi.fail_on == "create_repo":
            raise PermissionError("401 Unauthorized: invalid token")
        return f"https://huggingface.co/someone/{repo_id}"

    def upload_folder(self, folder_path, repo_id, ignore_patterns=None):
        FakeHubApi.calls.append(("upload_folder", repo_id, {"folder_path": folder_path,
                                                           "ignore_patterns": ignore_patterns}))
        if FakeHubApi.fail_on == "upload_folder":
            raise ConnectionError("connection reset")


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHubApi)
    FakeHubApi.calls, FakeHubApi.fail_on = [], None
    return FakeHubApi


def a_trained_output_dir(root: Path) -> Path:
    """An output_dir after an export: the model's files, a checkpoints/ folder, a hidden staging leftover."""
    out = root / "minilm-scifact"
    for name in ("config.json", "raytev_model.json", "1_Pooling/config.json",
                 "checkpoints/checkpoint_step_00000002/model/config.json", ".export-1a2b3c4d/config.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("{}")
    return out


def test_pushing_uploads_the_model_but_not_checkpoints_or_hidden_files(tmp_path, fake_hub):
    from huggingface_hub.utils import filter_repo_objects

    out = a_trained_output_dir(tmp_path)
    config = make_config(TrainConfig, model_name_or_path="m", output_dir=str(out), push_to_hub=True,
                         hub_private_repo=True)
    url = finish_export(config, out, out / "checkpoints", str(out), "checkpoints")
    assert url == "https://huggingface.co/someone/minilm-scifact"  # the repo is named after the folder by default
    (create, repo_id, options), (upload, upload_repo, upload_options) = fake_hub.calls
    assert (create, repo_id, options) == ("create_repo", "minilm-scifact", {"private": True, "exist_ok": True})
    assert (upload, upload_repo, upload_options["folder_path"]) == ("upload_folder", "minilm-scifact", str(out))
    assert upload_options["ignore_patterns"] == ["checkpoints/**", ".*"]
    # What huggingface_hub uploads with those patterns: the model, not the checkpoints nor the staging leftover.
    files = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    kept = list(filter_repo_objects(files, ignore_patterns=upload_options["ignore_patterns"]))
    assert kept == ["1_Pooling/config.json", "config.json", "raytev_model.json"]
    assert (out / "checkpoints").is_dir()  # kept without --remove_checkpoints


def test_remove_checkpoints_leaves_only_the_model_and_a_named_repo_is_used(tmp_path, fake_hub):
    out = a_trained_output_dir(tmp_path)
    config = make_config(TrainConfig, model_name_or_path="m", output_dir=str(out), push_to_hub=True,
                         hub_model_id="my-org/scifact-retriever", remove_checkpoints=True)
    finish_export(config, out, out / "checkpoints", str(out), "checkpoints")
    assert not (out / "checkpoints").exists() and (out / "raytev_model.json").exists()
    assert [call[1] for call in fake_hub.calls] == ["my-org/scifact-retriever"] * 2
    assert fake_hub.calls[0][2]["private"] is None  # the Hub's default visibility unless asked


def test_no_push_without_the_flag(tmp_path, fake_hub):
    out = a_trained_output_dir(tmp_path)
    assert finish_export(make_config(TrainConfig, model_name_or_path="m", output_dir=str(out)), out,
                         out / "checkpoints", str(out), "checkpoints") is None
    assert fake_hub.calls == [] and (out / "checkpoints").is_dir()


@pytest.mark.parametrize("step, said", [("create_repo", "creating the Hub repo 'minilm-scifact'"),
                                        ("upload_folder", "uploading .* to the Hub repo 'minilm-scifact'")])
def test_a_failed_push_says_what_failed_and_that_the_model_is_safe(tmp_path, fake_hub, step, said):
    out = a_trained_output_dir(tmp_path)
    fake_hub.fail_on = step
    with pytest.raises(RaytevError, match=said) as caught:
        push_model(out, keep_local=("checkpoints/**",))
    assert f"safe at {out}" in str(caught.value) and "hf upload minilm-scifact" in str(caught.value)
    assert (out / "config.json").exists()


@pytest.mark.slow
def test_a_trained_minilm_folder_gives_raytevs_vectors_in_sentence_transformers(ray_session, tmp_path):
    """Train the real MiniLM two steps with prompts, then encode with raytev and with SentenceTransformer(folder)."""
    from sentence_transformers import SentenceTransformer

    import raytev
    from raytev.bundled import resolve_model_path
    from raytev.encoding.embeddings import load_embeddings

    out = tmp_path / "minilm"
    raytev.train(model_name_or_path="sentence-transformers/all-MiniLM-L6-v2", output_dir=str(out),
                 dataset_path=str(write_jsonl(tmp_path / "train.jsonl", toy_training_groups(8))),
                 query_prefix="query: ", passage_prefix="passage: ", temperature=0.05, query_max_len=24,
                 passage_max_len=48, train_group_size=2, per_device_train_batch_size=4, max_steps=2, num_workers=0,
                 learning_rate=1e-3)
    queries = ["what is a small dog", "which animal barks"]
    passages = ["the dog barks at the small cat", "a cat is a small animal, and it does not bark"]
    write_jsonl(tmp_path / "queries.jsonl", [{"query_id": f"q{i}", "query": text} for i, text in enumerate(queries)])
    write_jsonl(tmp_path / "corpus.jsonl", [{"docid": f"d{i}", "text": text} for i, text in enumerate(passages)])
    ours = {}
    for kind in ("queries", "corpus"):
        raytev.encode(model_name_or_path=str(out), dataset_path=str(tmp_path / f"{kind}.jsonl"),
                      encode_output_path=str(tmp_path / f"{kind}-emb"), encode_is_query=kind == "queries",
                      num_actors=0)
        ours[kind] = load_embeddings(str(tmp_path / f"{kind}-emb"))[1]
    model = SentenceTransformer(str(out), device="cpu")
    assert np.abs(model.encode_query(queries) - ours["queries"]).max() <= 1e-4
    assert np.abs(model.encode_document(passages) - ours["corpus"]).max() <= 1e-4
    # Not vacuous: the prompts matter, and training moved the model away from the stock MiniLM.
    assert np.abs(model.encode(queries) - ours["queries"]).max() > 1e-3
    stock = SentenceTransformer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    assert np.abs(stock.encode(["query: " + text for text in queries]) - ours["queries"]).max() > 1e-3
