"""Streaming group building and input hashing: the on-disk join gives the very tables the in-memory join gave, for
every way groups name their passages; the file-hash memo trusts only unchanged files."""

from __future__ import annotations

import json
import os
import random
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import TINY_WORDS, make_config, passage, write_jsonl
from transformers import AutoTokenizer

import raytev.data.cache as cache
import raytev.data.group_tokens as group_tokens
import raytev.data.token_tables as token_tables
import raytev.data.tokenize as tokenize
from raytev.config.stages import PrepareConfig
from raytev.data.arrow_rows import ArrowRowWriter, iter_arrow_batches, read_arrow_rows
from raytev.data.cache import FileHashes
from raytev.data.prepare import prepare
from raytev.data.reading import CorpusDocids
from raytev.data.tokenize import TOKENS, TextTokenizer, tokenize_arrow_texts

PASSAGES, QUERIES = 60, 25


def gather_token_lists(rows: pa.ChunkedArray, tokens: pa.ChunkedArray) -> pa.ListArray:
    """For each group's list of passage rows, the list of those passages' token lists (the join before streaming)."""
    rows = rows.combine_chunks()
    offsets = pc.subtract(rows.offsets, rows.offsets[0])  # a slice's offsets do not start at 0
    taken = tokens.take(rows.flatten()).combine_chunks() if len(rows.flatten()) else pa.array([], TOKENS)
    return pa.ListArray.from_arrays(offsets, taken)


def in_memory_join(groups_file, passages, max_len, work_dir, groups_per_chunk):
    """The reference: every passage's tokens in memory, each chunk's candidates taken from them."""
    tokens = pa.chunked_array(list(passages), TOKENS)
    groups = read_arrow_rows(groups_file)
    for start in range(0, groups.num_rows, groups_per_chunk):
        chunk = groups.slice(start, groups_per_chunk)
        yield gather_token_lists(chunk.column("positive_rows"), tokens), \
            gather_token_lists(chunk.column("negative_rows"), tokens)


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(TINY_WORDS) for _ in range(count))


@pytest.fixture
def beir(tmp_path):
    """A BEIR folder of 60 passages of 1-12 words and 25 train queries with 1-3 positives, and a run file."""
    rng = random.Random(0)
    root = tmp_path / "beir"
    write_jsonl(root / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": f"{words(rng, rng.randint(1, 12))} {i}"}
                                        for i in range(PASSAGES)])
    write_jsonl(root / "queries.jsonl", [{"_id": f"q{i}", "text": words(rng, 3)} for i in range(QUERIES)])
    (root / "qrels").mkdir()
    judgements = [f"q{q}\td{d}\t1" for q in range(QUERIES) for d in rng.sample(range(PASSAGES), rng.randint(1, 3))]
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(judgements) + "\n")
    run = tmp_path / "run.txt"
    run.write_text("".join(f"q{q}\td{d}\t{-rank}\n" for q in range(QUERIES)
                           for rank, d in enumerate(rng.sample(range(PASSAGES), rng.randint(0, 9)))))
    return root, run


@pytest.fixture
def tevatron_inline(tmp_path):
    """25 Tevatron groups with their passages written out: 1-2 positives, 0-5 negatives."""
    rng = random.Random(1)
    groups = []
    for q in range(QUERIES):
        candidates = [passage(f"d{rng.randrange(PASSAGES)}", words(rng, rng.randint(1, 12)), words(rng, 1))
                      for _ in range(rng.randint(1, 2) + rng.randint(0, 5))]
        positives = rng.randint(1, min(2, len(candidates)))
        groups.append({"query_id": f"q{q}", "query": words(rng, 3), "positive_passages": candidates[:positives],
                       "negative_passages": candidates[positives:]})
    return write_jsonl(tmp_path / "train.jsonl", groups)


@pytest.fixture
def tevatron_docids(tmp_path, beir):
    """25 groups naming corpus docids (Tevatron's newer form), with the BEIR folder's corpus."""
    rng = random.Random(2)
    groups = [{"query_id": f"q{q}", "query_text": words(rng, 3),
               "positive_document_ids": [f"d{d}" for d in rng.sample(range(PASSAGES), rng.randint(1, 2))],
               "negative_document_ids": [f"d{d}" for d in rng.sample(range(PASSAGES), rng.randint(0, 6))]}
              for q in range(QUERIES)]
    return write_jsonl(tmp_path / "docid-train.jsonl", groups), beir[0] / "corpus.jsonl"


