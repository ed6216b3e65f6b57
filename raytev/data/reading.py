"""Read and validate a DataSource into Arrow text tables: all of `data validate`, the first half of `prepare`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from raytev.data.arrow_rows import ArrowRowWriter, count_arrow_rows, read_arrow_rows, rewrite_arrow_batches
from raytev.data.formats import Passage, parse_corpus_record, parse_query_record, parse_training_group, passage_text
from raytev.data.group_tokens import nest
from raytev.data.qrels import read_qrels
from raytev.data.runs import read_run
from raytev.data.sampling import stable_seed
from raytev.data.sources import DataSource, RecordFiles
from raytev.errors import ProblemLog

CORPUS_TEXT_SCHEMA = pa.schema([("docid", pa.string()), ("text", pa.string()), ("line", pa.int64())])
QUERY_TEXT_FIELDS = [("query_id", pa.string()), ("text", pa.string()), ("answers", pa.list_(pa.string())),
                     ("line", pa.int64())]
GROUP_FIELDS = [("positive_docids", pa.list_(pa.string())), ("negative_docids", pa.list_(pa.string())),
                ("positive_rows", pa.list_(pa.int64())), ("negative_rows", pa.list_(pa.int64()))]
QUERIES_TEXT_SCHEMA = pa.schema(QUERY_TEXT_FIELDS)
GROUPS_TEXT_SCHEMA = pa.schema(QUERY_TEXT_FIELDS + GROUP_FIELDS)
INLINE_PASSAGES_SCHEMA = pa.schema([("docid", pa.string()), ("text", pa.string())])


@dataclass(frozen=True)
class NegativesConfig:
    """Where BEIR training groups get negatives: a run file's top non-positives, else seeded random passages."""

    run_file: str | None = None
    count: int = 30
    seed: int = 42


@dataclass
class QueriesText:
    """Validated queries (with groups, if any) as Arrow files; group rows point into `passages_from`."""

    queries_file: Path
    has_groups: bool
    passages_from: str | None = None  # "corpus" (rows of the corpus table) or "inline" (rows of inline_file)
    inline_file: Path | None = None


class CorpusDocids:
    """The corpus's docids in row order, and docid -> row lookups by binary search in a sorted copy: a few bytes
    per passage in Arrow arrays, where a Python dict would take a hundred."""

    def __init__(self, docids: pa.Array | pa.ChunkedArray):
        # One array: take() on a chunked one copies all of it on every call.
        self.docids = docids.combine_chunks() if isinstance(docids, pa.ChunkedArray) else docids
        self._order = pc.sort_indices(self.docids)  # stable: of equal docids, the first row comes first
        self._sorted = self.docids.take(self._order)

    def rows(self, docids: pa.Array) -> pa.Array:
        """Each docid's corpus row (int64; the first row if it appears twice), null where the corpus lacks it."""
        if not len(self.docids) or not len(docids):
            return pa.nulls(len(docids), pa.int64())
        docids = docids.cast(self.docids.type)
        found_at = pc.min_element_wise(pc.search_sorted(self._sorted, docids), len(self.docids) - 1)
        known = pc.equal(self._sorted.take(found_at), docids)
        return pc.if_else(known, self._order.take(found_at).cast(pa.int64()), pa.scalar(None, pa.int64()))


def progress(records, label: str, unit: str):
    """Wrap a record iterator in a progress bar."""
    # disable=None: no bar when output is not a terminal (logs, CI), where bars only add noise.
    return tqdm(records, desc=f"Reading {label}", unit=f" {unit}", mininterval=1.0, leave=False, disable=None)


