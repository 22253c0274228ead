"""Attempts' TMPDIRs: an empty one whose run left nothing behind is recycled (renamed, no inode freed or made);
anything else is removed, and the next attempt always gets an empty private directory of its own."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from fleetd.loops import cgroups
from fleetd.loops.tmpdirs import SPARE_PREFIX, TmpDirs
from fleetd.store.db import Database
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc
from tests.loops.executors import added_loop, command_executor


def _private_and_empty(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and not os.listdir(path)


def test_an_empty_vacated_dir_is_renamed_into_the_next_attempt(tmp_path: Path) -> None:
    dirs = TmpDirs(str(tmp_path))
    first, second = f"{tmp_path}/run1-1", f"{tmp_path}/run2-1"
    dirs.make(first)
    made = os.stat(first).st_ino
    dirs.vacated(first)
    dirs.release(first)
    assert not os.path.exists(first) and [p.name[: len(SPARE_PREFIX)] for p in tmp_path.iterdir()] == [SPARE_PREFIX]
    dirs.make(second)
    assert os.stat(second).st_ino == made and _private_and_empty(Path(second))
    assert list(tmp_path.iterdir()) == [Path(second)]


@pytest.mark.parametrize(
    "what",
    ["not vacated", "a file left", "a hidden file left", "chmod 777", "replaced by a symlink"],
)
def test_a_dir_that_may_not_be_recycled_is_removed(tmp_path: Path, what: str) -> None:
    dirs = TmpDirs(str(tmp_path / "tmp"))
    path = tmp_path / "tmp" / "run1-1"
    outside = tmp_path / "outside"
    outside.mkdir()
    dirs.make(str(path))
    if what != "not vacated":
        dirs.vacated(str(path))
    if what == "a file left":
        (path / "secret").write_text("run 1's")
    elif what == "a hidden file left":
        (path / ".secret").write_text("run 1's")
    elif what == "chmod 777":
        os.chmod(path, 0o777)
    elif what == "replaced by a symlink":
        path.rmdir()
        path.symlink_to(outside)
    dirs.release(str(path))
    assert not os.path.lexists(path) and list((tmp_path / "tmp").iterdir()) == []
    assert outside.is_dir() and list(outside.iterdir()) == []
    dirs.make(str(tmp_path / "tmp" / "run2-1"))
    assert _private_and_empty(tmp_path / "tmp" / "run2-1")


def test_a_dead_attempts_dir_of_the_same_name_is_replaced_by_the_spare(tmp_path: Path) -> None:
    dirs = TmpDirs(str(tmp_path))
    dirs.make(f"{tmp_path}/run1-1")
    dirs.vacated(f"{tmp_path}/run1-1")
    dirs.release(f"{tmp_path}/run1-1")
    dead = tmp_path / "run7-1"  # a run id from an earlier database, its attempt killed with the daemon
    dead.mkdir()
    (dead / "left").write_text("an earlier run's")
    dirs.make(str(dead))
    assert _private_and_empty(dead) and len(list(tmp_path.iterdir())) == 1


def test_spares_are_bounded(tmp_path: Path) -> None:
    dirs = TmpDirs(str(tmp_path), keep=2)
    for i in range(5):
        dirs.make(f"{tmp_path}/run{i}-1")
    for i in range(5):
        dirs.vacated(f"{tmp_path}/run{i}-1")
        dirs.release(f"{tmp_path}/run{i}-1")
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.skipif(cgroups.base_dir() is None, reason="needs a writable cgroup v2 subtree")
def test_runs_of_a_command_reuse_a_clean_tmpdir_and_never_see_each_others_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run prints what it finds in its TMPDIR, and odd runs leave a file there: a run after a clean one gets
    the directory back (no mkdir per run), one after a littering run a new one, and no run ever sees a file."""
    script = 'ls -A "$TMPDIR"; [ $((FLEETD_RUN_ID % 2)) = 1 ] && echo x >"$TMPDIR/f"; true'
    made: list[str] = []
    mkdir = os.mkdir

    def counting_mkdir(path: str, *args: object, **kwargs: object) -> None:
        if str(path).startswith(str(tmp_path / "tmp")):
            made.append(str(path))
        mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", counting_mkdir)

    async def go() -> list[str]:
        db = await Database.open(tmp_path / "t.db")
        try:
            now = now_utc()
            loop = await added_loop(db, "tmp", now, command=script)
            ex = command_executor(db, tmp_path, f"tmpd{os.getpid()}")
            outputs = []
            for _ in range(4):
                run = await ex.fire(loop, "manual", now_utc())
                assert run is not None
                await ex.active[loop.instance].done.wait()
                assert (await RunStore(db).get(run.id)).status == "succeeded"
                outputs.append((tmp_path / f"{run.id}.log").read_text())
                assert await ex.wait_idle(5)
                # Its TMPDIR is released (recycled or removed) by a thread nothing waits for: the next run may
                # only count on a spare once it is one.
                released = tmp_path / "tmp" / f"run{run.id}-1"
                deadline = time.monotonic() + 5
                while released.exists():
                    assert time.monotonic() < deadline, f"{released} was never released"
                    await asyncio.sleep(0.01)
            return outputs
        finally:
            await db.close()

    assert asyncio.run(go()) == ["", "", "", ""]  # no run saw a file
    # Runs 1 and 3 littered: 1 (the first) and 2 and 4 (each after a littering run) made one; 3 reused 2's.
    # (The first mkdir is tried twice: the root is made after it fails.)
    assert sorted({name.rsplit("/", 1)[1] for name in made} - {"tmp"}) == ["run1-1", "run2-1", "run4-1"]
