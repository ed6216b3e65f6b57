"""Fuzzing the data readers: bad files end in a success that holds what the file says, or in a RaytevError that names
the file (and the line at fault) - never in another exception, and never in a half-written cache table.

Derandomized and without a database, so CI runs the same cases every time; CASES counts the cases each property ran
(printed at the end of the module with `pytest -s`).
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from helpers import make_config, make_tiny_beir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from raytev.config.sections import DataSection
from raytev.config.stages import PrepareConfig
from raytev.data.arrow_rows import read_arrow_rows
from raytev.data.lines import iter_lines
from raytev.data.prepare import prepare
from raytev.data.qrels import read_qrels
from raytev.data.reading import NegativesConfig, read_source
from raytev.data.runs import read_run
from raytev.data.sources import resolve_source
from raytev.errors import DataError, ProblemLog, RaytevError

CASES: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()  # of those, how many ended in a located error (the rest read the file)
CURRENT = [""]


def count_case(name: str) -> None:
    CASES[name] += 1
    CURRENT[0] = name


def fuzz(max_examples: int):
    """Hypothesis settings for these properties: the same cases on every run, no example database."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.large_base_example,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def report_cases():
    yield
    print(f"\nfuzz cases run: {sum(CASES.values())} ({', '.join(f'{k} {v}' for k, v in sorted(CASES.items()))}); "
          f"{dict(OUTCOMES)}")


# --- building bad files -------------------------------------------------------------------------------------------

# Any character; lone surrogates (json.dumps escapes them as \udxxx, which JSON allows) drawn often, not by chance.
SURROGATE_TEXT = st.builds(lambda head, low: head + chr(low), st.text(max_size=3), st.integers(0xD800, 0xDFFF))
ANY_TEXT = st.one_of(st.text(max_size=12), SURROGATE_TEXT)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), ANY_TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(ANY_TEXT, inner, max_size=3)),
                           max_leaves=8)
DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than the JSON parser recurses
HUGE_INT = b"9" * 5000  # more digits than Python converts to int by default

# Lines no JSON reader should take: cut JSON, non-objects, deep nesting, huge ints, invalid UTF-8, stray bytes.
BAD_JSON_LINES = st.one_of(
    st.sampled_from([b'{"docid": "d", "text": ', b"[1, 2]", b"null", b'"text"', b"{'single': 'quotes'}",
                     b'{"a": ' + DEEP + b"}", b'{"docid": ' + HUGE_INT + b', "text": "x"}', b"\xff\xfe{}",
                     b'{"text": "caf\xe9"}', b"\x00", b'{"docid": "d", "text": "x"} trailing', b"NaN"]),
    st.binary(min_size=1, max_size=20).filter(lambda raw: b"\n" not in raw and raw.strip()),
)


BLANK_LINES = st.sampled_from([b"", b"  ", b"\t"])


@st.composite
def line_files(draw, lines: st.SearchStrategy[bytes] | list[bytes], min_lines: int = 0, max_lines: int = 8) -> bytes:
    """Lines (drawn, or these in order) joined by LF or CRLF, perhaps with blank lines between, a BOM, and no final
    newline."""
    if isinstance(lines, list):
        chosen = [part for line in lines for part in ([draw(BLANK_LINES)] if draw(st.booleans()) else []) + [line]]
    else:
        chosen = draw(st.lists(st.one_of(lines, BLANK_LINES), min_size=min_lines, max_size=max_lines))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = ending.join(chosen) + (ending if chosen and draw(st.booleans()) else b"")
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + data


@st.composite
def stored(draw, data: bytes, stem: str) -> tuple[str, bytes]:
    """(file name, bytes): the data as written, gzip-compressed, gzip cut at a byte, gzip with a byte changed, or
    plain bytes under a .gz name."""
    form = draw(st.sampled_from(["plain", "plain", "gzip", "gzip", "cut", "flip", "not-gzip"]))
    if form == "plain":
        return stem, data
    if form == "not-gzip":
        return stem + ".gz", data
    packed = bytearray(gzip.compress(data, mtime=0))
    at = draw(st.integers(0, len(packed) - 1))
    if form == "cut":
        return stem + ".gz", bytes(packed[:at])
    if form == "flip":
        packed[at] ^= draw(st.integers(1, 255))
    return stem + ".gz", bytes(packed)


