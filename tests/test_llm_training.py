"""`raytev train` for LLM retrievers end to end on tiny random decoders: LoRA with checkpointing and accumulation
resumes exactly and exports an adapter (and a merged model), and FSDP on Ray Train resumes on another worker
count."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import resolved, save_tiny_decoder, toy_training_groups, write_jsonl
from safetensors.torch import load_file

import raytev
from raytev.encoding.embeddings import load_embeddings
from raytev.modeling.dense import DenseModel
from raytev.training.state import checkpoint_name

pytestmark = pytest.mark.slow

LLM = dict(train_group_size=3, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3,
           pooling="eos", append_eos_token=True, normalize=True, temperature=0.1, logging_steps=1,
           shuffle_buffer_size=0, lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
           lora_target_modules="q_proj,v_proj,down_proj", gradient_checkpointing=True)


@pytest.fixture
def llm_run(tmp_path):
    model = save_tiny_decoder(tmp_path / "model", kind="qwen2")
    data = write_jsonl(tmp_path / "train.jsonl", toy_training_groups(40))
    return {"model_name_or_path": str(model), "dataset_path": str(data), "output_dir": str(tmp_path / "out")}


def adapter_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_lora_resumes_exactly_and_exports_an_adapter_and_a_merged_model_that_encode(ray_session, llm_run, tmp_path):
    straight = raytev.train(**{**llm_run, "output_dir": str(tmp_path / "straight")}, **LLM, max_steps=6,
                            save_steps=3, num_workers=0, save_merged_model=True)
    assert straight.steps == 6
    raytev.train(**llm_run, **LLM, max_steps=6, save_steps=3, num_workers=0)
    out = tmp_path / "out"
    shutil.rmtree(out / "checkpoints" / checkpoint_name(6))  # as if stopped after step 3's checkpoint
    resumed = raytev.train(**llm_run, **LLM, max_steps=6, save_steps=3, num_workers=0)
    assert resumed.resumed_from == 3
    first, second = adapter_weights(tmp_path / "straight"), adapter_weights(out)
    assert first.keys() == second.keys() and first
    assert max((first[name] - second[name]).abs().max().item() for name in first) <= 1e-6
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == llm_run["model_name_or_path"]
    assert not (out / "model.safetensors").exists()  # the adapter only; the base stays where it was

    # The merged folder is a plain model that encodes as base + adapter does.
    merged_dir = tmp_path / "straight" / "merged"
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    vectors = []
    for folder in (tmp_path / "straight", merged_dir):
        model = resolved(folder)  # no text flags: the export says how it reads text
        assert model.settings.pooling == "last" and model.settings.normalize and model.append_eos_token
        with torch.no_grad():
            vectors.append(DenseModel.from_resolved(model).eval().encode_passage(ids, mask))
    assert (vectors[0] - vectors[1]).abs().max().item() <= 1e-5

    # `raytev encode` takes the adapter folder alone, or the base with --lora_name_or_path: the same vectors.
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"docid": f"d{i}", "text": f"a small cat {i}"} for i in range(6)])
    for name, flags in (("alone", {"model_name_or_path": str(out)}),
                        ("flag", {"model_name_or_path": llm_run["model_name_or_path"], "lora_name_or_path": str(out)})):
        raytev.encode(**flags, dataset_path=str(corpus), encode_output_path=str(tmp_path / name), num_actors=0,
                      passage_max_len=16)
    (ids_a, vectors_a), (ids_b, vectors_b) = (load_embeddings(str(tmp_path / name)) for name in ("alone", "flag"))
    assert list(ids_a) == list(ids_b) and abs(vectors_a - vectors_b).max() <= 1e-6
    assert abs((vectors_a ** 2).sum(axis=1) - 1).max() <= 1e-4  # the adapter folder's settings: normalized


def test_fsdp_on_ray_train_resumes_on_another_number_of_workers(ray_session, llm_run):
    options = {**LLM, "gradient_accumulation_steps": 1, "fsdp": True, "save_steps": 2, "cpus_per_worker": 0.5}
    del options["per_device_train_batch_size"]
    two = raytev.train(**llm_run, **options, per_device_train_batch_size=2, num_workers=2, max_steps=2)
    assert two.steps == 2
    # The same global batch (4 queries) on one worker: the sharded optimizer state is read back resharded.
    one = raytev.train(**llm_run, **options, per_device_train_batch_size=4, num_workers=1, max_steps=4)
    assert one.resumed_from == 2 and one.steps == 4
    losses = [entry["loss"] for entry in one.log if "loss" in entry]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)