@pytest.fixture
def tiny_join_sizes(monkeypatch):
    """Sizes that make every path of the join run many times: 4 groups a chunk, one chunk a slot partition,
    passages read 5 at a time in parts of 7 rows, 2 lists per take, tokenizing 3 texts a task."""
    monkeypatch.setattr(token_tables, "GROUPS_PER_CHUNK", 4)
    monkeypatch.setattr(token_tables, "PASSAGE_BATCH_ROWS", 5)
    monkeypatch.setattr(group_tokens, "SPILL_BYTES", 1)
    monkeypatch.setattr(group_tokens, "ROWS_PER_PART", 7)
    monkeypatch.setattr(group_tokens, "TAKE_AT_ONCE", 2)
    monkeypatch.setattr(tokenize, "TEXTS_PER_TASK", 3)
    partitions = []
    plan = group_tokens.plan_partitions

    def recorded_plan(*args):
        partitions.append(plan(*args))
        return partitions[-1]

    monkeypatch.setattr(group_tokens, "plan_partitions", recorded_plan)
    return partitions


def table_content(table) -> pa.Table:
    return pa.concat_tables(pq.read_table(file) for file in table.files)


def manifest_counts(table) -> dict:
    return {key: value for key, value in table.manifest.items() if key not in ("created", "files")}


@pytest.mark.parametrize("form", ["beir random negatives", "beir negatives run", "tevatron inline",
                                  "tevatron corpus_path"])
def test_streaming_join_equals_the_in_memory_join(tiny_tokenizer_dir, tmp_path, beir, tevatron_inline,
                                                  tevatron_docids, tiny_join_sizes, monkeypatch, form):
    flags = {"beir random negatives": {"dataset_path": str(beir[0]), "num_negatives": 4},
             "beir negatives run": {"dataset_path": str(beir[0]), "negatives_run": str(beir[1]), "num_negatives": 5},
             "tevatron inline": {"dataset_path": str(tevatron_inline)},
             "tevatron corpus_path": {"dataset_path": str(tevatron_docids[0]),
                                      "corpus_path": str(tevatron_docids[1])}}[form]

    def run(cache_name):
        config = make_config(PrepareConfig, model_name_or_path=str(tiny_tokenizer_dir), passage_max_len=8,
                             query_max_len=6, dataset_cache_dir=str(tmp_path / cache_name), **flags)
        return prepare(config)

    streamed = run("streamed")
    assert len(tiny_join_sizes[0]) - 1 >= 5, "the join should have spilled several partitions"
    monkeypatch.setattr(token_tables, "join_group_tokens", in_memory_join)
    reference = run("reference")
    assert len(tiny_join_sizes) == 1, "the reference should not have used the streaming join"

    streamed_table, reference_table = table_content(streamed.queries), table_content(reference.queries)
    assert streamed_table.num_rows == QUERIES
    assert streamed_table.schema == reference_table.schema
    assert streamed_table.equals(reference_table)
    assert manifest_counts(streamed.queries) == manifest_counts(reference.queries)
    assert streamed.queries.manifest["negatives"] > 0
    if streamed.corpus is not None:  # and the candidates' tokens are the corpus's own
        corpus = {row["docid"]: row["input_ids"] for row in table_content(streamed.corpus).to_pylist()}
        for group in streamed_table.to_pylist():
            assert group["negative_input_ids"] == [corpus[docid] for docid in group["negative_docids"]]


def test_corpus_table_is_written_in_chunks_with_the_same_rows(tiny_tokenizer_dir, tmp_path, beir, monkeypatch):
    monkeypatch.setattr(token_tables, "CORPUS_ROWS_PER_CHUNK", 7)
    monkeypatch.setattr(tokenize, "TEXTS_PER_TASK", 5)
    config = make_config(PrepareConfig, model_name_or_path=str(tiny_tokenizer_dir), passage_max_len=8,
                         dataset_path=str(beir[0]))
    corpus = table_content(prepare(config).corpus)
    tokenizer = TextTokenizer(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)), 8)
    texts = [json.loads(line)["text"] for line in (beir[0] / "corpus.jsonl").read_text().splitlines()]
    assert corpus.column("row").to_pylist() == list(range(PASSAGES))
    assert corpus.column("docid").to_pylist() == [f"d{i}" for i in range(PASSAGES)]
    assert corpus.column("input_ids").to_pylist() == tokenizer(texts)


