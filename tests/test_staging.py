"""Files and folders appear under their final names only when complete."""

from __future__ import annotations

import pytest

from raytev.staging import staged_directory, staged_file


def test_a_staged_file_replaces_the_target_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with staged_file(target) as temporary:
        temporary.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the new one is complete
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError), staged_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]  # no temporary left behind


def test_a_staged_directory_replaces_the_target_only_on_success(tmp_path):
    target = tmp_path / "index"
    with staged_directory(target) as staging:
        (staging / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError), staged_directory(target) as staging:
        (staging / "b").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(path.name for path in target.iterdir()) == ["a"]
    assert [path.name for path in tmp_path.iterdir()] == ["index"]
