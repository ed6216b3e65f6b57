"""Write a file or folder under a temporary sibling name and move it into place only once it is complete."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raytev.errors import DiskFullError, RaytevError, disk_full_error


@contextmanager
def disk_full_as_error(path: str | os.PathLike, option: str | None = None) -> Iterator[None]:
    """Turn running out of space inside the block into a DiskFullError naming `path` (and `option`, the flag that
    chooses it); other errors pass unchanged."""
    try:
        yield
    except DiskFullError as error:  # raised by a writer inside (maybe a Ray task), which named the file
        inner = disk_full_error(error) or error
        if inner.path is None or in_hidden_folder(inner.path, path):
            raise DiskFullError(path, inner.option or option) from None
        raise inner.naming(option) from None
    except RaytevError:
        raise
    except Exception as error:
        full = disk_full_error(error)
        if full is None:
            raise
        raise DiskFullError(path, option) from None  # the error's own file may be a temporary one


def in_hidden_folder(path: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Whether `path` lies in a hidden (temporary) folder beside or inside `target`: a name the user never sees."""
    path, target = os.path.abspath(path), os.path.abspath(target)
    common = os.path.commonpath([path, target])
    return any(part.startswith(".") for part in Path(os.path.relpath(path, common)).parts[:-1])


@contextmanager
def staged_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    with disk_full_as_error(target):  # outside the clean-up, so the error tells the space free after it
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
    staging = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    with disk_full_as_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
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
