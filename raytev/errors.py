"""Errors a user can act on: what was wrong, where, and what to do."""

from __future__ import annotations

from dataclasses import dataclass


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
