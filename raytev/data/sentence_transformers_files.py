"""The sentence-transformers files of a raytev model folder, so `SentenceTransformer(folder)` gives raytev's vectors.

What they say is what raytev_model.json says, in sentence-transformers' words: modules.json (Transformer, Pooling,
Normalize when normalized), 1_Pooling/config.json, config_sentence_transformers.json (prompts, similarity) and
sentence_bert_config.json (max_seq_length). raytev's own reader (`sentence_transformers_defaults`,
`model_max_seq_length` in raytev/data/model_folder.py) gives the same settings back. No torch here.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from raytev.data.model_folder import DenseModelSettings
from raytev.staging import staged_directory, write_json_file

MODULES_FILE = "modules.json"
MODEL_CONFIG_FILE = "config_sentence_transformers.json"
TRANSFORMER_CONFIG_FILE = "sentence_bert_config.json"
POOLING_DIR, NORMALIZE_DIR = "1_Pooling", "2_Normalize"
# Every top-level entry this module may write (an export removes stale ones).
WRITTEN_ENTRIES = (MODULES_FILE, MODEL_CONFIG_FILE, TRANSFORMER_CONFIG_FILE, POOLING_DIR, NORMALIZE_DIR)
# Our pooling names -> sentence-transformers' pooling_mode values.
POOLING_MODES = {"cls": "cls", "mean": "mean", "last": "lasttoken"}
# The module paths every sentence-transformers from 3.0 to 6.2 imports (6.x maps them to its new modules without a
# warning); 6.x's own paths (sentence_transformers.base.modules...) would not load in 3.x-5.x, and moved in 6.0.
MODULE_TYPES = {"Transformer": "sentence_transformers.models.Transformer",
                "Pooling": "sentence_transformers.models.Pooling",
                "Normalize": "sentence_transformers.models.Normalize"}
# The release whose file format this is (similarity_fn_name came in 3.0). sentence-transformers warns when a folder
# names a newer version than the installed one; naming the installed 6.x would warn every 3.x-5.x user for nothing.
FORMAT_VERSION = "3.0.0"


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
    versions = {"sentence_transformers": FORMAT_VERSION}
    for key, package in (("transformers", "transformers"), ("pytorch", "torch")):
        try:
            versions[key] = version(package)
        except PackageNotFoundError:
            pass
    return versions


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