def read_corpus(records: RecordFiles, work_dir: Path, separator: str, problems: ProblemLog) -> Path:
    """Validate a corpus into `corpus-text.arrow` (docid, text, line); duplicate docids are problems."""
    path = work_dir / "corpus-text.arrow"
    with ArrowRowWriter(path, CORPUS_TEXT_SCHEMA) as writer:
        for source, line, record in progress(records.iter_records(problems), records.label, "passages"):
            passage = parse_corpus_record(record, source, line, problems)
            if passage is not None:
                writer.append(docid=passage.docid, text=passage_text(passage, separator), line=line)
    report_duplicates(read_arrow_rows(path), "docid", records.label, problems)
    return path


def read_passages(records: RecordFiles, problems: ProblemLog, docids: set[str] | None = None) -> dict[str, Passage]:
    """docid -> Passage of a corpus (only those in `docids` when given), in one streaming pass; bad records are
    logged in `problems` for the caller to raise."""
    passages = {}
    for source, line, record in records.iter_records(problems):
        passage = parse_corpus_record(record, source, line, problems)
        if passage is not None and (docids is None or passage.docid in docids):
            passages[passage.docid] = passage
    return passages


def read_queries(records: RecordFiles, work_dir: Path, problems: ProblemLog) -> QueriesText:
    """Validate plain queries into `queries-text.arrow`; duplicate query ids are problems."""
    path = work_dir / "queries-text.arrow"
    with ArrowRowWriter(path, QUERIES_TEXT_SCHEMA) as writer:
        for source, line, record in progress(records.iter_records(problems), records.label, "queries"):
            query = parse_query_record(record, source, line, problems)
            if query is not None:
                writer.append(query_id=query.query_id, text=query.text, answers=query.answers, line=line)
    report_duplicates(read_arrow_rows(path), "query_id", records.label, problems)
    return QueriesText(path, has_groups=False)


def read_groups(records: RecordFiles, work_dir: Path, separator: str, problems: ProblemLog,
                corpus: CorpusDocids | None) -> QueriesText:
    """Validate Tevatron training groups; inline passages go to their own table, docids resolve to corpus rows.

    A query id may head several groups (each group is one training example), so repeated ids are kept.
    """
    path, inline_path = work_dir / "queries-text.arrow", work_dir / "inline-passages-text.arrow"
    form: str | None = None  # "inline" or "corpus", fixed by the first valid group
    with ArrowRowWriter(path, GROUPS_TEXT_SCHEMA) as writer, \
            ArrowRowWriter(inline_path, INLINE_PASSAGES_SCHEMA) as inline:
        for source, line, record in progress(records.iter_records(problems), records.label, "groups"):
            group = parse_training_group(record, source, line, problems)
            if group is None:
                continue
            group_form = "inline" if isinstance(group.positives[0], Passage) else "corpus"
            if form is None:
                form = group_form
            if group_form != form:
                problems.add(source, line, "this group names docids while earlier groups write passages out "
                             "(or the reverse); use one form per dataset", field="positive_passages")
                continue
            rows = {}
            for name, passages in (("positive", group.positives), ("negative", group.negatives)):
                if form == "inline":
                    rows[name] = list(range(inline.rows, inline.rows + len(passages)))
                    for passage in passages:
                        inline.append(docid=passage.docid, text=passage_text(passage, separator))
                else:
                    rows[name] = []  # resolved against the corpus below, a batch of groups at a time
            writer.append(query_id=group.query.query_id, text=group.query.text, answers=group.query.answers,
                          line=line,
                          positive_docids=[p.docid if isinstance(p, Passage) else p for p in group.positives],
                          negative_docids=[p.docid if isinstance(p, Passage) else p for p in group.negatives],
                          positive_rows=rows["positive"], negative_rows=rows["negative"])
    if form == "corpus":
        if corpus is None:
            problems.add(records.label, None, "the groups name passages by docid (positive_document_ids) but "
                         "no corpus was given: pass --corpus_path with the corpus JSONL/TSV")
        else:
            resolve_group_rows(path, corpus, records.label, problems)
    return QueriesText(path, has_groups=True, passages_from=form or "inline",
                       inline_file=inline_path if form != "corpus" else None)


