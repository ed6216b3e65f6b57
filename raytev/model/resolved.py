"""A model made ready where a stage starts: the folder's own settings and the flags resolved once into a
ResolvedModel, which every layer below takes as it is (tokenization, the token cache's key, encoding, training
and serving read the same prompts, lengths and layout, and no loader reads the folder's settings again).

A flag given explicitly wins; otherwise the model's own setting applies (raytev_model.json, else a
sentence-transformers folder's); otherwise Tevatron's default. No torch here; transformers only for hub models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from raytev.bundled import resolve_model_path
from raytev.config.sections import ModelSection, TextSection
from raytev.errors import RaytevError
from raytev.model.files import (
    QUERY_SUBFOLDER,
    base_model_reference,
    check_model_source,
    find_model_file,
    read_model_json,
    split_adapter,
    tokenizer_dir,
)
from raytev.model.sentence_transformers import model_max_seq_length, sentence_transformers_defaults
from raytev.model.settings import DenseModelSettings, read_reranker_settings, read_saved_settings

DEFAULT_QUERY_MAX_LEN, DEFAULT_PASSAGE_MAX_LEN = 32, 128  # Tevatron's
DEFAULT_RERANK_MAX_LEN = 512  # Tevatron's reranker


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are and in which layout, how it reads text and pools, its weights' dtype.

    Picklable: stages hand it to Ray actors and Train workers, which load the weights from `path`.
    """

    name: str  # as the user gave it (runs, manifests and the service name the model so)
    path: str  # a local folder, or a hub name
    settings: DenseModelSettings
    tokenizer_dir: Path | None  # None: resolved for its weights only (resolve_folder)
    query_max_len: int
    passage_max_len: int
    append_eos_token: bool = False
    dtype: str | None = None  # weights at inference: "bfloat16", "float16" or None (float32)
    cache_dir: str | None = None
    adapter: str | None = None  # a LoRA adapter on top of `path` (folder or hub name)
    base_reference: str | None = None  # how a newly trained adapter names its base model
    attn_implementation: str | None = None
    torch_dtype: str | None = None  # dtype the weights load in (None: float32)
    separate_encoders: bool = False  # `path` is an untied raytev save: query_model/ and passage_model/
    pair_segments: bool = False  # a cross-encoder's: texts are tokenized bare (raytev.data.pairs joins the pairs)

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

    def saved_in(self, folder: str | Path, adapter: bool) -> ResolvedModel:
        """This model with its weights where training saved them (a checkpoint's or an export's model folder: the
        adapter alone when `adapter`, else the weights in this model's layout)."""
        if adapter:
            return dataclasses.replace(self, adapter=str(folder))
        return dataclasses.replace(self, path=str(folder), adapter=None, separate_encoders=self.settings.untied)

    def hidden_size(self) -> int:
        """The embedding size, read from the model's configuration (not its weights)."""
        subfolder = QUERY_SUBFOLDER if self.separate_encoders else ""
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


def resolve_settings(path_or_name: str, saved: DenseModelSettings | None, overrides: dict,
                     cache_dir: str | None = None) -> DenseModelSettings:
    """Each setting from the caller (non-None), else the raytev save (`saved`, the folder's raytev_model.json),
    else sentence-transformers, else default."""
    chosen = {name: value for name, value in overrides.items() if value is not None}
    if saved is not None:
        if saved.untied and chosen.get("untied") is False:
            raise RaytevError(f"'{path_or_name}' holds separate query and passage encoders, which cannot be tied "
                              "again: leave untied unset (or true) for this model")
        return dataclasses.replace(saved, **chosen)
    implied = sentence_transformers_defaults(path_or_name, cache_dir, need_pooling="pooling" not in chosen)
    return DenseModelSettings(**{**implied, **chosen})