def line_count(path: Path) -> int:
    """How many lines a file's text holds, counted as generously as any reader counts them (CR, LF, CRLF)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except Exception:  # unreadable: any line number up to where it broke is plausible
            return 1 << 30
    return len(re.split(rb"\r\n|\r|\n", data))


def assert_located(error: RaytevError, path: Path) -> None:
    """The error names the file, and each problem's line is one the file has."""
    OUTCOMES[f"{CURRENT[0]} failed"] += 1
    assert str(path) in str(error), str(error)
    if isinstance(error, DataError):
        lines = line_count(path) + 1  # a gzip error names the line after the last one read
        for problem in error.problems:
            assert str(path) in problem.source, problem
            assert problem.line is None or 1 <= problem.line <= lines, (problem, lines)


def read_path(path: Path, **flags):
    """What `data validate` does with a file or folder: (corpus table or None, queries table or None)."""
    with tempfile.TemporaryDirectory() as work:
        source = resolve_source(DataSection(dataset_path=str(path), **flags))
        corpus, queries = read_source(source, Path(work), " ", NegativesConfig(count=3), ProblemLog())
        return (read_arrow_rows(corpus).to_pylist() if corpus else None,
                read_arrow_rows(queries.queries_file).to_pylist() if queries else None)


def written(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def record_line(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def nonblank_lines(path: Path) -> list[str]:
    return [line for _, line in iter_lines(path)]


# --- JSON Lines corpora, queries and training groups -----------------------------------------------------------

CORPUS_RECORDS = st.fixed_dictionaries({}, optional={
    "docid": st.one_of(st.sampled_from(["d1", "d2", "d3"]), JSON_VALUES), "_id": st.sampled_from(["d1", "d4"]),
    "title": st.one_of(st.just("T"), JSON_VALUES), "text": st.one_of(st.just("a cat"), JSON_VALUES),
    "metadata": JSON_VALUES})
QUERY_RECORDS = st.fixed_dictionaries({}, optional={
    "query_id": st.one_of(st.sampled_from(["q1", "q2", 3]), JSON_VALUES), "query": st.one_of(st.just("w"), JSON_VALUES),
    "answers": st.one_of(st.just(["a"]), JSON_VALUES), "text": JSON_VALUES})
PASSAGE_OBJECTS = st.one_of(st.fixed_dictionaries({"text": st.one_of(st.just("x"), JSON_VALUES)}, optional={
    "docid": st.one_of(st.just("p"), JSON_VALUES), "title": JSON_VALUES}), JSON_VALUES)
GROUP_RECORDS = st.fixed_dictionaries({"positive_passages": st.one_of(st.lists(PASSAGE_OBJECTS, max_size=2),
                                                                      JSON_VALUES)}, optional={
    "query_id": st.one_of(st.sampled_from(["q1", "q2"]), JSON_VALUES), "query": st.one_of(st.just("w"), JSON_VALUES),
    "negative_passages": st.one_of(st.lists(PASSAGE_OBJECTS, max_size=2), JSON_VALUES),
    "answers": JSON_VALUES})
DOCID_GROUP_RECORDS = st.fixed_dictionaries({"positive_document_ids": st.one_of(
    st.lists(st.one_of(st.sampled_from(["d1", "d2"]), JSON_VALUES), max_size=2), JSON_VALUES)}, optional={
    "query_id": st.one_of(st.just("q1"), JSON_VALUES), "query_text": st.just("w"),
    "negative_document_ids": st.lists(st.sampled_from(["d1", "d9"]), max_size=2)})


# Records every reader takes, of any text: so that the success side of each property is exercised as well.
IDS = st.one_of(st.text(min_size=1).filter(str.strip), st.integers())
TEXTS = st.text(max_size=30)
VALID_PASSAGES = st.fixed_dictionaries({"text": TEXTS}, optional={"docid": IDS, "title": st.one_of(st.none(), TEXTS)})
VALID_RECORDS = {
    "corpus": st.one_of(st.fixed_dictionaries({"docid": IDS, "text": TEXTS}, optional={
        "title": st.one_of(st.none(), TEXTS), "metadata": JSON_VALUES}),  # unread fields may hold anything
        st.fixed_dictionaries({"_id": IDS, "title": TEXTS, "text": TEXTS})),
    "queries": st.fixed_dictionaries({"query_id": IDS, "query": TEXTS}, optional={"answers": st.lists(TEXTS)}),
    "groups": st.fixed_dictionaries({"query_id": IDS, "query": TEXTS, "positive_passages": st.lists(
        VALID_PASSAGES, min_size=1, max_size=2)}, optional={"negative_passages": st.lists(VALID_PASSAGES, max_size=2),
                                                            "answers": st.lists(TEXTS, max_size=2)}),
}


def jsonl_lines(records):
    return st.one_of(records.map(record_line), records.map(record_line), BAD_JSON_LINES)


@st.composite
def jsonl_files(draw, records, min_lines: int = 0, valid: str | None = None):
    """A fuzzed JSON Lines file; with `valid` (a VALID_RECORDS kind), half of them hold only good records."""
    if valid and draw(st.booleans()):
        ids = {"corpus": lambda r: str(r.get("docid", r.get("_id"))), "queries": lambda r: str(r["query_id"]),
               "groups": lambda r: 0}[valid]
        records = draw(st.lists(VALID_RECORDS[valid], min_size=1, max_size=6, unique_by=ids))
        return draw(stored(draw(line_files([record_line(record) for record in records])), "data.jsonl"))
    return draw(stored(draw(line_files(jsonl_lines(records), min_lines=min_lines)), "data.jsonl"))


@fuzz(max_examples=200)
@given(file=jsonl_files(CORPUS_RECORDS, valid="corpus"))
@example(file=("data.jsonl", b'{"docid": "d1", "text": "x\\ud800"}\n'))  # lone surrogate: was UnicodeEncodeError
@example(file=("data.jsonl", b'{"docid": ' + HUGE_INT + b', "text": "x"}\n'))  # was ValueError
@example(file=("data.jsonl", b'{"docid": "d1", "text": ' + DEEP + b"}\n"))  # was RecursionError
@example(file=("data.jsonl", b""))  # was an empty table; now "no passages"
def test_corpus_jsonl_reads_or_fails_located(file):
    count_case("corpus jsonl")
    name, data = file
    with tempfile.TemporaryDirectory() as folder:
        path = written(Path(folder), name, data)
        try:
            corpus, queries = read_path(path)
        except RaytevError as error:
            assert_located(error, path)
            return
        # Success means every record was good: one row per non-blank line, unique docids, the file's own text.
        rows = corpus if corpus is not None else queries
        lines = dict(iter_lines(path))
        assert rows and len(rows) == len(lines) and all(row["line"] in lines for row in rows)
        if corpus is not None:
            assert len({row["docid"] for row in corpus}) == len(corpus)


@fuzz(max_examples=100)
@given(file=jsonl_files(QUERY_RECORDS, valid="queries"))
@example(file=("data.jsonl", b'{"query_id": "q", "query": "w", "answers": ["\\udfff"]}\n'))  # was UnicodeEncodeError
def test_query_jsonl_reads_or_fails_located(file):
    count_case("queries jsonl")
    name, data = file
    with tempfile.TemporaryDirectory() as folder:
        path = written(Path(folder), name, data)
        try:
            corpus, queries = read_path(path, encode_is_query=True)
        except RaytevError as error:
            assert_located(error, path)
            return
        rows = queries if queries is not None else corpus
        assert rows and len(rows) == len(nonblank_lines(path))
        if queries is not None and "query_id" in rows[0] and "positive_docids" not in rows[0]:
            assert len({row["query_id"] for row in rows}) == len(rows)  # repeated query ids are problems


@fuzz(max_examples=200)
@given(file=jsonl_files(st.one_of(GROUP_RECORDS, DOCID_GROUP_RECORDS), valid="groups"))
@example(file=("data.jsonl", b'{"query_id": "q", "query": "w", "positive_passages": [{"text": "\\ud83d"}]}\n'))
@example(file=("data.jsonl", b"\n  \r\n"))  # was an empty table; now "no training groups"
def test_training_groups_read_or_fail_located(file):
    count_case("training groups")
    name, data = file
    with tempfile.TemporaryDirectory() as folder:
        path = written(Path(folder), name, data)
        try:
            _, groups = read_path(path)
        except RaytevError as error:
            assert_located(error, path)
            return
        assert groups and len(groups) == len(nonblank_lines(path))
        for group in groups:  # repeated query ids are accepted: each group is a training example
            assert group["positive_docids"] and len(group["positive_rows"]) == len(group["positive_docids"])


# One wrong value in one field of one record among good ones: the error names that line and field.
GOOD = {
    "corpus": {"docid": "d", "title": "T", "text": "a cat"},
    "queries": {"query_id": "q", "query": "what", "answers": ["a"]},
    "groups": {"query_id": "q", "query": "what", "positive_passages": [{"docid": "p", "title": "", "text": "x"}],
               "negative_passages": [{"docid": "n", "text": "y"}], "answers": ["a"]},
}
NOT_TEXT = st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(SCALARS, max_size=2),
                     st.dictionaries(st.text(max_size=3), SCALARS, max_size=2), SURROGATE_TEXT)
NOT_ID = st.one_of(st.floats(), st.booleans(), st.lists(SCALARS, max_size=2),
                   st.dictionaries(st.text(max_size=3), SCALARS, max_size=2), st.sampled_from(["", " ", "\t"]),
                   SURROGATE_TEXT)
NOT_PASSAGES = st.one_of(NOT_TEXT.filter(lambda value: not isinstance(value, list)), ANY_TEXT,
                         st.lists(st.one_of(st.none(), NOT_TEXT.filter(lambda v: not isinstance(v, dict))),
                                  min_size=1, max_size=2))
NOT_STRING_LIST = st.one_of(st.integers(), st.floats(), st.booleans(), ANY_TEXT, st.dictionaries(ANY_TEXT, SCALARS),
                            st.lists(st.one_of(st.none(), st.integers(), SURROGATE_TEXT), min_size=1, max_size=2))
WRONG = {  # (kind, field as the problem names it, how to break it)
    ("corpus", "docid"): st.one_of(st.none(), NOT_ID), ("corpus", "title"): NOT_TEXT,
    ("corpus", "text"): st.one_of(st.none(), NOT_TEXT),
    ("queries", "query_id"): st.one_of(st.none(), NOT_ID), ("queries", "query"): st.one_of(st.none(), NOT_TEXT),
    ("queries", "answers"): NOT_STRING_LIST,
    ("groups", "query_id"): st.one_of(st.none(), NOT_ID), ("groups", "query"): st.one_of(st.none(), NOT_TEXT),
    ("groups", "answers"): NOT_STRING_LIST, ("groups", "positive_passages"): st.one_of(st.none(), NOT_PASSAGES),
    ("groups", "negative_passages"): NOT_PASSAGES,
    ("groups", "positive_passages[0].docid"): NOT_ID, ("groups", "positive_passages[0].title"): NOT_TEXT,
    ("groups", "positive_passages[0].text"): st.one_of(st.none(), NOT_TEXT),
}


@fuzz(max_examples=200)
@given(target=st.sampled_from(sorted(WRONG)), data=st.data(), before=st.integers(0, 3), after=st.integers(0, 3),
       gz=st.booleans())
def test_a_wrong_type_in_any_field_names_the_line_and_field(target, data, before, after, gz):
    count_case("wrong field types")
    kind, field = target
    value = data.draw(WRONG[target])
    bad = json.loads(json.dumps(GOOD[kind]))
    holder, key = (bad["positive_passages"][0], field.split(".")[1]) if "." in field else (bad, field)
    holder[key] = value
    records = [dict(GOOD[kind], **{next(iter(GOOD[kind])): f"id{i}"}) for i in range(before + after)]
    lines = [record_line(record) for record in records[:before]] + [record_line(bad)] + \
        [record_line(record) for record in records[before:]]
    with tempfile.TemporaryDirectory() as folder:
        data_bytes = b"\n".join(lines) + b"\n"
        path = written(Path(folder), "data.jsonl.gz" if gz else "data.jsonl",
                       gzip.compress(data_bytes) if gz else data_bytes)
        with pytest.raises(DataError) as error:
            read_path(path, encode_is_query=kind == "queries")
    problems = error.value.problems  # one problem, or one per bad element of a list
    assert {problem.line for problem in problems} == {before + 1}, problems
    assert problems[0].field.startswith(field if "." in field else field.split("[")[0]), problems
    assert f"{path}:{before + 1}: field '{problems[0].field}'" in str(error.value)


@fuzz(max_examples=200)
@given(bad=BAD_JSON_LINES, before=st.integers(0, 4), gz=st.booleans())
def test_one_unreadable_line_among_good_ones_is_the_line_named(bad, before, gz):
    count_case("one bad line")
    good = [record_line({"docid": f"d{i}", "text": "x"}) for i in range(5)]
    data = b"\n".join(good[:before] + [bad] + good[before:]) + b"\n"
    with tempfile.TemporaryDirectory() as folder:
        path = written(Path(folder), "corpus.jsonl.gz" if gz else "corpus.jsonl",
                       gzip.compress(data) if gz else data)
        try:
            read_path(path)
        except RaytevError as error:
            assert_located(error, path)
            if before > 0:  # a bad first line leaves the file's kind unknown: every line is then wrong
                assert f"{path}:{before + 1}: " in str(error), str(error)
            return
        # Only a line that is itself a valid corpus record can pass.
        assert json.loads(bad)["docid"]


@fuzz(max_examples=5)
@given(size_mb=st.integers(1, 3), valid=st.booleans(), where=st.sampled_from(["corpus", "group"]))
def test_huge_lines_read_or_fail_located(size_mb, valid, where):
    count_case("huge lines")
    text = "cat " * (size_mb << 18)
    record = {"docid": "d1", "text": text} if where == "corpus" else \
        {"query_id": "q", "query": "w", "positive_passages": [{"text": text}]}
    line = record_line(record)
    if not valid:
        line = line[:-2]  # cut before the closing brace
    with tempfile.TemporaryDirectory() as folder:
        path = written(Path(folder), "data.jsonl", b'{"docid": "d0", "text": "x"}\n' + line + b"\n"
                       if where == "corpus" else line + b"\n")
        try:
            read_path(path)
        except DataError as error:
            assert not valid and error.problems[0].line == (2 if where == "corpus" else 1)
            return
        except RaytevError as error:  # a cut first line: the kind cannot be told
            assert not valid and str(path) in str(error)
            return
        assert valid


# --- TSV corpora, qrels and runs ------------------------------------------------------------------------------------

TSV_FIELD = st.one_of(st.sampled_from(["d1", "d2", "id", "text", "title", "docid", "a cat", ""]),
                      st.text(st.characters(codec="utf-8", exclude_characters="\t\n"), max_size=6))
TSV_LINES = st.one_of(st.lists(TSV_FIELD, min_size=1, max_size=4).map(lambda fields: "\t".join(fields).encode()),
                      BAD_JSON_LINES)


@fuzz(max_examples=150)
@given(data=st.data(), encode_is_query=st.booleans())
@example(data=None, encode_is_query=False)  # header only: was an empty table
def test_tsv_corpora_and_queries_read_or_fail_located(data, encode_is_query):
    count_case("tsv")
    if data is None:
        name, content = "collection.tsv", b"id\ttext\n"
    else:
        name, content = data.draw(stored(data.draw(line_files(TSV_LINES)), "collection.tsv"))
    with tempfile.TemporaryDirectory() as folder:
        path = written(Path(folder), name, content)
        try:
            corpus, queries = read_path(path, encode_is_query=encode_is_query)
        except RaytevError as error:
            assert_located(error, path)
            return
        rows = queries if encode_is_query else corpus
        lines = nonblank_lines(path)
        assert rows and len(rows) in (len(lines), len(lines) - 1)  # a header row is not a passage


QRELS_LINES = st.one_of(
    st.lists(st.one_of(st.sampled_from(["q1", "d1", "0", "Q0", "1", "2.0", "0.5", "-1", "nan", "inf", "1e300", "x",
                                        "query-id", "corpus-id", "score"]),
                       st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=5)),
             min_size=0, max_size=5).map(lambda fields: "\t".join(fields).encode()),
    BAD_JSON_LINES)


