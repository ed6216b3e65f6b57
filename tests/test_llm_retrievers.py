"""LLM retrievers on tiny random decoders: LoRA, gradient checkpointing, accumulation, FSDP2 against DDP, EOS and
left padding, adapters at encode time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing
from helpers import free_port, resolved, save_tiny_bert, save_tiny_decoder, tiny_tokenizer
from llm_helpers import (
    GLOBAL_BATCH,
    MODEL_OPTIONS,
    SCENARIOS,
    build_model,
    gradient_worker,
    optimizer_worker,
    reference_gradients,
)
from modeling_helpers import assert_gradients_meaningful, gradients, max_gradient_difference, toy_batch

from raytev.config.sections import LoraSection
from raytev.data.tokenize import TextTokenizer
from raytev.errors import RaytevError
from raytev.modeling.adapters import add_lora
from raytev.modeling.dense import DenseModel
from raytev.modeling.training_step import grad_cache_step, micro_batches, plain_step
from raytev.training.torch_backend import TorchTrainState, build_optimizer, train_step


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny_decoder(tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def llama_dropout(tmp_path_factory):
    return save_tiny_decoder(tmp_path_factory.mktemp("llama_dropout") / "model", dropout=0.1)


# --- LoRA ---------------------------------------------------------------------------------------------------------

def test_lora_trains_only_the_adapters(llama):
    model = build_model(llama, lora=True)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    optimizer = build_optimizer(model, SimpleNamespace(weight_decay=0.0, learning_rate=1e-2))
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(trainable)  # adapter state only
    plain_step(model, toy_batch(**GLOBAL_BATCH))
    optimizer.step()
    for name, parameter in model.named_parameters():
        moved = (parameter.detach() - before[name]).abs().max().item()
        assert (moved > 0) == (name in trainable), name


def test_wrong_target_modules_say_which_layers_there_are(llama):
    model = DenseModel.from_pretrained(str(llama), **MODEL_OPTIONS)
    with pytest.raises(RaytevError, match="q_proj"):
        add_lora(model.query_encoder, LoraSection(lora=True, lora_target_modules="query,value"))


def test_a_saved_adapter_encodes_as_the_training_model_did(llama, tmp_path):
    model = build_model(llama, lora=True).eval()
    batch = toy_batch(**GLOBAL_BATCH)
    with torch.no_grad():
        expected = model.encode_query(batch["query_input_ids"], batch["query_attention_mask"])
    model.query_encoder.peft_config["default"].base_model_name_or_path = str(llama)
    model.save_pretrained(tmp_path / "adapter", tokenizer=tiny_tokenizer())
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the adapter alone, not a base copy

    for loaded_by in (resolved(tmp_path / "adapter"),  # the adapter folder alone names its base
                      resolved(llama, lora_name_or_path=str(tmp_path / "adapter"))):  # base + --lora_name_or_path
        assert loaded_by.settings.pooling == "last" and loaded_by.settings.normalize
        encoder = DenseModel.from_resolved(loaded_by).eval()  # merged into the weights, as Tevatron encodes
        assert not encoder.has_adapter
        with torch.no_grad():
            vectors = encoder.encode_query(batch["query_input_ids"], batch["query_attention_mask"])
        assert (vectors - expected).abs().max().item() <= 1e-5


def test_an_adapter_with_the_base_named_twice_is_refused(llama, tmp_path):
    model = build_model(llama, lora=True)
    model.query_encoder.peft_config["default"].base_model_name_or_path = str(llama)
    model.save_pretrained(tmp_path / "adapter")
    other = save_tiny_decoder(tmp_path / "other")
    with pytest.raises(RaytevError, match="is itself a LoRA adapter"):
        resolved(tmp_path / "adapter", lora_name_or_path=str(other))


# --- Gradient checkpointing and accumulation -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("grad_cache", [False, True], ids=["plain", "grad_cache"])
def test_gradient_checkpointing_gives_the_same_gradients(llama_dropout, tmp_path, kind, grad_cache):
    folder = llama_dropout if kind == "llama" else save_tiny_bert(tmp_path / "bert", dropout=0.1)
    options = MODEL_OPTIONS if kind == "llama" else dict(pooling="mean", normalize=True, temperature=0.1)
    batch = toy_batch(**GLOBAL_BATCH)
    results = []
    for checkpointing in (False, True):
        model = DenseModel.from_pretrained(str(folder), **options).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        torch.manual_seed(5)  # the same dropout masks in both runs; checkpointing must replay them
        if grad_cache:
            grad_cache_step(model, batch, q_chunk_size=2, p_chunk_size=5)
        else:
            plain_step(model, batch)
        results.append(gradients(model))
    assert_gradients_meaningful(results[0])
    assert max_gradient_difference(*results) <= 1e-5


def test_accumulation_averages_the_micro_batches_own_contrastive_gradients(llama):
    """k micro-batches: each scores its queries against its own passages; the step's gradient is the mean of the
    k micro-batch gradients (train_step's, with clipping off, against the written-out reference)."""
    batch = toy_batch(num_queries=6, group_size=3, seed=3)
    model = DenseModel.from_pretrained(str(llama), **MODEL_OPTIONS).train()
    for part in micro_batches(batch, 3):
        plain_step(model, part)
    reference = {name: grad / 3 for name, grad in gradients(model).items()}

    model = DenseModel.from_pretrained(str(llama), **MODEL_OPTIONS).train()
    captured = {}
    optimizer = SimpleNamespace(step=lambda: captured.update(gradients(model)), zero_grad=lambda set_to_none: None)
    scheduler = SimpleNamespace(step=lambda: None)
    plan = SimpleNamespace(training=SimpleNamespace(gradient_accumulation_steps=3, max_grad_norm=0),
                           config=SimpleNamespace(precision=SimpleNamespace(dtype_name=None)))
    state = TorchTrainState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))
    loss = train_step(state, batch, plain_step, plan)
    assert_gradients_meaningful(reference)
    assert max_gradient_difference(reference, captured) <= 1e-5  # float32 sums in another order
    whole_batch = DenseModel.from_pretrained(str(llama), **MODEL_OPTIONS).train()
    plain_step(whole_batch, batch)
    # Not the whole batch's gradient: fewer negatives per query (what the docs and the warning say).
    assert max_gradient_difference(gradients(whole_batch), captured) > 1e-4
    assert loss.item() > 0


