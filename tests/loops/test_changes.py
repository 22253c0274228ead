"""What an attempt changed, for the reviewer: a git diff against the tree as it was, or moved mtimes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fleetd.loops.changes import changes_since, snapshot


def _git(path: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)


def test_in_git_the_diff_is_against_the_tree_before_the_attempt_not_head(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "root")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "a")
    (tmp_path / "a.py").write_text("x = 2\n")  # the user's own uncommitted change, before the attempt
    before = snapshot(str(tmp_path))
    (tmp_path / "a.py").write_text("x = 3\n")  # the agent's change
    (tmp_path / "new.py").write_text("y = 1\n")
    text = changes_since(before, 64 * 1024)
    assert "-x = 2" in text and "+x = 3" in text and "-x = 1" not in text
    assert "?? new.py" in text


def test_outside_git_the_files_whose_mtime_moved(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("same")
    (tmp_path / "edit.txt").write_text("old")
    os.utime(tmp_path / "edit.txt", (1, 1))
    before = snapshot(str(tmp_path))
    (tmp_path / "edit.txt").write_text("new")
    (tmp_path / "made.txt").write_text("new")
    text = changes_since(before, 64 * 1024)
    assert "changed: edit.txt" in text and "changed: made.txt" in text and "keep.txt" not in text


def test_the_text_is_capped_and_says_so(tmp_path: Path) -> None:
    before = snapshot(str(tmp_path))
    for i in range(50):
        (tmp_path / f"f{i}.txt").write_text("x")
    text = changes_since(before, 200)
    assert len(text) < 260 and text.endswith("(cut at 200 characters)")