def resolve_group_rows(path: Path, corpus: CorpusDocids, label: str, problems: ProblemLog) -> None:
    """Fill positive_rows / negative_rows from the docid lists, a batch of groups at a time; unknown docids are
    problems (file and line), the first ten of each list."""
    reported = {"positive": 0, "negative": 0}

    def resolved(batch: pa.RecordBatch) -> pa.RecordBatch:
        for name in ("positive", "negative"):
            docids = batch.column(f"{name}_docids")
            flat = docids.flatten()
            rows = corpus.rows(flat)
            unknown = np.flatnonzero(rows.is_null().to_numpy(zero_copy_only=False))[:10 - reported[name]]
            groups = docids.value_parent_indices().to_numpy()
            for position in unknown:
                problems.add(label, batch.column("line")[int(groups[position])].as_py(),
                             f"docid '{flat[position].as_py()}' is not in the corpus", field=f"{name}_document_ids")
            reported[name] += len(unknown)
            batch = batch.set_column(batch.schema.get_field_index(f"{name}_rows"), f"{name}_rows", nest(docids, rows))
        return batch

    rewrite_arrow_batches(path, resolved)


def read_beir_groups(queries: RecordFiles, qrels_path: Path, corpus: CorpusDocids, work_dir: Path,
                     negatives: NegativesConfig, problems: ProblemLog) -> QueriesText:
    """Training groups from a BEIR split: its queries, positives from qrels, negatives from a run or random.

    Repeats are dropped: a query id listed twice keeps its first line, a document judged twice for a query (in
    qrels) or retrieved twice (in the run) is one positive or negative.
    """
    judgements = read_qrels(qrels_path, problems)
    known = report_unknown_docids(judgements, corpus, str(qrels_path), "corpus-id", problems)
    positives: dict[str, list[str]] = {}
    for judgement, is_known in zip(judgements, known):
        if is_known and judgement.relevance > 0:
            docids = positives.setdefault(judgement.query_id, [])
            if judgement.docid not in docids:  # a few positives per query: a list scan is cheap
                docids.append(judgement.docid)
    run = read_run(negatives.run_file, problems) if negatives.run_file else None

    path = work_dir / "queries-text.arrow"
    seen: set[str] = set()
    with ArrowRowWriter(path, GROUPS_TEXT_SCHEMA) as writer:
        for source, line, record in progress(queries.iter_records(problems), queries.label, "queries"):
            query = parse_query_record(record, source, line, problems)
            if query is None or query.query_id not in positives or query.query_id in seen:
                continue
            seen.add(query.query_id)
            positive_docids = positives[query.query_id]
            if run is not None:
                excluded = set(positive_docids)
                ranked = dict.fromkeys(entry.docid for entry in run.get(query.query_id, []))  # repeats once
                negative_docids = [docid for docid in ranked if docid not in excluded][:negatives.count]
            else:
                negative_docids = random_negative_docids(query.query_id, positive_docids, corpus.docids, negatives)
            writer.append(query_id=query.query_id, text=query.text, answers=query.answers, line=line,
                          positive_docids=positive_docids, negative_docids=negative_docids,
                          positive_rows=[], negative_rows=[])
    for judgement in judgements:
        if judgement.query_id not in seen and judgement.query_id in positives:
            problems.add(str(qrels_path), judgement.line, f"query id '{judgement.query_id}' is not in "
                         f"{queries.label}", field="query-id")
            positives.pop(judgement.query_id)  # one problem per unknown query
    if run is not None:
        report_unknown_docids([entry for ranked in run.values() for entry in ranked], corpus,
                              negatives.run_file, "docid", problems)
    if not problems:
        resolve_group_rows(path, corpus, queries.label, problems)
    return QueriesText(path, has_groups=True, passages_from="corpus")


