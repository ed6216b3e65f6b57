"""How a dense model pools, scores and prefixes text; kept as raytev_model.json beside the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from raytev.errors import RaytevError
from raytev.modeling.model_files import read_model_json
from raytev.modeling.pooling import check_pooling
from raytev.modeling.sentence_transformers_config import sentence_transformers_defaults

SETTINGS_FILE = "raytev_model.json"


@dataclass(frozen=True)
class DenseModelSettings:
    """Pooling, normalization, temperature, encoder tying and text prefixes of a dense model."""

    pooling: str = "cls"
    normalize: bool = False
    temperature: float = 1.0
    untied: bool = False
    query_prefix: str = ""
    passage_prefix: str = ""

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if not self.temperature > 0:
            raise RaytevError(
                f"temperature must be above 0, got {self.temperature} (Tevatron uses 1.0, or 0.01-0.05 "
                "with normalized embeddings)"
            )

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
            raise RaytevError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; known ones are {', '.join(sorted(known))}"
            )
        return cls(**values)


def read_saved_settings(path_or_name: str, cache_dir: str | None = None) -> DenseModelSettings | None:
    """The settings a raytev save left in the model folder, or None for any other model."""
    values = read_model_json(path_or_name, SETTINGS_FILE, cache_dir)
    if values is None:
        return None
    if not isinstance(values, dict):
        raise RaytevError(f"{path_or_name}/{SETTINGS_FILE} must hold a JSON object; fix or delete it")
    return DenseModelSettings.from_dict(values, f"{path_or_name}/{SETTINGS_FILE}")


def resolve_settings(
    path_or_name: str,
    saved: DenseModelSettings | None,
    overrides: dict,
    cache_dir: str | None = None,
) -> DenseModelSettings:
    """Each setting from the caller (non-None), else the raytev save, else sentence-transformers, else default."""
    chosen = {name: value for name, value in overrides.items() if value is not None}
    if saved is not None:
        if saved.untied and chosen.get("untied") is False:
            raise RaytevError(
                f"'{path_or_name}' holds separate query and passage encoders, which cannot be tied again: "
                "leave untied unset (or true) for this model"
            )
        return dataclasses.replace(saved, **chosen)
    implied = sentence_transformers_defaults(path_or_name, cache_dir, need_pooling="pooling" not in chosen)
    return DenseModelSettings(**{**implied, **chosen})
