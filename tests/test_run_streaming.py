"""Run files as Arrow: streamed a few queries at a time equal to read whole, written without per-line Python, and
evaluated with flat memory to the same metrics as ir_measures over the whole run."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap

import ir_measures
import numpy as np
import pytest

from raytev.data import runs
from raytev.data.qrels import Judgement
from raytev.data.runs import iter_run_queries, read_run, run_entries, write_run
from raytev.errors import DataError, ProblemLog
from raytev.eval.metrics import evaluate_run, evaluate_run_file, parse_metrics


def random_run(queries: int, depth: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Query ids, scores with ties (rounded), and docids (a few rows cut short with None, as ANN search leaves)."""
    rng = np.random.default_rng(seed)
    scores = -np.sort(-np.round(rng.random((queries, depth)), 2), axis=1).astype(np.float32)
    docids = np.array([[f"d{rng.integers(0, 10 * depth)}-{column}" for column in range(depth)]
                       for _ in range(queries)], dtype=object)
    docids[1, depth - 2:] = None
    return [f"q{index}" for index in range(queries)], scores, docids


def test_streamed_chunks_equal_the_whole_file_read(tmp_path, monkeypatch):
    query_ids, scores, docids = random_run(23, 9)
    path = tmp_path / "run.tsv"
    write_run(path, query_ids, scores, docids)
    whole = [chunk for chunk in iter_run_queries(path, ProblemLog())]
    monkeypatch.setattr(runs, "READ_BLOCK_BYTES", 100)  # many blocks, queries cut across them
    streamed = list(iter_run_queries(path, ProblemLog(), queries_per_chunk=4, whole_run_bytes=0))
    assert len(whole) == 1 and len(streamed) == 6
    assert [len(set(chunk.column("query_id").to_pylist())) for chunk in streamed] == [4, 4, 4, 4, 4, 3]
    assert runs.pa.concat_tables(streamed).equals(whole[0])
    entries = {query_id: value for chunk in streamed for query_id, value in run_entries(chunk).items()}
    assert entries == read_run(path, ProblemLog())


def test_ranks_follow_scores_then_file_order_also_when_queries_interleave_in_a_small_file(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q2 Q0 a 1 0.5 t\nq1 Q0 b 1 0.1 t\n\nq2 Q0 c 2 0.9 t\nq1 Q0 d 2 0.1 t\nq2 Q0 e 3 0.5 t\n")
    run = read_run(path, ProblemLog())
    assert list(run) == ["q2", "q1"]
    assert [(entry.docid, entry.line) for entry in run["q2"]] == [("c", 4), ("a", 1), ("e", 6)]
    assert [entry.docid for entry in run["q1"]] == ["b", "d"]


def test_a_large_run_whose_query_comes_back_says_where_and_how_to_sort_it(tmp_path):
    path = tmp_path / "run.tsv"
    path.write_text("q1\ta\t1\nq2\tb\t1\nq1\tc\t0.5\n")
    with pytest.raises(DataError, match=r"(?s)run.tsv:3: query 'q1' comes back.*sort -s -k1,1"):
        list(iter_run_queries(path, ProblemLog(), queries_per_chunk=1, whole_run_bytes=0))


def test_bad_lines_are_reported_with_their_line_numbers_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "READ_BLOCK_BYTES", 16)
    path = tmp_path / "run.tsv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("q1\ta\t1\n\nq1\tb\n" + "q1\tc\t0.5\n" * 5 + "q2\td\thigh\nq2\te\t2\n")
    problems = ProblemLog()
    run = {key: value for chunk in iter_run_queries(path, problems, whole_run_bytes=0)
           for key, value in run_entries(chunk).items()}
    assert [(problem.line, problem.message.split(",")[0]) for problem in problems.problems] == [
        (3, "expected 3 columns (qid docid score) or 6 (TREC: qid Q0 docid rank score tag)"),
        (9, "score must be a number")]
    assert [entry.line for entry in run["q1"]] == [1, 4, 5, 6, 7, 8] and [e.docid for e in run["q2"]] == ["e"]


def test_bad_utf8_is_located_like_other_text_files(tmp_path):
    path = tmp_path / "run.tsv"
    path.write_bytes(b"q1\ta\t1\nq1\t\xff\t0.5\n")
    with pytest.raises(DataError, match="run.tsv:2: not UTF-8"):
        read_run(path, ProblemLog())