@fuzz(max_examples=250)
@given(data=st.data())
def test_qrels_read_or_fail_located(data):
    count_case("qrels")
    name, content = data.draw(stored(data.draw(line_files(QRELS_LINES)), "qrels.tsv"))
    with tempfile.TemporaryDirectory() as folder:
        path = written(Path(folder), name, content)
        problems = ProblemLog()
        try:
            judgements = read_qrels(path, problems)
            problems.raise_if_any()
        except RaytevError as error:
            assert_located(error, path)
            return
        lines = dict(iter_lines(path))
        for judgement in judgements:
            fields = lines[judgement.line].split()
            assert isinstance(judgement.relevance, int)
            assert (fields[0], fields[-2]) == (judgement.query_id, judgement.docid)


RUN_LINES = st.one_of(
    st.lists(st.one_of(st.sampled_from(["q1", "q2", "d1", "d2", "Q0", "1", "0.5", "-2e3", "nan", "inf", "raytev",
                                        "x", "\x1f", "\ufeff", "\u00a0", '"']),
                       st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=5)),
             min_size=0, max_size=7).map(lambda fields: " ".join(fields).encode()),
    st.tuples(st.sampled_from(["q1", "q2"]), st.sampled_from(["d1", "d2", "d3"]), st.floats(-10, 10))
    .map(lambda row: f"{row[0]}\t{row[1]}\t{row[2]}".encode()),
    BAD_JSON_LINES.filter(lambda raw: b"\r" not in raw))