def test_worker_processes_tokenize_as_one_process_does(tiny_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tokenize, "TEXTS_PER_TASK", 4)
    rng = random.Random(3)
    text_file = tmp_path / "texts.arrow"
    with ArrowRowWriter(text_file, pa.schema([("text", pa.string())]), batch_rows=7) as writer:
        for _ in range(50):
            writer.append(text=words(rng, rng.randint(0, 12)))
    tokenizer = TextTokenizer(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)), 6)
    results = {}
    for num_proc in (1, 2):
        tokens_file = tmp_path / f"tokens-{num_proc}.arrow"
        stats = tokenize_arrow_texts(text_file, tokenizer, tokens_file, "texts", num_proc)
        results[num_proc] = (pa.Table.from_batches(list(iter_arrow_batches(tokens_file))), stats.as_dict())
    assert results[2][0].equals(results[1][0]) and results[2][1] == results[1][1]
    texts = read_arrow_rows(text_file).column("text").to_pylist()
    assert results[1][0].column("input_ids").to_pylist() == tokenizer(texts)
    lengths = [len(ids) for ids in tokenizer(texts)]
    assert results[1][1] == {"mean_tokens": round(sum(lengths) / 50, 1), "truncated": sum(n >= 6 for n in lengths)}


def test_corpus_docids_find_rows_by_binary_search():
    corpus = CorpusDocids(pa.chunked_array([["d3", "d1"], ["d2", "d1", "d10"]]))
    assert corpus.rows(pa.array(["d1", "d10", "d2", "d3", "nowhere", "d0", "zz"])).to_pylist() == [
        1, 4, 2, 0, None, None, None]  # a docid that appears twice is its first row
    assert CorpusDocids(pa.array([], pa.string())).rows(pa.array(["d1"])).to_pylist() == [None]


# --- the file-hash memo -------------------------------------------------------------------------------------------

@pytest.fixture
def hashed_paths(monkeypatch):
    """The files read in full to hash them, in order."""
    paths = []
    real = cache.file_fingerprint
    monkeypatch.setattr(cache, "file_fingerprint", lambda path: paths.append(path.name) or real(path))
    return paths


def age(*paths, seconds: float = 3600) -> None:
    """Set files' modification times into the past (the memo distrusts times within seconds of now)."""
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def test_unchanged_files_are_hashed_once(tmp_path, hashed_paths):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "a cat"}\n')
    age(corpus)
    memo_file = tmp_path / "cache" / "input-hashes.json"
    first = FileHashes(memo_file)
    digest = first(corpus)
    first.save()
    assert FileHashes(memo_file)(corpus) == digest == cache.file_fingerprint(corpus)
    assert hashed_paths == ["corpus.jsonl", "corpus.jsonl"]  # the first read and the check above, not the memo

    hashed_paths.clear()
    age(corpus, seconds=1800)  # touched: a new modification time, the same bytes
    assert FileHashes(memo_file)(corpus) == digest and hashed_paths == ["corpus.jsonl"]
    hashed_paths.clear()
    assert FileHashes(memo_file, rehash=True)(corpus) == digest and hashed_paths == ["corpus.jsonl"]


def test_a_file_changed_just_now_is_not_remembered(tmp_path, hashed_paths):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "a cat"}\n')
    memo = FileHashes(tmp_path / "memo.json")
    memo(corpus)
    memo.save()
    FileHashes(tmp_path / "memo.json")(corpus)
    assert hashed_paths == ["corpus.jsonl", "corpus.jsonl"] and not (tmp_path / "memo.json").exists()


def test_prepare_trusts_the_memo_until_told_to_rehash(tiny_tokenizer_dir, tmp_path, beir, hashed_paths):
    root = beir[0]
    files = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / "train.tsv"]
    age(*files)

    def run(**flags):
        hashed_paths.clear()
        return prepare(make_config(PrepareConfig, model_name_or_path=str(tiny_tokenizer_dir),
                                   dataset_path=str(root), dataset_cache_dir=str(tmp_path / "cache"), **flags))

    first = run()
    assert sorted(hashed_paths) == ["corpus.jsonl", "queries.jsonl", "train.tsv"]
    assert (tmp_path / "cache" / cache.FILE_HASHES).is_file()
    assert run().all_reused and hashed_paths == []
    # A file rewritten in place with its old size and time keeps its remembered hash, until --rehash_inputs.
    stat = files[1].stat()
    lines = files[1].read_text().splitlines()
    record = json.loads(lines[0])
    lines[0] = json.dumps({**record, "text": record["text"].upper()})
    files[1].write_text("\n".join(lines) + "\n")
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert files[1].stat().st_size == stat.st_size
    assert run().all_reused and hashed_paths == []
    again = run(rehash_inputs=True)
    assert sorted(hashed_paths) == ["corpus.jsonl", "queries.jsonl", "train.tsv"]
    assert again.reused == {"corpus": True, "queries": False} and again.queries.path != first.queries.path
