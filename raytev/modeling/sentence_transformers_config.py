"""Read pooling, normalization and prompts from a sentence-transformers model folder."""

from __future__ import annotations

from raytev.errors import RaytevError
from raytev.modeling.model_files import read_model_json

# sentence-transformers' names (the legacy boolean keys and the newer "pooling_mode" values) -> ours.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SUPPORTED_MODES = {"cls": "cls", "mean": "mean", "lasttoken": "last"}


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
    if len(modes) != 1 or modes[0] not in SUPPORTED_MODES:
        raise RaytevError(
            f"'{path_or_name}' uses sentence-transformers pooling {modes or 'none'}, which raytev does not "
            "reproduce: pass a pooling (cls, mean or last) explicitly to train it with that pooling instead"
        )
    return SUPPORTED_MODES[modes[0]]


def sentence_transformers_defaults(
    path_or_name: str, cache_dir: str | None = None, need_pooling: bool = True
) -> dict:
    """Settings a sentence-transformers folder implies (pooling, normalize, prefixes); {} for other models."""
    modules = read_model_json(path_or_name, "modules.json", cache_dir)
    if not isinstance(modules, list):
        return {}
    defaults: dict = {"normalize": any(_module_kind(module) == "Normalize" for module in modules)}
    pooling_modules = [module for module in modules if _module_kind(module) == "Pooling"]
    if need_pooling and pooling_modules:
        pooling = _pooling_of(path_or_name, str(pooling_modules[0].get("path", "")), cache_dir)
        if pooling is not None:
            defaults["pooling"] = pooling
    prompts = (read_model_json(path_or_name, "config_sentence_transformers.json", cache_dir) or {}).get("prompts")
    if isinstance(prompts, dict):
        if "query" in prompts:
            defaults["query_prefix"] = prompts["query"]
        passage_prompt = prompts.get("document", prompts.get("passage"))
        if passage_prompt is not None:
            defaults["passage_prefix"] = passage_prompt
    return defaults