@fuzz(max_examples=250)
@given(data=st.data())
@example(data=b"")  # an empty file: was "unreadable run file (Empty CSV file)", now an empty run
@example(data=b"\xef\xbb\xbf")  # a BOM alone is empty too
@example(data=b"q1 d1 1\nq1 d\x1f2 2\n")  # Arrow's delimiter: was an error naming no line
@example(data=b"q1 d1 1\n\x1f\n")
def test_runs_read_or_fail_located(data):
    count_case("runs")
    if isinstance(data, bytes):
        name, content = "run.txt", data
    else:
        name, content = data.draw(stored(data.draw(line_files(RUN_LINES)), data.draw(
            st.sampled_from(["run.txt", "run.trec", "run.tsv"]))))
    with tempfile.TemporaryDirectory() as folder:
        path = written(Path(folder), name, content)
        problems = ProblemLog()
        try:
            run = read_run(path, problems)
            problems.raise_if_any()
        except RaytevError as error:
            assert_located(error, path)
            assert all(problem.line for problem in getattr(error, "problems", [])), str(error)  # a line is at fault
            return
        text_lines = [""] + [line.decode().removeprefix("\ufeff") for line in re.split(
            rb"\r\n|\r|\n", gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes())]
        for query_id, entries in run.items():
            scores = [entry.score for entry in entries if entry.score == entry.score]  # NaN aside
            assert scores == sorted(scores, reverse=True)
            for entry in entries:
                fields = text_lines[entry.line].split()
                assert fields[0] == query_id and entry.docid in fields


