"""Progress bars for long work that also show in logs (`ray job submit`, CI), not only on terminals."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

# On a terminal a bar redraws in place; in a log every redraw is a new line, so logs get one every half minute.
LOG_INTERVAL_SECONDS = 30.0


def progress_bar(**options) -> tqdm:
    """A tqdm bar: live on a terminal, a line every LOG_INTERVAL_SECONDS when stderr is a log file."""
    if not sys.stderr.isatty():
        options.setdefault("mininterval", LOG_INTERVAL_SECONDS)
    return tqdm(**options)


def report_stage(name: str, seconds: float, detail: str) -> None:
    """The one line a finished stage of a workflow prints (stderr, beside the progress bars)."""
    tqdm.write(f"  {name:<16} {seconds:>7.1f} s  {detail}", file=sys.stderr)


def report_phase(name: str) -> None:
    """A heading line before a workflow's next group of stages."""
    tqdm.write(f"{name}:", file=sys.stderr)