def random_negative_docids(query_id: str, positive_docids: list[str], corpus_docids: pa.Array,
                           negatives: NegativesConfig) -> list[str]:
    """`count` distinct random corpus docids that are not positives, seeded by (seed, query id)."""
    rng = np.random.default_rng(stable_seed(negatives.seed, "random-negatives", query_id))
    draw = min(len(corpus_docids), negatives.count + len(positive_docids))
    drawn = pc.take(corpus_docids, pa.array(rng.choice(len(corpus_docids), size=draw, replace=False))).to_pylist()
    excluded = set(positive_docids)
    return [docid for docid in drawn if docid not in excluded][:negatives.count]


def report_unknown_docids(entries: list, corpus: CorpusDocids, source: str, field: str,
                          problems: ProblemLog) -> list[bool]:
    """Log every entry (with `.line` and `.docid`) whose docid the corpus lacks; return which are known."""
    known = corpus.rows(pa.array([entry.docid for entry in entries], pa.string())).is_valid().to_pylist()
    for entry, is_known in zip(entries, known):
        if not is_known:
            problems.add(source, entry.line, f"docid '{entry.docid}' is not in the corpus", field=field)
    return known


def report_duplicates(table: pa.Table, column: str, label: str, problems: ProblemLog) -> None:
    """Each id that appears twice is a problem naming both lines."""
    ids = table.column(column)
    counts = pc.value_counts(ids)
    duplicated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    for value in duplicated.to_pylist()[:10]:
        lines = table.column("line").filter(pc.equal(ids, value)).to_pylist()
        problems.add(label, lines[1], f"{column} '{value}' appears again (first on line {lines[0]}); ids must "
                     "be unique", field=column)


def count_list_items(column: pa.ChunkedArray) -> int:
    """How many items the lists of a list column hold in all."""
    return pc.sum(pc.list_value_length(column)).as_py() or 0


def read_source(source: DataSource, work_dir: Path, separator: str, negatives: NegativesConfig,
                problems: ProblemLog, corpus_docids: pa.ChunkedArray | None = None, include_queries: bool = True
                ) -> tuple[Path | None, QueriesText | None]:
    """Validate a source into text tables: (corpus file or None, queries or None).

    Pass `corpus_docids` of an already cached corpus to skip reading the corpus; `include_queries=False`
    when only the corpus is wanted.
    """
    corpus_file = None
    if source.corpus is not None and corpus_docids is None:
        corpus_file = read_corpus(source.corpus, work_dir, separator, problems)
        corpus_docids = read_arrow_rows(corpus_file).column("docid")
    queries = None
    if source.queries is not None and include_queries:
        corpus = CorpusDocids(corpus_docids) if corpus_docids is not None and source.has_groups else None
        if source.qrels is not None:
            queries = read_beir_groups(source.queries, source.qrels, corpus, work_dir, negatives, problems)
        elif source.queries.kind == "groups":
            queries = read_groups(source.queries, work_dir, separator, problems, corpus)
        else:
            queries = read_queries(source.queries, work_dir, problems)
    if not problems:
        report_empty(source, corpus_file, queries, problems)
    problems.raise_if_any()
    return corpus_file, queries


def report_empty(source: DataSource, corpus_file: Path | None, queries: QueriesText | None,
                 problems: ProblemLog) -> None:
    """A table with no rows is a problem: an empty file (or a split without positives) is a wrong path or a broken
    download far more often than intended, and nothing downstream can train on or index it."""
    if corpus_file is not None and not count_arrow_rows(corpus_file):
        problems.add(source.corpus.label, None, "no passages: the file is empty, blank or only a header")
    if queries is not None and not count_arrow_rows(queries.queries_file):
        if source.qrels is not None:
            problems.add(str(source.qrels), None, "no training groups: no query of the queries file has a relevant "
                         "judgement (score above 0) in this split")
        else:
            kind = "training groups" if queries.has_groups else "queries"
            problems.add(source.queries.label, None, f"no {kind}: the file is empty or blank")
