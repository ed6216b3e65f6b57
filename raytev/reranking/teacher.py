"""A teacher for distillation: a cross-encoder's score of every passage of the training groups (`raytev train
--distill_from RERANKER`, scored once per groups and teacher), or the scores a run file gives them (`--distill_from
RUN`, such as `raytev rerank` writes), stored with the groups as a table of the token cache."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raytev.config.stages import TrainConfig
from raytev.data.cache import CacheTransaction, ParquetShardWriter, TokenTable, file_fingerprint, fingerprint
from raytev.data.pairs import PairTemplate
from raytev.data.prepare import prepare_data
from raytev.data.runs import read_run
from raytev.errors import ProblemLog, RaytevError
from raytev.model.resolved import ResolvedModel, resolve_reranker
from raytev.progress import progress_bar
from raytev.reranking.pool import on_rerankers
from raytev.reranking.shard_reranker import ShardReranker

ROWS_PER_CALL = 64  # training groups an actor scores per call
SCORES = pa.list_(pa.float32())


def teacher_model(config: TrainConfig) -> ResolvedModel:
    """The --distill_from reranker, read with its own tokenizer, prompts and pair length."""
    from raytev.config.sections import ModelSection
    from raytev.modeling.reranker import check_reranker_folder

    model = resolve_reranker(ModelSection(model_name_or_path=config.distill_from, cache_dir=config.model.cache_dir),
                             precision=config.precision, rerank_max_len=config.rerank.rerank_max_len)
    if model.adapter is None:
        check_reranker_folder(model.path, model.cache_dir)
    return model


def distillation_table(queries: TokenTable, config: TrainConfig, cache_dir: Path) -> TokenTable:
    """`queries` (the student's training groups) with positive_scores and negative_scores: the teacher's score of
    each of their passages, in the same order."""
    from_run = Path(config.distill_from).expanduser().is_file()
    if from_run:
        key = fingerprint(kind="distill", groups=queries.manifest["fingerprint"],
                          run=file_fingerprint(config.distill_from))
    else:
        teacher = teacher_model(config)
        key = fingerprint(kind="distill", groups=queries.manifest["fingerprint"], teacher=teacher.identity,
                          dtype=teacher.dtype, max_len=teacher.passage_max_len, eos=teacher.append_eos_token,
                          prefixes=[teacher.settings.query_prefix, teacher.settings.passage_prefix])
    cached = TokenTable.open(cache_dir / f"distill-{key}")
    if cached is not None:
        return cached
    if from_run:
        positives, negatives = run_scores(queries, config.distill_from)
    else:
        # The same groups as the teacher reads text (its tokenizer, pair segments): same source, so the same rows.
        teacher_groups = prepare_data(config.data, teacher).queries
        student_ids, teacher_ids = (table.read(["query_id"]).column("query_id") for table in (queries, teacher_groups))
        if not student_ids.equals(teacher_ids):
            raise RaytevError(f"the teacher's reading of {queries.manifest['source']} has other rows than the "
                              "student's; prepare the data again (`raytev data prepare`).")
        positives, negatives = score_groups(teacher_groups, teacher, config)
    with CacheTransaction(cache_dir) as transaction:
        hidden = transaction.new_table("distill", key)
        writer = ParquetShardWriter(hidden, pq.read_schema(queries.files[0]).append(pa.field("positive_scores", SCORES))
                                    .append(pa.field("negative_scores", SCORES)))
        for file in queries.files:
            part = pq.read_table(file)
            first = pc.min(part.column("row")).as_py()
            rows = slice(first, first + part.num_rows)
            writer.write(part.append_column("positive_scores", pa.array(positives[rows], SCORES))
                         .append_column("negative_scores", pa.array(negatives[rows], SCORES)))
        writer.close()
        transaction.commit(hidden, {**queries.manifest, "kind": "queries", "fingerprint": key,
                                    "files": writer.files, "teacher": config.distill_from,
                                    "groups_fingerprint": queries.manifest["fingerprint"]})
    return TokenTable.open(cache_dir / f"distill-{key}")


def run_scores(queries: TokenTable, run_path: str) -> tuple[list, list]:
    """Each group passage's score in the run; every (query, passage) the run lacks is a problem naming both."""
    problems = ProblemLog()
    run = {query_id: {entry.docid: entry.score for entry in entries}
           for query_id, entries in read_run(run_path, problems).items()}
    problems.raise_if_any()
    rows = queries.read(["query_id", "positive_docids", "negative_docids"]).to_pylist()
    lists: tuple[list, list] = ([], [])
    for row in rows:
        scored = run.get(row["query_id"], {})
        for name, out in (("positive_docids", lists[0]), ("negative_docids", lists[1])):
            for docid in row[name]:
                if docid not in scored:
                    problems.add(run_path, None, f"no score for query '{row['query_id']}' and passage '{docid}' of "
                                 f"{queries.manifest['source']}: the run must score every passage of every group "
                                 "(rerank the groups' own candidates, or pass the reranker folder itself)")
            out.append([scored.get(docid, 0.0) for docid in row[name]])
    problems.raise_if_any()
    return lists


def score_groups(groups: TokenTable, teacher: ResolvedModel, config: TrainConfig) -> tuple[list, list]:
    """The teacher's scores of every row's positives and negatives, on an actor pool (or in this process with
    --num_actors 0)."""
    pairs = PairTemplate.from_tokenizer(teacher.load_tokenizer(), teacher.passage_max_len, teacher.append_eos_token,
                                        groups.manifest["settings"]["pad_token_id"])
    options = dict(table_files=[str(Path(file).resolve()) for file in groups.files], output="", model=teacher,
                   pairs=pairs, batch_size=config.inference.per_device_eval_batch_size,
                   device="cuda" if config.cluster.use_gpu else "cpu")
    calls = [(low, min(low + ROWS_PER_CALL, groups.rows)) for low in range(0, groups.rows, ROWS_PER_CALL)]
    if config.actors.num_actors > 0:
        done = on_rerankers(options, "score_groups", calls, config.actors, config.cluster)
    else:
        scorer = ShardReranker(**options)
        done = (scorer.score_groups(*call) for call in calls)
    positives, negatives = [None] * groups.rows, [None] * groups.rows
    with progress_bar(total=groups.rows, desc="Teacher scores", unit=" groups") as bar:
        for low, positive, negative in done:
            positives[low:low + len(positive)], negatives[low:low + len(negative)] = positive, negative
            bar.update(len(positive))
    return positives, negatives


