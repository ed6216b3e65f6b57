"""The sentence-transformers files of a model folder, read and written: so that raytev takes a sentence-transformers
model's pooling, normalization, prompts and length as its own settings, and `SentenceTransformer(folder)` gives a
raytev model's vectors.

modules.json (Transformer, Pooling, Normalize when normalized), 1_Pooling/config.json, config_sentence_transformers.json
(prompts, similarity) and sentence_bert_config.json (max_seq_length). What the writer says is what the reader gives
back. No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path

from raytev.compat import installed_version
from raytev.errors import RaytevError
from raytev.model.files import read_model_json
from raytev.model.settings import DenseModelSettings
from raytev.staging import staged_directory, write_json_file

MODULES_FILE = "modules.json"
MODEL_CONFIG_FILE = "config_sentence_transformers.json"
TRANSFORMER_CONFIG_FILE = "sentence_bert_config.json"
POOLING_DIR, NORMALIZE_DIR = "1_Pooling", "2_Normalize"
# Every top-level entry this module may write (an export removes stale ones).
WRITTEN_ENTRIES = (MODULES_FILE, MODEL_CONFIG_FILE, TRANSFORMER_CONFIG_FILE, POOLING_DIR, NORMALIZE_DIR)
# Our pooling names -> sentence-transformers' pooling_mode values, and back (the modes raytev reproduces).
POOLING_MODES = {"cls": "cls", "mean": "mean", "last": "lasttoken"}
OUR_POOLING = {mode: ours for ours, mode in POOLING_MODES.items()}
# sentence-transformers' legacy boolean pooling keys -> its pooling_mode values.
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# The prompt names sentence-transformers' encode_document tries, in its order.
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
# The module paths every sentence-transformers from 3.0 to 6.2 imports (6.x maps them to its new modules without a
# warning); 6.x's own paths (sentence_transformers.base.modules...) would not load in 3.x-5.x, and moved in 6.0.
MODULE_TYPES = {"Transformer": "sentence_transformers.models.Transformer",
                "Pooling": "sentence_transformers.models.Pooling",
                "Normalize": "sentence_transformers.models.Normalize"}
# The release whose file format this is (similarity_fn_name came in 3.0). sentence-transformers warns when a folder
# names a newer version than the installed one; naming the installed 6.x would warn every 3.x-5.x user for nothing.
FORMAT_VERSION = "3.0.0"


# --- Reading ---------------------------------------------------------------------------------------------------

def _module_kind(module: dict) -> str:
    """The class name of a modules.json entry ('...modules.pooling.Pooling' -> 'Pooling')."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _pooling_modes(config: dict) -> list[str]:
    """The sentence-transformers pooling modes a Pooling config switches on, in either file format."""
    mode = config.get("pooling_mode")
    if mode is not None:
        return [mode] if isinstance(mode, str) else list(mode)
    return [name for key, name in LEGACY_POOLING_KEYS.items() if config.get(key)]


def _pooling_of(path_or_name: str, pooling_path: str, cache_dir: str | None) -> str | None:
    """Our pooling name for the model's Pooling module, or a RaytevError if we cannot reproduce it."""
    config = read_model_json(path_or_name, f"{pooling_path}/config.json".lstrip("/"), cache_dir)
    if config is None:
        return None
    modes = _pooling_modes(config)
    if len(modes) != 1 or modes[0] not in OUR_POOLING:
        raise RaytevError(
            f"'{path_or_name}' uses sentence-transformers pooling {modes or 'none'}, which raytev does not "
            "reproduce: pass a pooling (cls, mean or last) explicitly to train it with that pooling instead")
    if config.get("include_prompt") is False:
        raise RaytevError(f"'{path_or_name}' pools without its prompt's tokens (include_prompt: false), which "
                          "raytev does not reproduce: its vectors would differ from sentence-transformers'.")
    return OUR_POOLING[modes[0]]