def test_micro_batches_keep_each_query_with_its_passage_group():
    batch = toy_batch(num_queries=4, group_size=3, seed=1)
    parts = micro_batches(batch, 2)
    assert [len(part["query_input_ids"]) for part in parts] == [2, 2]
    assert torch.equal(parts[1]["passage_input_ids"], batch["passage_input_ids"][6:12])
    with pytest.raises(ValueError, match="equal micro-batches"):
        micro_batches(batch, 3)


# --- FSDP2 against DDP (two gloo processes) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sharded_runs(llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    torch.multiprocessing.spawn(gradient_worker, nprocs=2, args=(2, free_port(), llama, root, list(SCENARIOS)))
    return root


@pytest.mark.parametrize("name", ["ddp_plain", "fsdp_plain", "fsdp_grad_cache", "ddp_plain_lora",
                                  "fsdp_plain_lora"])
def test_sharded_gradients_equal_ddp_and_one_process(llama, sharded_runs, name):
    reference = reference_gradients(llama, lora=SCENARIOS[name][2])
    assert_gradients_meaningful(reference)
    worker = torch.load(sharded_runs / f"{name}.pt")
    norm = worker.pop("(total norm)")  # what gradient clipping sees, over every worker's shard
    assert max_gradient_difference(reference, worker) <= 1e-5
    whole = torch.cat([grad.flatten() for grad in reference.values()]).norm()
    assert abs(norm.item() - whole.item()) <= 1e-5 * whole.item()


@pytest.mark.parametrize("name", ["ddp_accumulate", "fsdp_accumulate"])
def test_accumulation_across_workers_matches_its_reference(llama, sharded_runs, name):
    reference = reference_gradients(llama, lora=False, accumulate=True)
    worker = torch.load(sharded_runs / f"{name}.pt")
    worker.pop("(total norm)")
    assert max_gradient_difference(reference, worker) <= 1e-5


