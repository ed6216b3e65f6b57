"""raytev_model.json: a dense model's pooling, normalization, temperature, tying, prompts and training lengths;
raytev_reranker.json: a cross-encoder's pair length and prompts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from raytev.config.sections import POOLING_CHOICES
from raytev.errors import RaytevError
from raytev.model.files import RERANKER_FILE, SETTINGS_FILE, read_model_json

POOLING_ALIASES = {"eos": "last"}  # Tevatron main calls last-token pooling eos
POOLING_METHODS = tuple(name for name in POOLING_CHOICES if name not in POOLING_ALIASES)


def check_pooling(method: str) -> str:
    """Return the pooling name if it is known (aliases as their canonical name); otherwise raise a RaytevError."""
    method = POOLING_ALIASES.get(method, method)
    if method not in POOLING_METHODS:
        raise RaytevError(
            f"unknown pooling '{method}': choose one of {', '.join(POOLING_METHODS)} "
            "('last' for decoder models such as Qwen or Mistral, 'mean' or 'cls' for BERT-like encoders)")
    return method


@dataclass(frozen=True)
class DenseModelSettings:
    """Pooling, normalization, temperature, encoder tying and text prefixes of a dense model."""

    pooling: str = "cls"
    normalize: bool = False
    temperature: float = 1.0
    untied: bool = False
    query_prefix: str = ""
    passage_prefix: str = ""
    # How the model was trained to read text: an export records its lengths (sentence-transformers' one length
    # cannot) and whether texts end with EOS.
    query_max_len: int | None = None
    passage_max_len: int | None = None
    append_eos_token: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "pooling", check_pooling(self.pooling))  # 'eos' is saved as 'last'
        if not self.temperature > 0:
            raise RaytevError(f"temperature must be above 0, got {self.temperature} (Tevatron uses 1.0, or "
                              "0.01-0.05 with normalized embeddings)")

    def save(self, directory: str | Path) -> None:
        """Write these settings as raytev_model.json in `directory`."""
        text = json.dumps(dataclasses.asdict(self), indent=2) + "\n"
        (Path(directory) / SETTINGS_FILE).write_text(text, encoding="utf-8")

    @classmethod
    def from_dict(cls, values: dict, source: str = SETTINGS_FILE) -> DenseModelSettings:
        """Settings from a parsed raytev_model.json; a RaytevError names any unknown key."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RaytevError(f"{source}: unknown setting(s) {', '.join(unknown)}; known ones are "
                              f"{', '.join(sorted(known))}")
        return cls(**values)


def read_saved_settings(path_or_name: str, cache_dir: str | None = None) -> DenseModelSettings | None:
    """The settings a raytev save left in the model folder, or None for any other model."""
    values = read_model_json(path_or_name, SETTINGS_FILE, cache_dir)
    if values is None:
        return None
    if not isinstance(values, dict):
        raise RaytevError(f"{path_or_name}/{SETTINGS_FILE} must hold a JSON object; fix or delete it")
    return DenseModelSettings.from_dict(values, f"{path_or_name}/{SETTINGS_FILE}")


@dataclass(frozen=True)
class RerankerSettings:
    """How a raytev-trained cross-encoder reads its pairs: their length, the prompts, a final EOS."""

    rerank_max_len: int
    query_prefix: str = ""
    passage_prefix: str = ""
    append_eos_token: bool = False

    def save(self, directory: str | Path) -> None:
        """Write these settings as raytev_reranker.json in `directory`."""
        text = json.dumps(dataclasses.asdict(self), indent=2) + "\n"
        (Path(directory) / RERANKER_FILE).write_text(text, encoding="utf-8")


def read_reranker_settings(path_or_name: str, cache_dir: str | None = None) -> RerankerSettings | None:
    """The settings a raytev reranker export left in its folder, or None for any other model."""
    values = read_model_json(path_or_name, RERANKER_FILE, cache_dir)
    if values is None:
        return None
    known = {field.name for field in dataclasses.fields(RerankerSettings)}
    if not isinstance(values, dict) or not set(values) <= known or "rerank_max_len" not in values:
        raise RaytevError(f"{path_or_name}/{RERANKER_FILE} must hold a JSON object with rerank_max_len (and "
                          f"optionally {', '.join(sorted(known - {'rerank_max_len'}))}); fix or delete it")
    return RerankerSettings(**values)
