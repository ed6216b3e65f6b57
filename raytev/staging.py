"""Write a file or folder under a temporary sibling name and move it into place only once it is complete."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raytev.errors import RaytevError


@contextmanager
def staged_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)  # gone already after a successful replace


def write_json_file(target: str | Path, value, **dump_options) -> None:
    """Write `value` as JSON (json.dumps options as given, a final newline) through staged_file."""
    with staged_file(target) as temporary:
        temporary.write_text(json.dumps(value, **dump_options) + "\n", encoding="utf-8")


@contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty sibling folder to fill; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise RaytevError(f"cannot save to '{target}': a file of that name exists; choose another output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, target)


def replace_directory(source: Path, target: Path) -> None:
    """Rename the folder `source` to `target`, replacing a folder there.

    The old folder is moved aside first, so the target name always holds a complete folder or none.
    """
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(retired)
        source.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        source.rename(target)


def publish_contents(staging: Path, target: Path, last: str | None = None) -> None:
    """Move every entry of `staging` into the existing folder `target`, replacing same-named entries.

    `last` moves after all others: readers take its presence to mean the rest is complete.
    """
    target.mkdir(parents=True, exist_ok=True)
    entries = sorted(staging.iterdir(), key=lambda path: path.name == last)
    for entry in entries:
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            replace_directory(entry, destination)
        else:
            entry.replace(destination)
    staging.rmdir()
