"""One config per stage: the registry, flags checked in one place, the JSON form and the generated Python API."""

from __future__ import annotations

import inspect

import pytest

import raytev
from raytev.config.fields import flag_fields, from_flags, non_default_flags, to_flags
from raytev.config.flags import build_parser
from raytev.config.stages import STAGES, EncodeConfig, PipelineConfig, ServeConfig, TrainConfig
from raytev.errors import RaytevError


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.api)
def test_every_stage_has_unique_flags_a_parser_an_api_function_and_a_runner(stage):
    flags = flag_fields(stage.config)  # raises on a flag declared twice
    parser = build_parser(stage.config, f"raytev {stage.command}", stage.help)
    assert {action.dest for action in parser._actions if action.dest != "help"} == set(flags)
    function = getattr(raytev, stage.api)
    assert set(inspect.signature(function).parameters) == set(flags)
    assert callable(stage.function())  # the module and function it names exist


def test_required_flags_are_reported_together_with_their_help():
    with pytest.raises(RaytevError) as missing:
        from_flags(EncodeConfig, {}, "raytev encode")
    message = str(missing.value)
    assert "missing required flags" in message and "--encode_output_path: Folder of embedding shards" in message
    assert "--model_name_or_path: Model folder or Hugging Face name" in message


def test_values_are_checked_once_for_every_way_in():
    with pytest.raises(RaytevError, match="num_workers must be a whole number, got 'two'"):
        from_flags(TrainConfig, {"output_dir": "o", "model_name_or_path": "m", "num_workers": "two"}, "x")
    with pytest.raises(RaytevError, match="--num_workers must be 0 or more, got -1"):
        from_flags(TrainConfig, {"output_dir": "o", "model_name_or_path": "m", "num_workers": -1}, "x")
    with pytest.raises(RaytevError, match="--pooling must be one of cls, mean, last, eos, got 'max'"):
        from_flags(TrainConfig, {"output_dir": "o", "model_name_or_path": "m", "pooling": "max"}, "x")
    with pytest.raises(RaytevError, match="--fp16 and --bf16 exclude each other"):
        from_flags(TrainConfig, {"output_dir": "o", "model_name_or_path": "m", "fp16": True, "bf16": True}, "x")
    # Integers are numbers; None is accepted where a flag may be unset.
    config = from_flags(TrainConfig, {"output_dir": "o", "model_name_or_path": "m", "learning_rate": 1,
                                      "temperature": None}, "x")
    assert config.training.learning_rate == 1 and config.model.temperature is None


def test_v1_aliases_work_in_the_api_and_json_form_too():
    config = from_flags(TrainConfig, {"output_dir": "o", "model_name_or_path": "m", "train_n_passages": 4,
                                      "q_max_len": 16, "negatives_x_device": False}, "x")
    assert (config.training.train_group_size, config.text.query_max_len) == (4, 16)
    assert config.training.cross_worker_negatives is False


@pytest.mark.parametrize("config_class", [TrainConfig, PipelineConfig, ServeConfig], ids=lambda c: c.__name__)
def test_the_flat_flags_of_a_config_build_the_same_config(config_class):
    required = {"output_dir": "o", "model_name_or_path": "m", "index": "i"}
    flags = {name: value for name, value in required.items() if name in flag_fields(config_class)}
    config = from_flags(config_class, {**flags, "seed": 7} if "seed" in flag_fields(config_class) else flags, "x")
    assert from_flags(config_class, to_flags(config), "x") == config
    assert from_flags(config_class, non_default_flags(config), "x") == config
    assert set(non_default_flags(config)) == set(flags) | ({"seed"} if "seed" in flag_fields(config_class) else set())


def test_sections_are_shared_objects_of_one_kind_across_stages():
    train = from_flags(TrainConfig, {"output_dir": "o", "model_name_or_path": "m", "bf16": True}, "x")
    pipeline = PipelineConfig(output_dir="p", data=train.data, model=train.model, text=train.text,
                              training=train.training, precision=train.precision, cluster=train.cluster)
    assert pipeline.precision.dtype_name == "bfloat16" and pipeline.model is train.model


def test_a_substage_takes_the_sections_it_shares_and_its_own_fields():
    from raytev.config.fields import substage
    from raytev.config.sections import DataSection, InferenceSection, ModelSection
    from raytev.config.stages import DemoConfig

    pipeline = from_flags(PipelineConfig, {"output_dir": "p", "model_name_or_path": "m", "bf16": True,
                                           "num_workers": 3, "index_factory": "HNSW32"}, "x")
    train = substage(TrainConfig, pipeline, output_dir="t")
    assert train.output_dir == "t" and train.training is pipeline.training and train.precision is pipeline.precision
    assert (train.model, train.text, train.lora, train.cluster) == (pipeline.model, pipeline.text, pipeline.lora,
                                                                   pipeline.cluster)
    # Fields given win; sections the source lacks keep their defaults; plain fields are never copied.
    demo = from_flags(DemoConfig, {"num_actors": 2, "backend": "jax"}, "x")
    encode = substage(EncodeConfig, demo, encode_output_path="e", model=ModelSection(model_name_or_path="m2"))
    assert (encode.actors.num_actors, encode.backend.backend, encode.model.model_name_or_path) == (2, "jax", "m2")
    assert encode.inference == InferenceSection() and encode.data == DataSection()
    with pytest.raises(TypeError, match="output_dir"):  # the pipeline's output_dir is not the model's
        substage(TrainConfig, pipeline)
