"""Read text files (plain or gzip) line by line, turning I/O and decoding failures into located errors."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from raytev.errors import DataError, Problem, ProblemLog


def open_binary(path: str | os.PathLike):
    """Open a file for reading bytes, decompressing `.gz` files; fail clearly when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError([Problem(str(path), None, "file not found")],
                        "Check the path (relative paths are taken from the current directory).")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its newline) for every non-blank line."""
    line_number = 0
    try:
        # Bytes decoded line by line, so a bad byte is reported on its own line (text mode decodes ahead).
        with open_binary(path) as handle:
            for line_number, raw in enumerate(handle, start=1):
                line = raw.decode("utf-8").rstrip("\r\n")
                if line_number == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark from Windows editors
                if line.strip():
                    yield line_number, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(
            [Problem(str(path), line_number + 1, f"unreadable gzip data ({error})")],
            "The file is truncated or not gzip: download it again, or check it with `gzip -t`.",
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(
            [Problem(str(path), line_number, f"not UTF-8 text ({error.reason} at byte {error.start})")],
            "Convert the file to UTF-8 (e.g. `iconv -t utf-8`) and run again.",
        ) from None


def iter_json_records(path: str | os.PathLike, problems: ProblemLog) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each JSON Lines record; bad lines are logged and skipped."""
    for line_number, line in iter_lines(path):
        record, error = parse_json(line)
        if error is not None:
            problems.add(str(path), line_number, f"invalid JSON: {error}")
            continue
        if not isinstance(record, dict):
            problems.add(str(path), line_number, f"expected a JSON object, got {type(record).__name__}")
            continue
        yield line_number, record


def parse_json(line: str) -> tuple[object, str | None]:
    """(value, None) for a line of JSON, or (None, what is wrong with it)."""
    try:
        return json.loads(line), None
    except json.JSONDecodeError as error:
        return None, f"{error.msg} (column {error.colno})"
    except ValueError as error:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        return None, str(error).split(";")[0]
    except RecursionError:  # arrays or objects nested deeper than the parser recurses
        return None, "nested too deeply"


def iter_tsv_rows(path: str | os.PathLike, columns: tuple[int, ...], problems: ProblemLog,
                  header: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a tab-separated file whose rows have one of the allowed column counts.

    `header` is the first field of a header row to skip (e.g. 'query-id' in BEIR qrels).
    """
    for index, (line_number, line) in enumerate(iter_lines(path)):
        fields = line.split("\t")
        if header is not None and index == 0 and fields[0].strip() == header:  # the first non-blank line
            continue
        if len(fields) not in columns:
            allowed = " or ".join(str(count) for count in columns)
            problems.add(str(path), line_number, f"expected {allowed} tab-separated columns, got {len(fields)}")
            continue
        yield line_number, fields


def first_record(path: str | os.PathLike) -> dict | list[str] | None:
    """The first JSON object (JSONL files) or the tab-split fields (TSV) of a file, to detect its format."""
    for _, line in iter_lines(path):
        if is_tsv(path):
            return line.split("\t")
        record, _ = parse_json(line)
        return record if isinstance(record, dict) else None
    return None


def is_tsv(path: str | os.PathLike) -> bool:
    """Whether a file name says tab-separated values."""
    name = Path(path).name.removesuffix(".gz")
    return name.endswith((".tsv", ".txt", ".tsv.txt"))
