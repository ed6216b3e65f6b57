"""The cross-encoder reranker: its grouped softmax loss against a hand computation, its folders in
sentence-transformers' CrossEncoder and transformers with the same scores (1e-4), a folder without a trained head
refused, and a head trained from a plain encoder."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import save_tiny_bert, tiny_tokenizer

from raytev.errors import RaytevError
from raytev.modeling.reranker import Reranker, grouped_softmax_loss

QUERIES = ["what is a cat", "what is a cat", "dog barks", "dog barks"]
PASSAGES = ["a cat is a small animal", "the dog barks", "the dog barks and barks", "a small cat"]


def tokenize_pairs(tokenizer, queries, passages, max_len):
    """The pairs as transformers tokenizes them (what CrossEncoder and Tevatron's reranker feed the model)."""
    return dict(tokenizer(queries, passages, truncation=True, max_length=max_len, padding=True, return_tensors="pt"))


def test_the_grouped_softmax_loss_equals_a_hand_computation():
    scores = torch.tensor([2.0, 0.5, -1.0, 0.3, 1.2, 0.0])  # two queries, groups of 3, the positive first
    by_hand = [-(group[0] - math.log(sum(math.exp(score) for score in group))) for group in
               ([2.0, 0.5, -1.0], [0.3, 1.2, 0.0])]
    assert grouped_softmax_loss(scores, 3).item() == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="groups of 4"):
        grouped_softmax_loss(scores, 4)


@pytest.fixture
def reranker_folder(tmp_path):
    encoder = save_tiny_bert(tmp_path / "encoder")
    reranker = Reranker.from_pretrained(str(encoder), trained=False)  # a new one-logit head on the encoder
    reranker.save_pretrained(tmp_path / "reranker", tokenizer=tiny_tokenizer())
    return tmp_path / "reranker"


def test_a_reranker_folder_scores_the_same_in_cross_encoder_and_transformers(reranker_folder):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    reranker = Reranker.from_pretrained(str(reranker_folder)).eval()
    pairs = tokenize_pairs(tiny_tokenizer(), QUERIES, PASSAGES, max_len=64)
    with torch.no_grad():
        ours = reranker(pairs)
        plain = AutoModelForSequenceClassification.from_pretrained(str(reranker_folder)).eval()(**pairs).logits[:, 0]
    theirs = CrossEncoder(str(reranker_folder), device="cpu").predict(list(zip(QUERIES, PASSAGES)),
                                                                     convert_to_tensor=True)
    assert ours.shape == (4,) and ours.std() > 0  # the random head tells pairs apart
    assert torch.allclose(ours, plain, atol=1e-5)
    assert torch.allclose(ours, theirs.float().cpu(), atol=1e-4)


def test_a_folder_without_a_classification_head_is_refused(tmp_path):
    encoder = save_tiny_bert(tmp_path / "encoder")
    with pytest.raises(RaytevError, match="no sequence-classification head with one label.*--task rerank"):
        Reranker.from_pretrained(str(encoder))


def test_training_steps_raise_the_positive_over_its_negatives(reranker_folder):
    reranker = Reranker.from_pretrained(str(reranker_folder)).train()
    pairs = tokenize_pairs(tiny_tokenizer(), QUERIES, PASSAGES, max_len=64)  # groups of 2, the positive first
    optimizer = torch.optim.AdamW(reranker.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = grouped_softmax_loss(reranker(pairs), group_size=2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2
