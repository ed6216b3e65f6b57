"""Find one small file of a model given as a local folder or a Hugging Face name."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers.utils import cached_file

from raytev.errors import RaytevError


def looks_like_local_path(path_or_name: str) -> bool:
    """True when the string can only mean a folder on disk (absolute, ./, ../, ~ or an existing path)."""
    return (
        os.path.isabs(path_or_name)
        or path_or_name.startswith((".", "~"))
        or os.path.exists(path_or_name)
    )


def check_model_source(path_or_name: str) -> None:
    """Raise a RaytevError when a local-looking model path is not an existing folder."""
    if looks_like_local_path(path_or_name) and not os.path.isdir(os.path.expanduser(path_or_name)):
        raise RaytevError(
            f"model folder '{path_or_name}' does not exist (or is not a folder): "
            "give the folder that holds config.json, or a Hugging Face model name"
        )


def find_model_file(path_or_name: str, filename: str, cache_dir: str | None = None) -> Path | None:
    """The local path of `filename` in the model folder or hub repo, or None when it has none."""
    local = Path(os.path.expanduser(path_or_name))
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    # Hub names go through transformers' cache; a missing file or no network means "not there".
    found = cached_file(
        path_or_name,
        filename,
        cache_dir=cache_dir,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
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
