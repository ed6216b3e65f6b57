"""One faiss per install: the extras declare exactly one, and an install with two (or none) stops with its repair."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import GPU_WHEEL, fake_distribution

from raytev.errors import RaytevError
from raytev.index.faiss_install import FaissDistribution, check_one_faiss, faiss_distributions
from raytev.index.faiss_setup import import_faiss

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def installed_faiss() -> FaissDistribution:
    """The one faiss distribution of the environment the tests run in."""
    (found,) = faiss_distributions()
    return found


def test_this_install_has_exactly_one_faiss_and_it_is_the_one_imported():
    found = installed_faiss()
    assert found.name in ("faiss-cpu", "faiss-gpu-cu12")
    assert found.version == importlib.metadata.version(found.name)
    check_one_faiss([found])
    faiss = import_faiss()
    assert found.version.startswith(faiss.__version__)  # 1.14.1.post1's module says 1.14.1


@pytest.mark.parametrize("declared_by", ["RECORD", "top_level.txt"])
def test_a_mixed_install_stops_with_the_repair(tmp_path, declared_by):
    top_level = "faiss\n" if declared_by == "top_level.txt" else None
    fake_distribution(tmp_path, "faiss-cpu", "1.15.1", top_level)
    fake_distribution(tmp_path, *GPU_WHEEL, top_level)
    with pytest.raises(RaytevError) as stopped:
        import_faiss(paths=[str(tmp_path)])
    message = str(stopped.value)
    assert message.startswith("2 faiss builds are installed: faiss-cpu 1.15.1, faiss-gpu-cu12 1.14.1.post1 (in "
                              f"{tmp_path}); each overwrote the other's files in the one faiss/ folder")
    assert f"`{sys.executable} -m pip uninstall -y faiss-cpu faiss-gpu-cu12`, then" in message
    assert f'`{sys.executable} -m pip install "raytev[cpu]"` (or "raytev[gpu]"' in message


def test_only_distributions_that_install_the_faiss_package_count(tmp_path):
    site = tmp_path / "site-packages"
    fake_distribution(site, "faiss-cpu", "1.15.1")
    fake_distribution(site, "faiss-tools", "0.3", files=("faiss_tools/__init__.py",))  # named alike, not faiss
    fake_distribution(site, "numpy", "2.4.6", files=("faiss/__init__.py",))  # not named faiss*: not looked at
    # The same folder reached twice (two sys.path entries, one through a link) is one distribution.
    (tmp_path / "link").symlink_to(site)
    found = faiss_distributions([str(site), str(tmp_path / "link"), str(tmp_path / "missing")])
    assert found == [FaissDistribution("faiss-cpu", "1.15.1", str(site / "faiss_cpu-1.15.1.dist-info"))]


def test_a_second_faiss_anywhere_on_the_path_stops_a_command(tmp_path):
    fake_distribution(tmp_path, *GPU_WHEEL)
    real = installed_faiss()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "raytev", "index", "--passage_reps", str(tmp_path / "none"),
                           "--index_output_path", str(tmp_path / "index")], capture_output=True, text=True, env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: 2 faiss builds are installed: faiss-gpu-cu12 1.14.1.post1, {real} (in ")
    assert "the first faiss/ on sys.path hides the others" in done.stderr  # two folders: no mix, but which runs?
    assert f"uninstall -y faiss-gpu-cu12 {real.name}`" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_faiss_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails as if nothing provided it
    with pytest.raises(RaytevError) as stopped:
        import_faiss(paths=[str(tmp_path)])
    assert str(stopped.value).startswith("faiss is not installed (")
    assert f'`{sys.executable} -m pip install "raytev[cpu]"` (or "raytev[gpu]"' in str(stopped.value)


def test_a_damaged_faiss_is_reinstalled(tmp_path, monkeypatch):
    # What `pip uninstall faiss-gpu-cu12` leaves of a mixed install: faiss-cpu's metadata, and a faiss/ folder without
    # the __init__.py both wheels listed (it then imports as an empty namespace package).
    fake_distribution(tmp_path, "faiss-cpu", "1.15.1")
    (tmp_path / "faiss").mkdir()
    (tmp_path / "faiss" / "libfaiss.so").write_bytes(b"")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    monkeypatch.delitem(sys.modules, "faiss")
    with pytest.raises(RaytevError) as stopped:
        import_faiss()
    message = str(stopped.value)
    assert message.startswith(f"`import faiss` failed ({tmp_path}/faiss/__init__.py is missing) although faiss-cpu "
                              "1.15.1 is installed")
    assert f"`{sys.executable} -m pip uninstall -y faiss-cpu`, then" in message


def requirement_name(requirement: str) -> str:
    """The distribution a requirement string names, normalized (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


def test_each_install_declares_exactly_one_faiss():
    # pip's resolver needs the index to show this on `pip install ".[gpu]" --dry-run`; the declared metadata is what
    # it resolves from: no core requirement owns faiss, and the cpu and gpu extras bring one each.
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert [name for name in map(requirement_name, project["dependencies"]) if name.startswith("faiss")] == []
    faiss_by_extra = {extra: [name for name in map(requirement_name, requirements) if name.startswith("faiss")]
                      for extra, requirements in project["optional-dependencies"].items()}
    assert faiss_by_extra.pop("cpu") == ["faiss-cpu"]
    assert faiss_by_extra.pop("gpu") == ["faiss-gpu-cu12"]
    assert all(found == [] for found in faiss_by_extra.values()), faiss_by_extra  # demo, dev, jax: none
    assert not any(requirement_name(requirement) == "raytev" for requirements in project["optional-dependencies"]
                   .values() for requirement in requirements)  # no extra pulls in another (e.g. raytev[cpu])
