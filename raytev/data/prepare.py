"""The data stage: validate a source, tokenize it once, and keep the tokens in the cache (`raytev data prepare`)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from raytev import __version__
from raytev.args import DataArguments, ModelArguments
from raytev.data.arrow_rows import read_arrow_rows
from raytev.data.cache import CacheTransaction, TokenTable, default_cache_dir, file_fingerprint, fingerprint
from raytev.data.reading import NegativesConfig, count_list_items, read_source
from raytev.data.sources import DataSource, resolve_source
from raytev.data.token_tables import write_corpus_table, write_queries_table
from raytev.data.tokenize import (DEFAULT_PASSAGE_MAX_LEN, DEFAULT_QUERY_MAX_LEN, TextTokenizer, load_tokenizer,
                                  model_max_seq_length, tokenizer_dir, tokenizer_fingerprint)
from raytev.errors import ProblemLog, RaytevError


@dataclass
class PreparedData:
    """The token tables a source became, and which of them came from the cache."""

    source: DataSource
    corpus: TokenTable | None
    queries: TokenTable | None
    tokenizer_dir: Path | None = None
    reused: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def all_reused(self) -> bool:
        """Whether every table was already in the cache."""
        return all(self.reused.values())


@dataclass
class ValidationReport:
    """What a source holds, counted after validation."""

    source: DataSource
    passages: int | None
    queries: int | None
    positives: int | None
    negatives: int | None
    seconds: float


def prepare_data(data: DataArguments, model: ModelArguments) -> PreparedData:
    """Validate and tokenize a source into the token cache, reusing tables whose inputs are unchanged."""
    started = time.perf_counter()
    source = resolve_source(data, hub_cache_dir=data.dataset_cache_dir)
    tokenizer_name = model.tokenizer_name or model.model_name_or_path
    if not tokenizer_name:
        raise RaytevError("pass --model_name_or_path (or --tokenizer_name): its tokenizer turns text into tokens.")
    tokenizer_folder = tokenizer_dir(tokenizer_name, cache_dir=model.cache_dir)
    data = with_max_lengths(data, tokenizer_folder)
    keys = table_fingerprints(source, data, tokenizer_fingerprint(tokenizer_folder))
    cache_dir = Path(data.dataset_cache_dir).expanduser() if data.dataset_cache_dir else default_cache_dir()
    cached = {kind: TokenTable.open(cache_dir / f"{kind}-{key}") for kind, key in keys.items()}
    missing = [kind for kind, table in cached.items() if table is None]
    if missing:
        build_tables(source, data, tokenizer_folder, cache_dir, keys, cached, missing)
    tables = {kind: TokenTable.open(cache_dir / f"{kind}-{key}") for kind, key in keys.items()}
    return PreparedData(source, tables.get("corpus"), tables.get("queries"), tokenizer_folder,
                        reused={kind: kind not in missing for kind in keys},
                        seconds=time.perf_counter() - started)


def with_max_lengths(data: DataArguments, tokenizer_folder: Path) -> DataArguments:
    """Lengths left unset become the model's own max_seq_length (sentence-transformers), else Tevatron's."""
    own = model_max_seq_length(tokenizer_folder)
    return dataclasses.replace(data, query_max_len=data.query_max_len or own or DEFAULT_QUERY_MAX_LEN,
                               passage_max_len=data.passage_max_len or own or DEFAULT_PASSAGE_MAX_LEN)


def table_fingerprints(source: DataSource, data: DataArguments, tokenizer_key: str) -> dict[str, str]:
    """The cache key of each table the source becomes: its inputs' content plus every setting that shapes it."""
    passage_settings = {"tokenizer": tokenizer_key, "max_len": data.passage_max_len, "prefix": data.passage_prefix,
                        "separator": data.title_separator, "append_eos": data.append_eos_token}
    keys = {}
    if source.corpus is not None:
        keys["corpus"] = fingerprint(kind="corpus", content=source.corpus.content_fingerprint(), **passage_settings)
    if source.queries is not None:
        query_settings = {"tokenizer": tokenizer_key, "max_len": data.query_max_len, "prefix": data.query_prefix,
                          "append_eos": data.append_eos_token}
        passages: dict | str | None = None
        if source.has_groups:
            # Group passages come from the corpus table (then its key covers them) or are written inline.
            passages = keys.get("corpus") or passage_settings
        negatives = None
        if source.qrels is not None:
            negatives = {"count": data.num_negatives, "seed": data.seed,
                         "run": file_fingerprint(data.negatives_run) if data.negatives_run else None}
        keys["queries"] = fingerprint(
            kind="queries", content=source.queries.content_fingerprint(),
            qrels=file_fingerprint(source.qrels) if source.qrels else None,
            separator=data.title_separator, passages=passages, negatives=negatives, **query_settings,
        )
    return keys


