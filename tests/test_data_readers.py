"""Line, record, qrels and run readers: good input parses, bad input is located by file, line and field."""

from __future__ import annotations

import gzip

import pytest

from raytev.data.formats import (Passage, parse_corpus_record, parse_query_record, parse_training_group,
                                 passage_text)
from raytev.data.lines import iter_json_records, iter_lines, iter_tsv_rows
from raytev.data.qrels import read_qrels
from raytev.data.runs import read_run
from raytev.errors import DataError, ProblemLog
from helpers import group, passage, write_jsonl


def parse_group(record):
    problems = ProblemLog()
    return parse_training_group(record, "train.jsonl", 7, problems), problems


# --- lines ---------------------------------------------------------------------------------------------

def test_iter_lines_skips_blank_lines_and_numbers_from_one(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("first\n\n  \nfourth\r\n")
    assert list(iter_lines(path)) == [(1, "first"), (4, "fourth")]


def test_gzip_is_read_transparently(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl.gz", [{"x": 1}, {"x": 2}], compress=True)
    assert [record for _, record in iter_json_records(path, ProblemLog())] == [{"x": 1}, {"x": 2}]


def test_truncated_gzip_is_a_located_error(tmp_path):
    data = gzip.compress(b"".join(b'{"x": %d}\n' % i for i in range(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz:\d+: unreadable gzip data") as error:
        list(iter_lines(path))
    assert "gzip -t" in str(error.value)


def test_a_file_that_is_not_gzip_is_a_located_error(tmp_path):
    path = tmp_path / "plain.jsonl.gz"
    path.write_text('{"x": 1}\n')
    with pytest.raises(DataError, match=r"plain\.jsonl\.gz:1: unreadable gzip data"):
        list(iter_lines(path))


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"x": 1}\n{"x": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not UTF-8"):
        list(iter_lines(path))


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        list(iter_lines(tmp_path / "nope.jsonl"))


def test_invalid_json_and_non_objects_are_logged_and_skipped(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ['{"ok": 1}', '{"broken": ', "[1, 2]", '{"ok": 2}'])
    problems = ProblemLog()
    records = list(iter_json_records(path, problems))
    assert records == [(1, {"ok": 1}), (4, {"ok": 2})]
    assert [(p.line, p.message.split(":")[0]) for p in problems.problems] == [(2, "invalid JSON"),
                                                                            (3, "expected a JSON object, got list")]


def test_problem_log_stops_at_its_limit():
    problems = ProblemLog(limit=3)
    problems.add("f", 1, "one")
    problems.add("f", 2, "two")
    with pytest.raises(DataError, match="stopped there") as error:
        problems.add("f", 3, "three")
    assert len(error.value.problems) == 3


def test_tsv_rows_check_the_column_count_and_skip_a_header(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("id\ttext\nd1\thello\nd2\tone\ttoo many\textra\n")
    problems = ProblemLog()
    assert list(iter_tsv_rows(path, (2, 3), problems, header="id")) == [(2, ["d1", "hello"])]
    assert str(problems.problems[0]) == f"{path}:3: expected 2 or 3 tab-separated columns, got 4"


# --- training groups --------------------------------------------------------------------------------------

def test_a_tevatron_group_parses_with_answers_and_int_ids():
    parsed, problems = parse_group(group(7, "what is a cat", [passage("d1", "A cat.", "Cat")],
                                         [{"docid": 2, "text": "A dog."}], answers=["cat"]))
    assert not problems
    assert parsed.query.query_id == "7" and parsed.query.answers == ["cat"]
    assert parsed.positives == [Passage("d1", "Cat", "A cat.")]
    assert parsed.negatives == [Passage("2", "", "A dog.")]


def test_missing_negatives_mean_none():
    record = group("q", "query", [passage("d1", "x")], [])
    del record["negative_passages"]
    parsed, problems = parse_group(record)
    assert not problems and parsed.negatives == []


@pytest.mark.parametrize("change, field, message", [
    (lambda r: r.pop("query_id"), "query_id or _id", "missing"),
    (lambda r: r.update(query=5), "query", "must be a string, got int"),
    (lambda r: r.update(query_id=True), "query_id", "must be a string or an integer id, got bool"),
    (lambda r: r.update(query_id="  "), "query_id", "is empty"),
    (lambda r: r.update(positive_passages=[]), "positive_passages", "the group has no positive passage"),
    (lambda r: r.pop("positive_passages"), "positive_passages", "missing"),
    (lambda r: r.update(positive_passages={"text": "x"}), "positive_passages", "must be a list, got dict"),
    (lambda r: r.update(negative_passages=["text"]), "negative_passages[0]", "must be an object"),
    (lambda r: r["positive_passages"][0].pop("text"), "positive_passages[0].text", "missing"),
    (lambda r: r["positive_passages"][0].update(title=3), "positive_passages[0].title", "must be a string"),
    (lambda r: r["positive_passages"][0].update(docid=[1]), "positive_passages[0].docid", "must be a string or"),
    (lambda r: r.update(answers="cat"), "answers", "must be a list, got str"),
    (lambda r: r.update(answers=["cat", 3]), "answers[1]", "must be a string, got int"),
])
def test_each_group_defect_names_its_field(change, field, message):
    record = group("q1", "what", [passage("d1", "A cat.")], [passage("d2", "A dog.")])
    change(record)
    parsed, problems = parse_group(record)
    assert parsed is None
    assert problems.problems[0].field == field, problems.problems
    assert problems.problems[0].message.startswith(message)
    assert str(problems.problems[0]).startswith(f"train.jsonl:7: field '{field}': ")


def test_groups_naming_docids_parse_as_references():
    parsed, problems = parse_group({"query_id": "q", "query_text": "what", "positive_document_ids": ["d1", 2],
                                    "negative_document_ids": ["d3"]})
    assert not problems
    assert parsed.positives == ["d1", "2"] and parsed.negatives == ["d3"]


def test_docid_groups_need_a_positive():
    parsed, problems = parse_group({"query_id": "q", "query": "w", "positive_document_ids": []})
    assert parsed is None and problems.problems[0].field == "positive_document_ids"


# --- corpus and queries -------------------------------------------------------------------------------------

def test_corpus_records_accept_docid_or_beir_id():
    problems = ProblemLog()
    assert parse_corpus_record({"_id": "d1", "title": "T", "text": "x"}, "c", 1, problems) == Passage("d1", "T", "x")
    assert parse_corpus_record({"docid": 9, "text": "x"}, "c", 2, problems) == Passage("9", "", "x")
    assert parse_corpus_record({"docid": "d", "title": None, "text": "x"}, "c", 3, problems) == Passage("d", "", "x")
    assert not problems
    assert parse_corpus_record({"title": "T", "text": "x"}, "c", 4, problems) is None
    assert parse_corpus_record({"docid": "d", "text": 1.5}, "c", 5, problems) is None
    assert [str(p) for p in problems.problems] == ["c:4: field 'docid or _id': missing",
                                                   "c:5: field 'text': must be a string, got float"]


def test_query_records_accept_tevatron_and_beir_fields():
    problems = ProblemLog()
    assert parse_query_record({"query_id": "1", "query": "a"}, "q", 1, problems).text == "a"
    assert parse_query_record({"_id": "2", "text": "b", "metadata": {}}, "q", 2, problems).query_id == "2"
    assert not problems
    assert parse_query_record({"_id": "3"}, "q", 3, problems) is None
    assert problems.problems[0].field == "query or query_text or text"


def test_passage_text_joins_title_and_text():
    assert passage_text(Passage("d", "Title", "Body.")) == "Title Body."
    assert passage_text(Passage("d", "Title", "Body."), separator=" [SEP] ") == "Title [SEP] Body."
    assert passage_text(Passage("d", "", " Body. ")) == "Body."


# --- qrels and runs ------------------------------------------------------------------------------------------

def test_beir_and_trec_qrels(tmp_path):
    beir = tmp_path / "beir.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    trec = tmp_path / "trec.txt"
    trec.write_text("q1 0 d1 2\nq2 Q0 d9 1.0\n")
    problems = ProblemLog()
    assert [(j.line, j.query_id, j.docid, j.relevance) for j in read_qrels(beir, problems)] == [
        (2, "q1", "d1", 1), (3, "q1", "d2", 0)]
    assert [(j.query_id, j.docid, j.relevance) for j in read_qrels(trec, problems)] == [
        ("q1", "d1", 2), ("q2", "d9", 1)]
    assert not problems


def test_bad_qrels_rows_are_located(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("q1\td1\t1\nq1\td2\nq1\td3\thigh\nq1\td4\t0.5\n")
    problems = ProblemLog()
    assert len(read_qrels(path, problems)) == 1
    assert [(p.line, p.field) for p in problems.problems] == [(2, None), (3, "score"), (4, "score")]


def test_runs_in_tevatron_and_trec_formats_sort_by_score(tmp_path):
    tevatron = tmp_path / "run.txt"
    tevatron.write_text("q1\td1\t0.5\nq1\td2\t0.9\nq2\td1\t0.1\n")
    trec = tmp_path / "run.trec"
    trec.write_text("q1 Q0 d1 2 0.5 raytev\nq1 Q0 d2 1 0.9 raytev\n")
    problems = ProblemLog()
    for path in (tevatron, trec):
        assert [entry.docid for entry in read_run(path, problems)["q1"]] == ["d2", "d1"]
    assert not problems


def test_bad_run_rows_are_located(tmp_path):
    path = tmp_path / "run.txt"
    path.write_text("q1\td1\tnan-ish\nq1 d2\n")
    problems = ProblemLog()
    read_run(path, problems)
    assert [(p.line, p.field) for p in problems.problems] == [(1, "score"), (2, None)]
