"""The records raytev reads (training groups, passages, queries) and their validation, one record at a time."""

from __future__ import annotations

from dataclasses import dataclass, field

from raytev.errors import ProblemLog


@dataclass(frozen=True, slots=True)
class Passage:
    """A passage written out in full inside a training group or a corpus."""

    docid: str
    title: str
    text: str


@dataclass(slots=True)
class Query:
    """A query with its id (and answers, for QA data)."""

    query_id: str
    text: str
    answers: list[str] | None = None


@dataclass(slots=True)
class TrainingGroup:
    """A query with its positive and negative passages: full passages, or docids into a corpus."""

    query: Query
    positives: list[Passage | str]
    negatives: list[Passage | str] = field(default_factory=list)


class RecordChecker:
    """Reads typed fields from one JSON object, logging what is missing or mistyped."""

    def __init__(self, record: dict, source: str, line: int, problems: ProblemLog, prefix: str = ""):
        self.record, self.source, self.line, self.problems = record, source, line, problems
        self.prefix = prefix
        self.ok = True

    def fail(self, name: str, message: str) -> None:
        """Log a problem with the named field."""
        self.ok = False
        self.problems.add(self.source, self.line, message, field=self.prefix + name)

    def text(self, *names: str, required: bool = True) -> str | None:
        """A string field: the first of `names` present."""
        name, value = self._first(names)
        if value is None:
            if required:
                self.fail(" or ".join(names), "missing")
            return None
        if not isinstance(value, str):
            self.fail(name, f"must be a string, got {_type_name(value)}")
            return None
        if not is_unicode(value):
            self.fail(name, LONE_SURROGATE)
            return None
        return value

    def identifier(self, *names: str, required: bool = True) -> str | None:
        """An id field (the first of `names` present): a string or an integer, returned as a string."""
        name, value = self._first(names)
        if value is None:
            if required:
                self.fail(" or ".join(names), "missing")
            return None
        return self.check_identifier(name, value)

    def check_identifier(self, name: str, value) -> str | None:
        """Validate one id value (also used for list elements)."""
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.fail(name, f"must be a string or an integer id, got {_type_name(value)}")
            return None
        if isinstance(value, str) and not value.strip():
            self.fail(name, "is empty")
            return None
        if isinstance(value, str) and not is_unicode(value):
            self.fail(name, LONE_SURROGATE)
            return None
        return str(value)

    def list_of(self, name: str, required: bool = True) -> list | None:
        """A list field; `None` (logged when required) if it is missing."""
        value = self.record.get(name)
        if value is None:
            if required:
                self.fail(name, "missing")
            return None
        if not isinstance(value, list):
            self.fail(name, f"must be a list, got {_type_name(value)}")
            return None
        return value

    def _first(self, names: tuple[str, ...]):
        for name in names:
            if self.record.get(name) is not None:
                return name, self.record[name]
        return names[0], None


# JSON escapes \ud800-\udfff left unpaired decode to strings that UTF-8 (Arrow, tokenizers) cannot hold.
LONE_SURROGATE = "holds a lone surrogate escape (\\ud800-\\udfff without its pair), which is not text: fix the escape"


def is_unicode(text: str) -> bool:
    """Whether a string can be written as UTF-8 (JSON escapes can make ones that cannot)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def parse_passage_object(checker: RecordChecker, value, label: str) -> Passage | None:
    """A passage object inside a group: `text` required, `title` and `docid` optional."""
    if not isinstance(value, dict):
        checker.fail(label, f"must be an object with 'text' (and 'docid', 'title'), got {_type_name(value)}")
        return None
    inner = RecordChecker(value, checker.source, checker.line, checker.problems, prefix=f"{label}.")
    docid = inner.identifier("docid", required=False) or ""
    title = inner.text("title", required=False) or ""
    text = inner.text("text")
    checker.ok = checker.ok and inner.ok
    return Passage(docid, title, text) if inner.ok else None


def parse_training_group(record: dict, source: str, line: int, problems: ProblemLog) -> TrainingGroup | None:
    """A Tevatron training group, inline passages or `positive_document_ids` form; `None` if invalid."""
    check = RecordChecker(record, source, line, problems)
    query_id = check.identifier("query_id", "_id")
    text = check.text("query", "query_text")
    answers = _parse_answers(check)
    if "positive_document_ids" in record:
        positives = _parse_docids(check, "positive_document_ids", required=True)
        negatives = _parse_docids(check, "negative_document_ids", required=False)
    else:
        positives = _parse_passages(check, "positive_passages", required=True)
        negatives = _parse_passages(check, "negative_passages", required=False)
    if positives is not None and not positives and check.ok:
        name = "positive_document_ids" if "positive_document_ids" in record else "positive_passages"
        check.fail(name, "the group has no positive passage; every training query needs at least one")
    if not check.ok:
        return None
    return TrainingGroup(Query(query_id, text, answers), positives, negatives or [])


def _parse_answers(check: RecordChecker) -> list[str] | None:
    answers = check.list_of("answers", required=False)
    if answers is None:
        return None
    for index, answer in enumerate(answers):
        if not isinstance(answer, str):
            check.fail(f"answers[{index}]", f"must be a string, got {_type_name(answer)}")
            return None
        if not is_unicode(answer):
            check.fail(f"answers[{index}]", LONE_SURROGATE)
            return None
    return answers


def _parse_passages(check: RecordChecker, name: str, required: bool) -> list[Passage] | None:
    values = check.list_of(name, required=required)
    if values is None:
        return None if required else []
    passages = [parse_passage_object(check, value, f"{name}[{index}]") for index, value in enumerate(values)]
    return passages if check.ok else None


def _parse_docids(check: RecordChecker, name: str, required: bool) -> list[str] | None:
    values = check.list_of(name, required=required)
    if values is None:
        return None if required else []
    docids = [check.check_identifier(f"{name}[{index}]", value) for index, value in enumerate(values)]
    return docids if check.ok else None


def parse_corpus_record(record: dict, source: str, line: int, problems: ProblemLog) -> Passage | None:
    """A corpus passage: `docid` (or BEIR `_id`), optional `title`, `text`."""
    check = RecordChecker(record, source, line, problems)
    docid = check.identifier("docid", "_id")
    title = check.text("title", required=False) or ""
    text = check.text("text")
    return Passage(docid, title, text) if check.ok else None


def parse_query_record(record: dict, source: str, line: int, problems: ProblemLog) -> Query | None:
    """A query: `query_id` (or BEIR `_id`) and `query` (or `text`), optional `answers`."""
    check = RecordChecker(record, source, line, problems)
    query_id = check.identifier("query_id", "_id")
    text = check.text("query", "query_text", "text")
    answers = _parse_answers(check)
    return Query(query_id, text, answers) if check.ok else None


def passage_text(passage: Passage, separator: str = " ") -> str:
    """The text a passage is encoded from: title, separator, text (just the text without a title)."""
    if passage.title:
        return f"{passage.title}{separator}{passage.text}".strip()
    return passage.text.strip()
