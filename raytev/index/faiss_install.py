"""Which installed distributions provide the `faiss` package: exactly one may, and the repair when that is not so.

faiss-cpu, faiss-gpu-cu12 (and faiss-gpu, faiss-gpu-cu11, ...) all install the same top-level `faiss/` folder. pip
installs two of them side by side without a word: the second overwrites the first's files, the folder then mixes
two releases, and uninstalling either deletes files the other needs. raytev's extras choose one (`cpu` or `gpu`);
this module finds an install that has two anyway, or none, and says how to repair it.

Found from the folder names on sys.path (`faiss*.dist-info`, `faiss*.egg-info`), then each candidate's RECORD (or
top_level.txt) must list `faiss/`: under 1 ms here, where importlib.metadata.packages_distributions() reads every
installed distribution's metadata (0.26 s for this venv's 311). Every faiss wheel so far is named faiss-something.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from raytev.errors import RaytevError

PACKAGE = "faiss"
METADATA_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class FaissDistribution:
    """An installed distribution that owns the `faiss` package: its name, version and metadata folder."""

    name: str
    version: str
    metadata: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def faiss_distributions(paths: Iterable[str] | None = None) -> list[FaissDistribution]:
    """The distributions on `paths` (default: sys.path) that install the `faiss` package, in path order."""
    found: dict[Path, FaissDistribution] = {}
    for entry in sys.path if paths is None else paths:
        for folder in _metadata_folders(entry):
            distribution = importlib.metadata.PathDistribution(folder)
            if folder.resolve() not in found and _installs_faiss(distribution):
                found[folder.resolve()] = FaissDistribution(distribution.metadata["Name"], distribution.version,
                                                            str(folder))
    return list(found.values())


def _metadata_folders(entry: str) -> list[Path]:
    """The metadata folders in one sys.path entry whose distribution name starts with faiss."""
    try:
        names = sorted(os.listdir(entry or "."))
    except OSError:  # a zip file, a path hook's marker, a folder that is gone
        return []
    return [Path(entry or ".", name) for name in names
            if name.lower().startswith(PACKAGE) and name.endswith(METADATA_SUFFIXES)]


def _installs_faiss(distribution: importlib.metadata.Distribution) -> bool:
    top_level = distribution.read_text("top_level.txt")
    if top_level is not None:
        return PACKAGE in top_level.split()
    return any(file.parts[:1] == (PACKAGE,) for file in distribution.files or ())


def check_one_faiss(distributions: list[FaissDistribution]) -> None:
    """Raise RaytevError when more than one distribution installs `faiss`, naming them and the repair."""
    if len(distributions) <= 1:
        return
    folders = sorted({str(Path(distribution.metadata).parent) for distribution in distributions})
    harm = "each overwrote the other's files in the one faiss/ folder, leaving a mix of releases" \
        if len(folders) == 1 else "the first faiss/ on sys.path hides the others"
    raise RaytevError(
        f"{len(distributions)} faiss builds are installed: {', '.join(map(str, distributions))} (in "
        f"{', '.join(folders)}); {harm}. raytev needs exactly one. Repair: {_repair(distributions)}")


def import_failure_message(distributions: list[FaissDistribution], error: ImportError) -> str:
    """What to tell a user whose `import faiss` failed: install one, or reinstall the damaged one."""
    if not distributions:
        return (f"faiss is not installed ({error}). raytev needs one faiss build, chosen by extra: "
                f"{_install_command()}")
    return (f"`import faiss` failed ({error}) although {', '.join(map(str, distributions))} is installed: its files "
            f"are damaged (uninstalling another faiss build removes files they shared). Repair: "
            f"{_repair(distributions)}")


def _repair(distributions: list[FaissDistribution]) -> str:
    names = " ".join(distribution.name for distribution in distributions)
    return f"`{_pip()} uninstall -y {names}`, then {_install_command()}"


def _install_command() -> str:
    return (f'`{_pip()} install "raytev[cpu]"` (or "raytev[gpu]" for faiss-gpu-cu12 on a CUDA 12 machine; in a '
            f'raytev checkout: `pip install -e ".[cpu]"` or ".[gpu]").')


def _pip() -> str:
    """pip as this interpreter runs it, so the repair reaches the environment raytev runs in."""
    return f"{sys.executable} -m pip"