@pytest.mark.parametrize("run_format", ["tevatron", "trec", "msmarco"])
def test_written_runs_keep_float32_scores_exactly_and_skip_empty_hits(tmp_path, run_format):
    query_ids, scores, docids = random_run(5, 6)
    scores[0] = np.array([3e-7, 1e-5, 123456.7, 1.0, -2.5e-12, -1e20], np.float32)[np.argsort([-3e-7, -1e-5, -123456.7,
                                                                                               -1.0, 2.5e-12, 1e20])]
    path = tmp_path / f"run.{run_format}"
    assert write_run(path, query_ids, scores, docids, run_format) == 5 * 6 - 2
    lines = [line.split() for line in path.read_text().splitlines()]
    if run_format == "tevatron":
        written = np.array([float(fields[2]) for fields in lines[:6]], np.float32)
        assert np.array_equal(written, scores[0])
    if run_format == "trec":
        assert lines[0][1] == "Q0" and lines[0][5] == "raytev" and [fields[3] for fields in lines[:6]] == list("123456")
    if run_format == "msmarco":
        assert [fields[2] for fields in lines[6:10]] == ["1", "2", "3", "4"]  # q1 lost its last two hits
    assert [fields[0] for fields in lines].count("q1") == 4


@pytest.mark.parametrize("queries_per_chunk", [1, 3, 256])
def test_file_evaluation_in_chunks_equals_ir_measures_over_the_whole_run(tmp_path, queries_per_chunk):
    query_ids, scores, docids = random_run(40, 30, seed=1)
    path = tmp_path / "run.tsv"
    write_run(path, query_ids, scores, docids)
    rng = np.random.default_rng(2)
    qrels = [Judgement(i, f"q{q}", docids[q % 40, rng.integers(0, 28)], int(rng.integers(0, 3)))
             for i, q in enumerate(rng.integers(0, 45, size=120))]  # q40..q44: judged, not in the run
    chunked = evaluate_run_file(path, qrels, queries_per_chunk=queries_per_chunk, whole_run_bytes=0)
    assert chunked == evaluate_run(read_run(path, ProblemLog()), qrels)
    # The reference: one ir_measures call over the whole run, ranks encoded as scores as evaluate_run does.
    ranked = {q: [entry.docid for entry in entries] for q, entries in read_run(path, ProblemLog()).items()}
    judged = {}
    for judgement in qrels:
        judged.setdefault(judgement.query_id, {})[judgement.docid] = judgement.relevance
    measures = parse_metrics(chunked)
    shared = {q: judged[q] for q in ranked if q in judged}
    reference = ir_measures.calc_aggregate(list(measures.values()), shared,
                                           {q: {d: float(len(ds) - r) for r, d in enumerate(ds)}
                                            for q, ds in ranked.items() if q in judged})
    assert chunked == pytest.approx({name: reference[measure] for name, measure in measures.items()}, abs=1e-12)
    assert chunked.queries == len(shared) and chunked.missing_queries == len(judged) - len(shared)


def test_file_evaluation_memory_stays_flat_as_the_run_grows(tmp_path):
    # Python objects alive at the peak (tracemalloc) while evaluating runs of 300 and 1,200 queries x depth 200.
    script = textwrap.dedent("""
        import sys, tracemalloc
        import numpy as np
        from raytev.data.qrels import Judgement
        from raytev.data.runs import write_run
        from raytev.eval.metrics import evaluate_run_file
        queries, depth, path = int(sys.argv[1]), 200, sys.argv[2]
        docids = np.array([[f"d{q * 7 + r}" for r in range(depth)] for q in range(queries)], dtype=object)
        write_run(path, [f"q{q}" for q in range(queries)], np.tile(np.linspace(1, 0, depth, dtype=np.float32),
                  (queries, 1)), docids)
        qrels = [Judgement(q, f"q{q}", f"d{q * 8}", 1) for q in range(queries)]
        del docids
        tracemalloc.start()
        evaluate_run_file(path, qrels, queries_per_chunk=64, whole_run_bytes=0)
        print(tracemalloc.get_traced_memory()[1])
    """)
    peaks = [int(subprocess.run([sys.executable, "-c", script, str(queries), str(tmp_path / f"{queries}.tsv")],
                                capture_output=True, text=True, check=True).stdout) for queries in (300, 1200)]
    assert peaks[1] < 1.3 * peaks[0], peaks  # 4x the run, about the same peak