@pytest.mark.parametrize("form", ["cut", "flip", "not-gzip"])
def test_bad_gzip_run_files_are_located_errors(tmp_path, form):
    """Arrow passed the gzip reader's EOFError / BadGzipFile through as they were: tracebacks."""
    data = b"".join(b"q%d\td%d\t%d\n" % (i, i, i) for i in range(3000))
    packed = bytearray(gzip.compress(data, mtime=0))
    if form == "cut":
        packed = packed[:len(packed) // 2]
    elif form == "flip":
        packed[-6] ^= 0xFF  # the CRC
    path = tmp_path / "run.txt.gz"
    path.write_bytes(data if form == "not-gzip" else bytes(packed))
    with pytest.raises(DataError, match=r"run\.txt\.gz:\d+: unreadable gzip data"):
        read_run(path, ProblemLog())


def test_a_lone_carriage_return_ends_a_run_line(tmp_path):
    """Accepted: Arrow reads CR as a line end (old Mac files), and the line numbers count it."""
    path = tmp_path / "run.txt"
    path.write_bytes(b"q1 d1 1\rq1 d2 2\nq1 d3 x\n")
    problems = ProblemLog()
    assert [entry.docid for entry in read_run(path, problems)["q1"]] == ["d2", "d1"]
    assert [problem.line for problem in problems.problems] == [3]


# --- BEIR folders ----------------------------------------------------------------------------------------------------

BEIR_CORPUS = st.one_of(CORPUS_RECORDS, st.builds(lambda i: {"_id": f"d{i}", "text": "x"}, st.integers(0, 13)))
BEIR_QUERIES = st.one_of(QUERY_RECORDS, st.builds(lambda i: {"_id": f"q{i}", "text": "w"}, st.integers(0, 5)))
BEIR_QRELS = st.one_of(st.builds(lambda q, d, s: f"q{q}\td{d}\t{s}".encode(), st.integers(0, 5), st.integers(0, 13),
                                 st.sampled_from(["0", "1", "2", "1.5", "x"])), QRELS_LINES)


@st.composite
def beir_changes(draw) -> dict[str, tuple[str, bytes]]:
    """Some of a good BEIR folder's files replaced by fuzzed ones."""
    changes = {}
    if draw(st.booleans()):
        changes["corpus"] = draw(stored(draw(line_files(jsonl_lines(BEIR_CORPUS))), "corpus.jsonl"))
    if draw(st.booleans()):
        changes["queries"] = draw(stored(draw(line_files(jsonl_lines(BEIR_QUERIES))), "queries.jsonl"))
    if draw(st.booleans()) or not changes:
        qrels = draw(line_files(st.one_of(BEIR_QRELS, st.just(b"query-id\tcorpus-id\tscore")), min_lines=1))
        changes["qrels"] = ("qrels/train.tsv", qrels)
    return changes


@st.composite
def valid_beir_changes(draw) -> dict[str, tuple[str, bytes]]:
    """A good BEIR folder written differently: CRLF, BOM, blank lines, gzip, repeated judgements, other grades."""
    grades = st.sampled_from(["0", "1", "2", "1.0"])
    judgements = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 11), grades), min_size=1, max_size=8))
    judgements.append((draw(st.integers(0, 1)), draw(st.integers(0, 11)), "1"))  # a query with a positive
    lines = [f"q{q}\td{d}\t{grade}".encode() for q, d, grade in judgements]
    if draw(st.booleans()):
        lines.insert(0, b"query-id\tcorpus-id\tscore")
    changes = {"qrels": ("qrels/train.tsv", draw(line_files(lines))), "valid": ("", b"")}
    if draw(st.booleans()):
        corpus = [record_line({"_id": f"d{i}", "title": draw(st.one_of(st.none(), TEXTS)), "text": draw(TEXTS)})
                  for i in range(12)]
        gz = draw(st.booleans())
        data = draw(line_files(corpus))
        changes["corpus"] = ("corpus.jsonl.gz", gzip.compress(data)) if gz else ("corpus.jsonl", data)
    return changes


