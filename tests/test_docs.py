"""The docs: the CLI reference lists every flag of every stage, the README stays a quick start, every page is in
the nav, and the site builds with --strict (broken links fail)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from raytev.config.fields import flag_fields
from raytev.config.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

from cli_reference import MARKER, cli_reference_markdown  # noqa: E402


def test_the_cli_reference_lists_every_flag_and_alias_of_every_stage():
    page = cli_reference_markdown()
    sections = re.split(r"^## ", page, flags=re.M)[1:]
    assert [section.splitlines()[0] for section in sections] == [f"raytev {stage.command}" for stage in STAGES]
    for stage, section in zip(STAGES, sections):
        for name, (_, field) in flag_fields(stage.config).items():
            for flag in (name, *field.metadata["aliases"]):
                assert f"`--{flag}`" in section, f"raytev {stage.command}: --{flag} missing"
    assert MARKER in (ROOT / "docs" / "cli.md").read_text()


def test_the_readme_is_a_quick_start_that_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 250
    first_block = readme[readme.index("```bash") + 1:readme.index("```", readme.index("```bash") + 1)]
    assert [line.split("#")[0].strip() for line in first_block] == ["./bootstrap.sh demo", "./bootstrap.sh test"]


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert listed == pages


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("material", reason="mkdocs-material comes with the dev extra")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1",
                                                                          "PATH": "/usr/bin:/bin"})
    assert built.returncode == 0, built.stderr[-3000:]
    assert "--encoded_save_path" in (tmp_path / "cli" / "index.html").read_text()
