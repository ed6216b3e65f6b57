"""Errors a user can act on: what was wrong, where, and what to do."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class RaytevError(Exception):
    """An error caused by input or settings; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class Problem:
    """One defect in input data, located by source (file or dataset), line and field."""

    source: str
    line: int | None
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        what = f"field '{self.field}': {self.message}" if self.field else self.message
        return f"{where}: {what}"


class DataError(RaytevError):
    """Invalid input data: one or more located problems and how to fix them."""

    def __init__(self, problems: list[Problem], hint: str = "", stopped_early: bool = False):
        self.problems = list(problems)
        self.hint = hint
        self.stopped_early = stopped_early
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.problems)
        head = "invalid input data" if count == 1 else f"invalid input data ({count} problems"
        head += "" if count == 1 else (", stopped there)" if self.stopped_early else ")")
        lines = [head + ":"] + [f"  {problem}" for problem in self.problems]
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


class ProblemLog:
    """Collects data problems so one run reports many of them, up to a limit."""

    def __init__(self, limit: int = 20):
        self.limit = limit
        self.problems: list[Problem] = []

    def add(self, source: str, line: int | None, message: str, field: str | None = None) -> None:
        """Record a problem; raise at once when the limit is reached."""
        self.problems.append(Problem(source, line, message, field))
        if len(self.problems) >= self.limit:
            raise DataError(self.problems, self.hint, stopped_early=True)

    hint = "Fix the lines above and run again; nothing was written."

    def __bool__(self) -> bool:
        return bool(self.problems)

    def raise_if_any(self) -> None:
        """Raise a DataError listing every collected problem, if there is one."""
        if self.problems:
            raise DataError(self.problems, self.hint)


# Errors that mean the filesystem has no room left: the disk (ENOSPC) or the user's quota (EDQUOT).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Their text, for errors that carry it without an errno (FAISS's RuntimeError, Ray's re-raised tracebacks).
DISK_FULL_TEXTS = tuple(os.strerror(number) for number in DISK_FULL_ERRNOS)


class DiskFullError(RaytevError):
    """The disk (or quota) ran out while writing `path`; `option` is the flag that chooses where it goes."""

    def __init__(self, path: str | os.PathLike | None, option: str | None = None):
        self.path, self.option = (str(path) if path is not None else None), option
        super().__init__(self._render())

    def __reduce__(self):  # crosses process boundaries (Ray tasks) by its arguments, not its text
        return DiskFullError, (self.path, self.option)

    def naming(self, option: str | None) -> DiskFullError:
        """The same error, advising `option` (kept when it names one already)."""
        return self if self.option or not option else DiskFullError(self.path, option)

    def _render(self) -> str:
        where = f" writing {self.path}" if self.path else ""
        free = free_space(self.path) if self.path else None
        room = f" ({free} free there)" if free is not None else ""
        elsewhere = f"give another {self.option}" if self.option else "write to another disk"
        return (f"disk full: no space left on the device{where}{room}; nothing half-written was kept. Free some "
                f"space or {elsewhere}, then run the command again.")


def free_space(path: str | os.PathLike) -> str | None:
    """The space free to this user on the filesystem of `path` (or of its nearest existing folder), or None."""
    folder = Path(path).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    size = float(stats.f_bavail * stats.f_frsize)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size /= 1024
    return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"


def wrapped_errors(error: BaseException) -> Iterator[BaseException]:
    """`error` and every error it wraps, outermost first: Python's cause and context, Ray's `cause` (task and actor
    errors), Ray Train's worker and controller failures."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        failures = getattr(current, "worker_failures", None)
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None),
                    getattr(current, "controller_failure", None),
                    *(failures.values() if isinstance(failures, dict) else ())]


def is_disk_full(error: BaseException) -> bool:
    """Whether running out of space caused `error` (its errno, or its text where a wrapper kept only that)."""
    return disk_full_error(error) is not None


def disk_full_error(error: BaseException) -> DiskFullError | None:
    """A DiskFullError for an error that running out of space caused, naming the path where it knows it; else None."""
    for current in wrapped_errors(error):
        if isinstance(current, DiskFullError) and not is_ray_wrapper(current):
            return current
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return DiskFullError(current.filename)
    for current in wrapped_errors(error):
        text = str(current)
        for phrase in DISK_FULL_TEXTS:
            if phrase in text:
                quoted = re.search(re.escape(phrase) + r": '([^']+)'", text)
                return DiskFullError(quoted.group(1) if quoted else None)
    return None


def user_error_of(error: BaseException) -> RaytevError | None:
    """The RaytevError to show for `error`: itself, one it wraps (inside Ray's task, actor and Train errors), or a
    DiskFullError when the disk filled up; None for a bug."""
    if isinstance(error, RaytevError) and not is_ray_wrapper(error):
        return error
    for current in wrapped_errors(error):
        if isinstance(current, RaytevError) and not is_ray_wrapper(current):
            return current
    return disk_full_error(error)


def is_ray_wrapper(error: BaseException) -> bool:
    """Whether `error` is Ray's copy of a task's error (a RayTaskError that is also of the error's class), whose
    text is the whole remote traceback."""
    return any(kind.__name__ == "RayTaskError" for kind in type(error).__mro__)