def beir_folder(parent: Path, changes: dict[str, tuple[str, bytes]]) -> Path:
    root = make_tiny_beir(parent)
    for kind, (name, data) in changes.items():
        if kind == "valid":  # a mark: this folder must read
            continue
        if kind != "qrels":
            for old in root.glob(f"{kind}.jsonl*"):
                old.unlink()
        written(root, name, data)
    return root


@fuzz(max_examples=120)
@given(changes=st.one_of(beir_changes(), valid_beir_changes()))
@example(changes={"qrels": ("qrels/train.tsv", b"query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td0\t2\n")})
@example(changes={"qrels": ("qrels/train.tsv", b"q0\td0\t0\n")})  # no positives: was an empty table
@example(changes={"qrels": ("qrels/train.tsv", b"\r\nquery-id\tcorpus-id\tscore\r\nq0\td0\t1\r\n"),
                  "valid": ("", b"")})  # a header after a blank line: was "relevance must be an integer"
def test_beir_folders_read_or_fail_located(changes):
    count_case("beir folders")
    with tempfile.TemporaryDirectory() as folder:
        root = beir_folder(Path(folder), changes)
        try:
            corpus, groups = read_path(root)
        except RaytevError as error:
            OUTCOMES["beir folders failed"] += 1
            assert "valid" not in changes, str(error)
            assert str(root) in str(error), str(error)
            if isinstance(error, DataError):
                for problem in error.problems:
                    assert problem.source.startswith(str(root)), problem
            return
        docids = {row["docid"] for row in corpus}
        judged = {(j.query_id, j.docid) for j in read_qrels(root / "qrels" / "train.tsv", ProblemLog())
                  if j.relevance > 0}
        assert groups and len({group["query_id"] for group in groups}) == len(groups)
        for group in groups:
            positives = group["positive_docids"]
            assert positives and len(set(positives)) == len(positives)  # a repeated judgement is one positive
            assert all((group["query_id"], docid) in judged and docid in docids for docid in positives)
            assert not set(group["negative_docids"]) & set(positives)