def resolve_model(model: ModelSection, text: TextSection | None = None, precision=None,
                  need_tokenizer: bool = True) -> ResolvedModel:
    """The ResolvedModel of a stage's model, text and precision sections (raytev.config.sections).

    A LoRA adapter (--lora_name_or_path, or an adapter folder given as the model) brings its own settings and
    tokenizer when it was saved with them; otherwise the base model's apply.
    Lengths: the flag, else the lengths a raytev export was trained with, else a sentence-transformers model's
    max_seq_length, else Tevatron's 32 / 128. `need_tokenizer` False: resolved to load its weights only.
    """
    text = text or TextSection()  # no text flags: every length and prompt is the model's own
    given = resolve_model_path(model.model_name_or_path)
    check_model_source(given)
    if model.lora_name_or_path:
        check_model_source(model.lora_name_or_path)
    path, adapter = split_adapter(given, model.lora_name_or_path, model.cache_dir)
    check_model_source(path)
    saved = {folder: read_saved_settings(folder, model.cache_dir) for folder in {path, adapter} if folder}
    # The adapter's folder speaks for the model when raytev saved it (settings, tokenizer); else the base does.
    own = adapter if adapter and saved[adapter] is not None else path
    overrides = {"pooling": model.pooling, "normalize": model.normalize, "temperature": model.temperature,
                 "untied": model.untie_encoder, "query_prefix": text.query_prefix,
                 "passage_prefix": text.passage_prefix}
    settings = resolve_settings(own, saved[own], overrides, model.cache_dir)
    if adapter and settings.untied:
        raise RaytevError(f"'{adapter}' is a LoRA adapter: raytev applies adapters to tied encoders only "
                          "(drop --untie_encoder)")
    own_length = model_max_seq_length(own, model.cache_dir) or model_max_seq_length(path, model.cache_dir)
    tokenizer_source = model.tokenizer_name or (own if find_model_file(own, "tokenizer_config.json",
                                                                         model.cache_dir) else path)
    reduced = model.torch_dtype if model.torch_dtype in ("bfloat16", "float16") else None
    return ResolvedModel(
        name=model.model_name_or_path, path=path, settings=settings,
        tokenizer_dir=tokenizer_dir(tokenizer_source, model.cache_dir) if need_tokenizer else None,
        query_max_len=text.query_max_len or settings.query_max_len or own_length or DEFAULT_QUERY_MAX_LEN,
        passage_max_len=text.passage_max_len or settings.passage_max_len or own_length or DEFAULT_PASSAGE_MAX_LEN,
        append_eos_token=settings.append_eos_token if text.append_eos_token is None else text.append_eos_token,
        dtype=(precision.dtype_name if precision is not None else None) or reduced, cache_dir=model.cache_dir,
        adapter=adapter, base_reference=base_model_reference(model.model_name_or_path, path) if not adapter else None,
        attn_implementation=model.attn_implementation, torch_dtype=model.torch_dtype,
        separate_encoders=bool(saved[path] and saved[path].untied))


def resolve_folder(path_or_name: str | Path, cache_dir: str | None = None, untied: bool | None = None,
                   query_prefix: str | None = None, passage_prefix: str | None = None, **settings) -> ResolvedModel:
    """A model folder or hub name resolved for its weights, with these settings (ModelSection's names; None: the
    model's own): what loading a model by path (DenseModel.from_pretrained, scripts, tests) goes through."""
    section = ModelSection(model_name_or_path=str(path_or_name), cache_dir=cache_dir, untie_encoder=untied, **settings)
    return resolve_model(section, TextSection(query_prefix=query_prefix, passage_prefix=passage_prefix),
                         need_tokenizer=False)


def resolve_reranker(model: ModelSection, text: TextSection | None = None, precision=None,
                     rerank_max_len: int | None = None) -> ResolvedModel:
    """A cross-encoder (or the encoder a reranker is trained from) resolved to read bare segments that pairs are
    joined from, each cut at the pair length: the flag, else what a raytev reranker was trained with
    (raytev_reranker.json), else 512. Prompts and EOS: the flags, else the reranker's own, else none."""
    text = text or TextSection()
    resolved = resolve_model(model, text, precision)
    saved = read_reranker_settings(resolved.adapter or resolved.path, model.cache_dir)
    length = rerank_max_len or (saved.rerank_max_len if saved else DEFAULT_RERANK_MAX_LEN)
    query_prefix, passage_prefix, append_eos = (
        given if given is not None else (getattr(saved, name) if saved else default)
        for given, name, default in ((text.query_prefix, "query_prefix", ""),
                                     (text.passage_prefix, "passage_prefix", ""),
                                     (text.append_eos_token, "append_eos_token", False)))
    settings = dataclasses.replace(resolved.settings, query_prefix=query_prefix, passage_prefix=passage_prefix)
    return dataclasses.replace(resolved, settings=settings, query_max_len=length, passage_max_len=length,
                               append_eos_token=append_eos, pair_segments=True)
