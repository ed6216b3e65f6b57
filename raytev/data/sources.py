"""Where data comes from: a bundled dataset, a BEIR folder, local JSONL/TSV files, or a Hugging Face dataset
(`Tevatron/msmarco-passage`, `name/split`, `name:config`, loaded for people online)."""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from raytev.bundled import bundled_dataset_names, bundled_dataset_path
from raytev.config.sections import DataSection
from raytev.data.cache import file_fingerprint
from raytev.data.lines import first_record, is_tsv, iter_json_records, iter_tsv_rows
from raytev.errors import ProblemLog, RaytevError

RecordKind = Literal["groups", "corpus", "queries"]
TSV_CORPUS_HEADER_NAMES = {"id": "docid", "docid": "docid", "_id": "docid", "pid": "docid",
                           "title": "title", "text": "text", "passage": "text"}


def detect_kind(keys: set[str], encode_is_query: bool) -> RecordKind | None:
    """What a record with these keys is: a training group, a corpus passage or a query."""
    if keys & {"positive_passages", "positive_document_ids"}:
        return "groups"
    if keys & {"query_id", "query", "query_text"}:
        return "queries"
    if keys & {"docid", "title"}:
        return "corpus"
    if {"_id", "text"} <= keys:
        return "queries" if encode_is_query else "corpus"
    return None


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face hub, with its config and split."""

    name: str
    config: str | None
    split: str

    @property
    def label(self) -> str:
        """How problems name this dataset (in place of a file name)."""
        config = f":{self.config}" if self.config else ""
        return f"{self.name}{config}/{self.split}"

    @classmethod
    def parse(cls, name: str, config: str | None, split: str) -> HubDataset:
        """Split Tevatron-style `org/name/split` and `org/name:config` into their parts."""
        parts = name.split("/")
        if len(parts) == 3:
            name, split = "/".join(parts[:2]), parts[2]
        if ":" in name:
            name, config = name.split(":", 1)
        return cls(name, config or None, split)

    def load(self, cache_dir: str | None = None):
        """The split as a `datasets.Dataset`; offline or unknown names fail with what to do instead."""
        import datasets

        try:
            return datasets.load_dataset(self.name, self.config, split=self.split, cache_dir=cache_dir)
        except Exception as error:  # offline, missing, gated and bad splits raise many different types
            raise RaytevError(
                f"could not load the Hugging Face dataset '{self.label}' "
                f"({type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}).\n"
                "Offline, or for a dataset you have as files, pass local files instead: --dataset_path "
                "with a Tevatron training JSONL, a corpus/queries JSONL or TSV, or a BEIR folder; "
                "or use the bundled dataset with --dataset_name scifact."
            ) from None


@dataclass(frozen=True)
class RecordFiles:
    """Records of one kind: local JSONL/TSV files (read in order) or a Hugging Face dataset split."""

    kind: RecordKind
    paths: tuple[Path, ...] = ()
    hub: HubDataset | None = None
    hub_cache_dir: str | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """A short human name for these records."""
        if self.hub:
            return self.hub.label
        return str(self.paths[0]) + (f" (+{len(self.paths) - 1} files)" if len(self.paths) > 1 else "")

    def iter_records(self, problems: ProblemLog) -> Iterator[tuple[str, int, dict]]:
        """Yield (source, line, record dict) for every record; unreadable lines are logged as problems."""
        if self.hub:
            source = self.hub.label
            for row_number, row in enumerate(self.hub.load(self.hub_cache_dir), start=1):
                yield source, row_number, row
            return
        for path in self.paths:
            if is_tsv(path):
                yield from self._iter_tsv(path, problems)
            else:
                for line, record in iter_json_records(path, problems):
                    yield str(path), line, record

    def _iter_tsv(self, path: Path, problems: ProblemLog) -> Iterator[tuple[str, int, dict]]:
        if self.kind == "queries":
            for line, fields in iter_tsv_rows(path, (2,), problems):
                yield str(path), line, {"query_id": fields[0], "query": fields[1]}
            return
        names: list[str] | None = None
        for index, (line, fields) in enumerate(iter_tsv_rows(path, (2, 3), problems)):
            if index == 0 and all(value.strip().lower() in TSV_CORPUS_HEADER_NAMES for value in fields):
                names = [TSV_CORPUS_HEADER_NAMES[value.strip().lower()] for value in fields]
                continue
            columns = names or (["docid", "text"] if len(fields) == 2 else ["docid", "title", "text"])
            if len(columns) != len(fields):
                problems.add(str(path), line, f"expected {len(columns)} columns as in the header, got {len(fields)}")
                continue
            yield str(path), line, dict(zip(columns, fields))

    def content_fingerprint(self, file_hash: Callable[[Path], str] = file_fingerprint) -> str:
        """A hash of the records' content (file bytes as `file_hash` gives them, or the hub dataset's own
        fingerprint)."""
        if self.hub:
            from raytev.compat import dataset_fingerprint

            return dataset_fingerprint(self.hub.load(self.hub_cache_dir))
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(file_hash(path).encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class DataSource:
    """What the data arguments point at: a corpus, queries or training groups, and qrels that join them."""

    label: str
    corpus: RecordFiles | None = None
    queries: RecordFiles | None = None  # kind "groups" or "queries"
    qrels: Path | None = None  # with queries and corpus: BEIR, positives come from here

    @property
    def has_groups(self) -> bool:
        """Whether this source yields training groups (queries with positives)."""
        return self.qrels is not None or (self.queries is not None and self.queries.kind == "groups")


def resolve_source(args: DataSection, hub_cache_dir: str | None = None) -> DataSource:
    """Turn --dataset_name / --dataset_path / --dataset_split / --corpus_path into a DataSource."""
    if args.dataset_path:
        source = _local_source(args.dataset_path, args)
    elif args.dataset_name and args.dataset_name != "json":
        bundled = bundled_dataset_path(args.dataset_name)
        if bundled is not None:
            source = _beir_source(bundled, args.dataset_split, f"{args.dataset_name} (bundled)")
        elif Path(args.dataset_name).exists():
            source = _local_source(args.dataset_name, args)
        else:
            source = _hub_source(HubDataset.parse(args.dataset_name, args.dataset_config, args.dataset_split),
                                 args, hub_cache_dir)
    else:
        raise RaytevError(
            "no data given: pass --dataset_path (a JSONL/TSV file, a folder of them, or a BEIR folder) "
            f"or --dataset_name (bundled: {', '.join(bundled_dataset_names())}; or a Hugging Face dataset)."
        )
    if args.corpus_path:
        if source.qrels is not None:
            raise RaytevError("--corpus_path is for training groups that name docids; a BEIR folder has its "
                              "own corpus.")
        corpus_files = expand_paths(args.corpus_path)
        source = DataSource(source.label, RecordFiles("corpus", corpus_files), source.queries, source.qrels)
    return source


def _local_source(path_text: str, args: DataSection) -> DataSource:
    path = Path(path_text).expanduser()
    if path.is_dir():
        if find_beir_layout(path) is not None:
            return _beir_source(path, args.dataset_split, str(path))
        files = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz", ".json")))
        if not files:
            raise RaytevError(f"{path} is a folder with neither a BEIR layout (corpus.jsonl[.gz], queries.jsonl, "
                              "qrels/) nor *.jsonl files: point --dataset_path at the data files.")
        paths = tuple(files)
    else:
        paths = expand_paths(path_text)
    kind = _file_kind(paths[0], args.encode_is_query)
    return DataSource(str(path), **{"corpus" if kind == "corpus" else "queries": RecordFiles(kind, paths)})


def expand_paths(path_text: str) -> tuple[Path, ...]:
    if any(char in path_text for char in "*?["):
        paths = tuple(Path(p) for p in sorted(glob.glob(path_text)))
        if not paths:
            raise RaytevError(f"no file matches {path_text}")
        return paths
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise RaytevError(f"{path}: file not found (relative paths start from the current directory)")
    return (path,)


def _file_kind(path: Path, encode_is_query: bool) -> RecordKind:
    if is_tsv(path):
        return "queries" if encode_is_query else "corpus"
    record = first_record(path)
    if record is None:
        # Empty or unparsable: call it groups so the reader reports the exact line.
        return "groups"
    kind = detect_kind(set(record), encode_is_query)
    if kind is None:
        raise RaytevError(
            f"{path}:1: cannot tell what this file holds from its fields {sorted(record)}. Expected a Tevatron "
            "training group (query_id, query, positive_passages, negative_passages), a corpus passage "
            "(docid or _id, title, text) or a query (query_id, query)."
        )
    return kind


def find_beir_layout(root: Path) -> dict[str, Path] | None:
    """The corpus, queries and qrels folder of a BEIR folder, or None if `root` is not one."""

    def first(*names: str) -> Path | None:
        return next((root / name for name in names if (root / name).is_file()), None)

    corpus, queries = first("corpus.jsonl", "corpus.jsonl.gz"), first("queries.jsonl", "queries.jsonl.gz")
    if corpus is None or queries is None or not (root / "qrels").is_dir():
        return None
    return {"corpus": corpus, "queries": queries, "qrels": root / "qrels"}


def _beir_source(root: Path, split: str, label: str) -> DataSource:
    layout = find_beir_layout(root)
    if layout is None:
        raise RaytevError(f"{root} is not a BEIR folder: it needs corpus.jsonl[.gz], queries.jsonl and qrels/.")
    qrels = layout["qrels"] / f"{split}.tsv"
    if not qrels.is_file():
        splits = sorted(path.stem for path in layout["qrels"].glob("*.tsv"))
        raise RaytevError(f"{root} has no split '{split}' (no {qrels.name} in qrels/): choose --dataset_split "
                          f"from {', '.join(splits) or 'nothing: qrels/ is empty'}.")
    return DataSource(f"{label}, split {split}", RecordFiles("corpus", (layout["corpus"],)),
                      RecordFiles("queries", (layout["queries"],)), qrels)


def _hub_source(hub: HubDataset, args: DataSection, cache_dir: str | None) -> DataSource:
    dataset = hub.load(cache_dir)
    kind = detect_kind(set(dataset.column_names), args.encode_is_query)
    if kind is None:
        raise RaytevError(f"{hub.label}: cannot tell what this dataset holds from its columns "
                          f"{dataset.column_names}.")
    records = RecordFiles(kind, hub=hub, hub_cache_dir=cache_dir)
    return DataSource(hub.label, **{"corpus" if kind == "corpus" else "queries": records})
