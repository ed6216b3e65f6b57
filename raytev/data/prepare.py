"""The data stage: validate a source, tokenize it once, and keep the tokens in the cache (`raytev data prepare`)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from raytev import __version__
from raytev.config.sections import DataSection
from raytev.config.stages import PrepareConfig, ValidateConfig
from raytev.data.arrow_rows import read_arrow_rows
from raytev.data.cache import (
    FILE_HASHES,
    CacheTransaction,
    FileHashes,
    TokenTable,
    default_cache_dir,
    file_fingerprint,
    fingerprint,
)
from raytev.data.reading import NegativesConfig, count_list_items, read_source
from raytev.data.sources import DataSource, resolve_source
from raytev.data.token_tables import write_corpus_table, write_queries_table
from raytev.data.tokenize import TextTokenizer, pad_token_id, tokenizer_fingerprint
from raytev.errors import ProblemLog, RaytevError
from raytev.model.resolved import ResolvedModel, resolve_model


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

    def summary(self) -> str:
        """What `raytev data prepare` prints: each table, whether it was reused, and where it is."""
        lines = [self.source.label]
        for kind, table in (("corpus", self.corpus), ("queries", self.queries)):
            if table is not None:
                state = "cache hit, reused" if self.reused[kind] else "tokenized"
                lines.append(f"  {kind:<8} {describe_table(table)}  [{state}]\n           {table.path}")
        reused = sum(self.reused.values())
        verdict = "cache hit: nothing to do" if self.all_reused else f"{reused}/{len(self.reused)} tables reused"
        lines.append(f"prepared in {self.seconds:.2f} s ({verdict})")
        return "\n".join(lines)


def describe_table(table: TokenTable) -> str:
    """One line of counts for a token table."""
    manifest = table.manifest
    if table.kind == "corpus":
        return (f"{table.rows:,} passages, mean {manifest['mean_tokens']} tokens, "
                f"{manifest['truncated']:,} cut at {manifest['settings']['passage_max_len']}")
    text = f"{table.rows:,} queries"
    if manifest.get("groups"):
        text += f" with {manifest['positives']:,} positives and {manifest['negatives']:,} negatives"
    return text + f", mean {manifest['query_mean_tokens']} tokens"


@dataclass
class ValidationReport:
    """What a source holds, counted after validation."""

    source: DataSource
    passages: int | None
    queries: int | None
    positives: int | None
    negatives: int | None
    seconds: float

    def summary(self) -> str:
        """What `raytev data validate` prints: the counts."""
        parts = []
        if self.passages is not None:
            parts.append(f"{self.passages:,} passages")
        if self.queries is not None:
            groups = f" with {self.positives:,} positives and {self.negatives:,} negatives" \
                if self.positives is not None else ""
            parts.append(f"{self.queries:,} queries{groups}")
        return f"{self.source.label}: valid: {', '.join(parts)} ({self.seconds:.2f} s)"


def prepare(config: PrepareConfig) -> PreparedData:
    """`raytev data prepare`: the source tokenized as the model reads text, in the token cache."""
    return prepare_data(config.data, resolve_model(config.model, config.text))


def validate(config: ValidateConfig) -> ValidationReport:
    """`raytev data validate`: the source read and checked, nothing written."""
    return validate_data(config.data)


def prepare_data(data: DataSection, model: ResolvedModel) -> PreparedData:
    """Validate and tokenize a source into the token cache, reusing tables whose inputs are unchanged."""
    started = time.perf_counter()
    source = resolve_source(data, hub_cache_dir=data.dataset_cache_dir)
    cache_dir = Path(data.dataset_cache_dir).expanduser() if data.dataset_cache_dir else default_cache_dir()
    file_hashes = FileHashes(cache_dir / FILE_HASHES, rehash=data.rehash_inputs)
    keys = table_fingerprints(source, data, model, tokenizer_fingerprint(model.tokenizer_dir), file_hashes)
    cached = {kind: TokenTable.open(cache_dir / f"{kind}-{key}") for kind, key in keys.items()}
    missing = [kind for kind, table in cached.items() if table is None]
    if missing:
        build_tables(source, data, model, cache_dir, keys, cached, missing)
    file_hashes.save()  # only once the tables are in place: a failed run leaves the cache folder as it was
    tables = {kind: TokenTable.open(cache_dir / f"{kind}-{key}") for kind, key in keys.items()}
    return PreparedData(source, tables.get("corpus"), tables.get("queries"), model.tokenizer_dir,
                        reused={kind: kind not in missing for kind in keys},
                        seconds=time.perf_counter() - started)


def table_fingerprints(source: DataSource, data: DataSection, model: ResolvedModel, tokenizer_key: str,
                       file_hash: Callable[[Path], str] = file_fingerprint) -> dict[str, str]:
    """The cache key of each table the source becomes: its inputs' content (files hashed by `file_hash`) plus every
    setting that shapes it (the prompts and lengths the model resolved to among them)."""
    passage_settings = {"tokenizer": tokenizer_key, "max_len": model.passage_max_len,
                        "prefix": model.settings.passage_prefix, "separator": data.title_separator,
                        "append_eos": model.append_eos_token,
                        **({"pair_segments": True} if model.pair_segments else {})}
    keys = {}
    if source.corpus is not None:
        keys["corpus"] = fingerprint(kind="corpus", content=source.corpus.content_fingerprint(file_hash),
                                       **passage_settings)
    if source.queries is not None:
        query_settings = {"tokenizer": tokenizer_key, "max_len": model.query_max_len,
                          "prefix": model.settings.query_prefix, "append_eos": model.append_eos_token,
                          **({"pair_segments": True} if model.pair_segments else {})}
        passages: dict | str | None = None
        if source.has_groups:
            # Group passages come from the corpus table (then its key covers them) or are written inline.
            passages = keys.get("corpus") or passage_settings
        negatives = None
        if source.qrels is not None:
            negatives = {"count": data.num_negatives, "seed": data.seed,
                         "run": file_hash(data.negatives_run) if data.negatives_run else None}
        keys["queries"] = fingerprint(
            kind="queries", content=source.queries.content_fingerprint(file_hash),
            qrels=file_hash(source.qrels) if source.qrels else None,
            separator=data.title_separator, passages=passages, negatives=negatives, **query_settings,
        )
    return keys


def build_tables(source: DataSource, data: DataSection, model: ResolvedModel, cache_dir: Path,
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
        tokenizer = model.load_tokenizer()
        passage_tokenizer = TextTokenizer.for_passages(model, tokenizer)
        settings = {"tokenizer": str(model.tokenizer_dir), "passage_max_len": model.passage_max_len,
                    "passage_prefix": model.settings.passage_prefix, "title_separator": data.title_separator,
                    "append_eos_token": model.append_eos_token, "raytev_version": __version__,
                    "pad_token_id": pad_token_id(tokenizer)}
        if corpus_file is not None:
            hidden = transaction.new_table("corpus", keys["corpus"])
            result = write_corpus_table(corpus_file, passage_tokenizer, hidden, data.num_proc)
            manifest = {"kind": "corpus", "fingerprint": keys["corpus"], "source": source.corpus.label,
                        "settings": settings, **result}
            transaction.commit(hidden, manifest)
            corpus_table = TokenTable(hidden, manifest)
        if queries_text is not None:
            query_tokenizer = TextTokenizer.for_queries(model, tokenizer)
            hidden = transaction.new_table("queries", keys["queries"])
            result = write_queries_table(queries_text, query_tokenizer, hidden, data.num_proc,
                                         passage_tokenizer=passage_tokenizer, corpus_table=corpus_table)
            manifest = {"kind": "queries", "fingerprint": keys["queries"], "source": source.queries.label,
                        "groups": queries_text.has_groups, "passages_from": queries_text.passages_from,
                        "corpus": keys.get("corpus") if queries_text.passages_from == "corpus" else None,
                        "qrels": str(source.qrels) if source.qrels else None,
                        "settings": {**settings, "query_max_len": model.query_max_len,
                                     "query_prefix": model.settings.query_prefix, "negatives_run": data.negatives_run,
                                     "num_negatives": data.num_negatives, "seed": data.seed},
                        **result}
            transaction.commit(hidden, manifest)


def validate_data(data: DataSection) -> ValidationReport:
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