def test_a_header_after_blank_lines_is_still_a_header(tmp_path):
    """Headers were recognised on line 1 only, so one after a blank line was read as a record."""
    qrels = tmp_path / "qrels.tsv"
    qrels.write_bytes(b"\n  \nquery-id\tcorpus-id\tscore\nq1\td1\t1\n")
    problems = ProblemLog()
    assert [(j.line, j.query_id) for j in read_qrels(qrels, problems)] == [(4, "q1")] and not problems
    collection = tmp_path / "collection.tsv"
    collection.write_bytes(b"\r\nid\ttitle\ttext\r\nd1\tCat\ta cat\r\n")
    corpus, _ = read_path(collection)
    assert [(row["docid"], row["text"], row["line"]) for row in corpus] == [("d1", "Cat a cat", 3)]


def test_beir_repeats_count_once(tmp_path):
    """A query judged twice for a document, or a run listing a document twice, gave the group that docid twice."""
    root = make_tiny_beir(tmp_path)
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td0\t2\n")
    (root / "queries.jsonl").write_text('{"_id": "q0", "text": "a"}\n{"_id": "q0", "text": "b"}\n')
    run = tmp_path / "run.txt"
    run.write_text("q0\td5\t3\nq0\td5\t2\nq0\td6\t1\n")
    source = resolve_source(DataSection(dataset_path=str(root)))
    _, queries = read_source(source, tmp_path, " ", NegativesConfig(str(run), count=5), ProblemLog())
    groups = read_arrow_rows(queries.queries_file).to_pylist()
    assert [(g["query_id"], g["text"], g["positive_docids"], g["negative_docids"]) for g in groups] == [
        ("q0", "a", ["d0"], ["d5", "d6"])]  # a query listed twice keeps its first line