def test_sharded_optimizer_state_resumes_on_another_worker_count(llama, sharded_runs):
    # The two workers of `sharded_runs` saved their shards after two steps; one worker reads them back.
    torch.multiprocessing.spawn(optimizer_worker, nprocs=1, args=(1, free_port(), llama, sharded_runs, "load"))
    saved, loaded = torch.load(sharded_runs / "save-2.pt"), torch.load(sharded_runs / "load-1.pt")
    assert saved.keys() == loaded.keys() and saved
    for name in saved:
        assert saved[name]["step"] == loaded[name]["step"] == 2
        for key in ("exp_avg", "exp_avg_sq"):
            assert saved[name][key].abs().max() > 0
            assert torch.equal(saved[name][key], loaded[name][key]), (name, key)


# --- EOS, left padding, prompts --------------------------------------------------------------------------------

def test_last_token_pooling_is_the_same_with_left_padding(llama):
    model = DenseModel.from_pretrained(str(llama), **MODEL_OPTIONS).eval()
    right, left = toy_batch(seed=4), toy_batch(seed=4, left_padding=True)
    with torch.no_grad():
        vectors = [model.encode_passage(batch["passage_input_ids"], batch["passage_attention_mask"])
                   for batch in (right, left)]
    # Rotary positions are relative: shifting a text right by its padding changes nothing but rounding.
    assert (vectors[0] - vectors[1]).abs().max().item() <= 1e-5


def test_eos_is_appended_once_and_eos_pooling_is_last(llama):
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "[SEP]"  # the tiny tokenizer ends every text with [SEP] already
    ids = TextTokenizer(tokenizer, max_len=8, prefix="query: ", append_eos=True)(["a cat", "what is a dog barks"])
    assert all(row[-1] == tokenizer.eos_token_id and row[-2] != tokenizer.eos_token_id for row in ids)
    assert all(len(row) <= 8 for row in ids)
    assert resolved(llama, pooling="eos").settings.pooling == "last"


def test_attention_kernel_and_weight_dtype_reach_the_loaded_model(llama):
    model = DenseModel.from_resolved(resolved(llama, attn_implementation="eager", torch_dtype="bfloat16"))
    assert model.query_encoder.config._attn_implementation == "eager"
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    assert resolved(llama, torch_dtype="bfloat16").dtype == "bfloat16"  # inference runs in it too


def test_llm_flags_are_refused_where_they_cannot_apply(llama, tmp_path):
    from helpers import make_config

    from raytev.config.stages import PipelineConfig, TrainConfig

    common = dict(model_name_or_path=str(llama), dataset_path="x.jsonl", output_dir=str(tmp_path))
    with pytest.raises(RaytevError, match="torch backend only"):
        make_config(TrainConfig, **common, backend="jax", lora=True)
    with pytest.raises(RaytevError, match="--num_workers 1 or more"):
        make_config(TrainConfig, **common, fsdp=True, num_workers=0)
    with pytest.raises(RaytevError, match="use --bf16"):
        make_config(TrainConfig, **common, fsdp=True, fp16=True)
    with pytest.raises(RaytevError, match="drop --untie_encoder"):
        make_config(TrainConfig, **common, lora=True, untie_encoder=True)
    with pytest.raises(RaytevError, match="needs --lora"):
        make_config(TrainConfig, **common, save_merged_model=True)
    assert make_config(PipelineConfig, **common, do_train=True, lora=True, lora_r=4).lora.lora_r == 4


def test_accumulation_is_warned_about(llama, tmp_path):
    from helpers import make_config

    from raytev.config.stages import TrainConfig
    from raytev.training.plan import training_warnings

    common = dict(model_name_or_path=str(llama), dataset_path="x.jsonl", output_dir=str(tmp_path))
    assert training_warnings(make_config(TrainConfig, **common)) == []
    warned = training_warnings(make_config(TrainConfig, **common, gradient_accumulation_steps=4, grad_cache=True))
    assert len(warned) == 1 and "fewer in-batch negatives" in warned[0] and "GradCache" in warned[0]


def test_a_saved_model_says_whether_texts_end_with_eos(llama, tmp_path):
    import shutil

    from raytev.model.settings import DenseModelSettings

    folder = shutil.copytree(llama, tmp_path / "model")
    DenseModelSettings(pooling="last", append_eos_token=True, query_max_len=20, passage_max_len=40).save(folder)
    model = resolved(folder)
    assert model.append_eos_token and (model.query_max_len, model.passage_max_len) == (20, 40)
    assert not resolved(folder, append_eos_token=False).append_eos_token  # a flag still wins
    assert not resolved(llama).append_eos_token
