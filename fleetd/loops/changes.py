"""What an attempt changed in its working directory, for the reviewer agent.

In a git work tree: `git status --porcelain` and the diff of the tracked files against the state
before the attempt (a `git stash create` commit: the tree as it was, taken without touching the
index or the files). Elsewhere: the files whose modification time moved during the attempt. Blocking
I/O; the executor calls these in a thread. Never raises: a reviewer without a diff still reviews.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILES = 20_000  # a directory walk stops here
GIT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Snapshot:
    workdir: str | None
    git_base: str | None = None  # the commit the diff is taken against (HEAD, or a stash of a dirty tree)
    mtimes: dict[str, float] = field(default_factory=dict)  # outside git: path → mtime


def snapshot(workdir: str | None) -> Snapshot:
    if not workdir or not os.path.isdir(workdir):
        return Snapshot(workdir)
    if _git(workdir, "rev-parse", "--is-inside-work-tree").strip() == "true":
        base = _git(workdir, "stash", "create").strip() or _git(workdir, "rev-parse", "HEAD").strip()
        return Snapshot(workdir, git_base=base or None)
    return Snapshot(workdir, mtimes=_mtimes(workdir))


def changes_since(before: Snapshot, cap: int) -> str:
    """The changes as text for a prompt, at most `cap` characters (the cut is said)."""
    workdir = before.workdir
    if not workdir or not os.path.isdir(workdir):
        return "(no working directory)"
    if before.git_base is not None or _git(workdir, "rev-parse", "--is-inside-work-tree").strip() == "true":
        status = _git(workdir, "status", "--porcelain")
        diff = _git(workdir, "diff", before.git_base) if before.git_base else _git(workdir, "diff")
        text = f"$ git status --porcelain\n{status or '(clean)'}\n$ git diff\n{diff or '(no changes to tracked files)'}"
    else:
        after = _mtimes(workdir)
        changed = sorted(p for p, t in after.items() if before.mtimes.get(p) != t)
        gone = sorted(set(before.mtimes) - set(after))
        lines = [f"changed: {p}" for p in changed] + [f"removed: {p}" for p in gone]
        text = "files whose modification time changed during the attempt:\n" + ("\n".join(lines) or "(none)")
    if len(text) > cap:
        text = text[:cap] + f"\n… (cut at {cap} characters)"
    return text


def _git(workdir: str, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", workdir, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _mtimes(workdir: str) -> dict[str, float]:
    found: dict[str, float] = {}
    root = Path(workdir)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                found[os.path.relpath(path, root)] = os.stat(path).st_mtime
            except OSError:
                continue
            if len(found) >= MAX_FILES:
                return found
    return found