# --- the whole data stage: failures publish nothing ------------------------------------------------------------------

# Valid groups of any text (control characters, combining marks, emoji, empty strings): tokenizing is exercised.
ANY_GROUPS = st.lists(st.builds(
    lambda i, query, texts: {"query_id": f"q{i}", "query": query, "positive_passages": [{"text": texts[0]}],
                             "negative_passages": [{"docid": f"n{i}", "title": t, "text": t} for t in texts[1:]]},
    st.integers(0, 3), st.text(max_size=20), st.lists(st.text(max_size=40), min_size=1, max_size=3)),
    min_size=1, max_size=4).map(lambda groups: ("data.jsonl", b"\n".join(map(record_line, groups))))


@fuzz(max_examples=40)
@given(changes=st.one_of(st.one_of(beir_changes(), valid_beir_changes()).map(lambda c: ("beir", c)),
                         jsonl_files(GROUP_RECORDS, min_lines=1).map(lambda f: ("groups", f)),
                         ANY_GROUPS.map(lambda f: ("groups", f))))
@example(changes=("groups", ("data.jsonl", b'{"query_id": "q", "query": "w", '
                                           b'"positive_passages": [{"text": "\\ud800"}]}\n')))
def test_prepare_publishes_complete_tables_or_nothing(tiny_tokenizer_dir, changes):
    count_case("prepare")
    form, change = changes
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = beir_folder(folder, change) if form == "beir" else written(folder, *change)
        cache = folder / "cache" / "tables"
        try:
            prepare(make_config(PrepareConfig, model_name_or_path=str(tiny_tokenizer_dir), dataset_path=str(path),
                                dataset_cache_dir=str(cache), num_negatives=2))
        except RaytevError as error:
            assert str(folder) in str(error)
            assert not (folder / "cache").exists(), list(cache.rglob("*"))  # nor temporary names
            OUTCOMES["prepare failed"] += 1
            return
        for entry in cache.iterdir():
            assert not entry.name.startswith("."), entry  # no temporary name is left
            assert entry.name == "input-hashes.json" or (entry / "manifest.json").is_file(), entry