def build_tables(source: DataSource, data: DataArguments, tokenizer_folder: Path, cache_dir: Path,
                 keys: dict[str, str], cached: dict[str, TokenTable | None], missing: list[str]) -> None:
    """Read, validate and tokenize the missing tables; all of them appear in the cache together, or none."""
    negatives = NegativesConfig(data.negatives_run, data.num_negatives, data.seed)
    if data.negatives_run and not Path(data.negatives_run).is_file():
        raise RaytevError(f"--negatives_run {data.negatives_run}: file not found")
    with CacheTransaction(cache_dir) as transaction, \
            tempfile.TemporaryDirectory(dir=cache_dir, prefix=".reading-") as work:
        corpus_table = cached.get("corpus")
        corpus_docids = corpus_table.read(["docid"]).column("docid") if corpus_table else None
        corpus_file, queries_text = read_source(source, Path(work), data.title_separator, negatives, ProblemLog(),
                                                corpus_docids=corpus_docids, include_queries="queries" in missing)
        tokenizer = load_tokenizer(tokenizer_folder)
        passage_tokenizer = TextTokenizer(tokenizer, data.passage_max_len, data.passage_prefix, data.append_eos_token)
        settings = {"tokenizer": str(tokenizer_folder), "passage_max_len": data.passage_max_len,
                    "passage_prefix": data.passage_prefix, "title_separator": data.title_separator,
                    "append_eos_token": data.append_eos_token, "raytev_version": __version__,
                    "pad_token_id": pad_token_id(tokenizer)}
        if corpus_file is not None:
            hidden = transaction.new_table("corpus", keys["corpus"])
            result = write_corpus_table(corpus_file, passage_tokenizer, hidden, data.num_proc)
            manifest = {"kind": "corpus", "fingerprint": keys["corpus"], "source": source.corpus.label,
                        "settings": settings, **result}
            transaction.commit(hidden, manifest)
            corpus_table = TokenTable(hidden, manifest)
        if queries_text is not None:
            query_tokenizer = TextTokenizer(tokenizer, data.query_max_len, data.query_prefix, data.append_eos_token)
            corpus_tokens = None
            if queries_text.passages_from == "corpus":
                corpus_tokens = corpus_table.read(["input_ids"]).column("input_ids")
            hidden = transaction.new_table("queries", keys["queries"])
            result = write_queries_table(queries_text, query_tokenizer, hidden, data.num_proc,
                                         passage_tokenizer=passage_tokenizer, corpus_tokens=corpus_tokens)
            manifest = {"kind": "queries", "fingerprint": keys["queries"], "source": source.queries.label,
                        "groups": queries_text.has_groups, "passages_from": queries_text.passages_from,
                        "corpus": keys.get("corpus") if queries_text.passages_from == "corpus" else None,
                        "qrels": str(source.qrels) if source.qrels else None,
                        "settings": {**settings, "query_max_len": data.query_max_len,
                                     "query_prefix": data.query_prefix, "negatives_run": data.negatives_run,
                                     "num_negatives": data.num_negatives, "seed": data.seed},
                        **result}
            transaction.commit(hidden, manifest)


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the pad token, else EOS (decoder models), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def validate_data(data: DataArguments) -> ValidationReport:
    """Read and check a source without tokenizing or writing anything; raises DataError listing its problems."""
    started = time.perf_counter()
    source = resolve_source(data, hub_cache_dir=data.dataset_cache_dir)
    negatives = NegativesConfig(data.negatives_run, data.num_negatives, data.seed)
    with tempfile.TemporaryDirectory(prefix="raytev-validate-") as work:
        corpus_file, queries_text = read_source(source, Path(work), data.title_separator, negatives, ProblemLog())
        passages = read_arrow_rows(corpus_file).num_rows if corpus_file else None
        queries = positives = negatives_count = None
        if queries_text is not None:
            table = read_arrow_rows(queries_text.queries_file)
            queries = table.num_rows
            if queries_text.has_groups:
                positives = count_list_items(table.column("positive_rows"))
                negatives_count = count_list_items(table.column("negative_rows"))
    return ValidationReport(source, passages, queries, positives, negatives_count, time.perf_counter() - started)