def sentence_transformers_defaults(path_or_name: str, cache_dir: str | None = None,
                                   need_pooling: bool = True) -> dict:
    """Settings a sentence-transformers folder implies (pooling, normalize, prompts); {} for other models."""
    modules = read_model_json(path_or_name, MODULES_FILE, cache_dir)
    if not isinstance(modules, list):
        return {}
    defaults: dict = {"normalize": any(_module_kind(module) == "Normalize" for module in modules)}
    pooling_modules = [module for module in modules if _module_kind(module) == "Pooling"]
    if need_pooling and pooling_modules:
        pooling = _pooling_of(path_or_name, str(pooling_modules[0].get("path", "")), cache_dir)
        if pooling is not None:
            defaults["pooling"] = pooling
    prompts = (read_model_json(path_or_name, MODEL_CONFIG_FILE, cache_dir) or {}).get("prompts")
    if isinstance(prompts, dict):
        if prompts.get("query") is not None:
            defaults["query_prefix"] = prompts["query"]
        document = next((prompts[name] for name in DOCUMENT_PROMPT_NAMES if prompts.get(name) is not None), None)
        if document is not None:
            defaults["passage_prefix"] = document
    return defaults


def model_max_seq_length(path_or_name: str, cache_dir: str | None = None) -> int | None:
    """A sentence-transformers model's own max_seq_length (sentence_bert_config.json), or None."""
    try:
        return int((read_model_json(path_or_name, TRANSFORMER_CONFIG_FILE, cache_dir) or {})["max_seq_length"])
    except (KeyError, TypeError, ValueError):
        return None


# --- Writing ---------------------------------------------------------------------------------------------------

def _hidden_size(weights_dir: Path) -> int | None:
    """The hidden size in the weights' config.json (a multimodal model's text config's), or None."""
    config_path = weights_dir / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    size = config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size")
    return int(size) if size else None


def _library_versions() -> dict:
    """The version block sentence-transformers writes: its format's, and the installed transformers' and torch's."""
    installed = {key: installed_version(package) for key, package in (("transformers", "transformers"),
                                                                     ("pytorch", "torch"))}
    return {"sentence_transformers": FORMAT_VERSION, **{key: value for key, value in installed.items() if value}}


def write_sentence_transformers_files(directory: str | Path, settings: DenseModelSettings, max_seq_length: int,
                                      transformer_path: str = "") -> bool:
    """Write the sentence-transformers files of a tied raytev model into `directory`; False when none were written.

    Untied models get none: sentence-transformers cannot load raytev's query_model/ + passage_model/ layout (its
    Router would need its own files and weights layout). Nor does a folder without a config.json naming a hidden size
    (a LoRA adapter saved alone). `transformer_path` is where the weights are, relative to `directory`.

    sentence-transformers has one max_seq_length where raytev has a query and a passage length: give the passage
    length. Queries longer than raytev's query length are then truncated later by sentence-transformers than by
    raytev, and their vectors differ; shorter ones are the same. raytev's --append_eos_token has no
    sentence-transformers counterpart: the vectors agree when the tokenizer itself ends texts with EOS.
    """
    directory = Path(directory)
    hidden_size = _hidden_size(directory / transformer_path)
    if settings.untied or hidden_size is None:
        return False
    write_json_file(directory / transformer_path / TRANSFORMER_CONFIG_FILE,
                    {"max_seq_length": int(max_seq_length), "do_lower_case": False}, indent=2)
    with staged_directory(directory / POOLING_DIR) as pooling:
        # word_embedding_dimension: 3.x-5.x take only this name, 6.x renames it to embedding_dimension on load.
        # include_prompt: raytev pools over the prompt's tokens too.
        write_json_file(pooling / "config.json", {"word_embedding_dimension": hidden_size,
                                                  "pooling_mode": POOLING_MODES[settings.pooling],
                                                  "include_prompt": True}, indent=2)
    modules = [{"idx": 0, "name": "0", "path": transformer_path, "type": MODULE_TYPES["Transformer"]},
               {"idx": 1, "name": "1", "path": POOLING_DIR, "type": MODULE_TYPES["Pooling"]}]
    if settings.normalize:
        with staged_directory(directory / NORMALIZE_DIR) as normalize:
            write_json_file(normalize / "config.json", {"module_input_name": "sentence_embedding",
                                                        "module_output_name": "sentence_embedding"}, indent=2)
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": MODULE_TYPES["Normalize"]})
    write_json_file(directory / MODEL_CONFIG_FILE, {
        "__version__": _library_versions(),
        "model_type": "SentenceTransformer",
        "prompts": {"query": settings.query_prefix, "document": settings.passage_prefix},
        "default_prompt_name": None,
        # Normalized vectors: cosine is their dot product, which is what raytev scores with.
        "similarity_fn_name": "cosine" if settings.normalize else "dot",
    }, indent=2)
    # modules.json last: readers take a folder with it for a sentence-transformers model, so the rest must be there.
    write_json_file(directory / MODULES_FILE, modules, indent=2)
    return True
