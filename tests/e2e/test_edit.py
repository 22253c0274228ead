"""Changing things in place: `loop edit`, `profile edit`, `profile set-key`, and what a loop removed and
added again keeps of the old one (nothing).

One real daemon for the module, driven through the real CLI; each test uses its own names.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, wait_until


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="fle-", dir="/tmp"))
    daemon = Daemon(root / "home", "--kill-grace", "0.5s", "--stop-grace", "2s")
    daemon.env["FLEETD_SECRET_STORE"] = "file"
    daemon.start()
    yield daemon
    daemon.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_a_re_added_loop_never_inherits_the_old_ones_running_run(d: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    d.cli("loop", "add", "again", "--every", "1h", "--command", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    old = d.json("loop", "run", "again")
    d.cli("loop", "rm", "again")
    d.cli("loop", "add", "again", "--every", "1h", "--command", "echo new")
    shown = d.json("loop", "show", "again")
    assert shown["running_run_id"] is None and shown["last_run"] is None
    listed = next(lp for lp in d.json("loop", "list") if lp["name"] == "again")
    assert listed["running_run_id"] is None and listed["last_run"] is None
    assert "running" not in d.cli("loop", "list").stdout.split("again", 1)[1].splitlines()[0]
    new = d.json("loop", "run", "again")  # not `skipped: previous run … still running`
    assert new["status"] == "running"
    assert d.wait_run(new["id"])["status"] == "succeeded"
    assert d.json("loop", "show", "again")["last_run"]["id"] == new["id"]
    gate.touch()
    assert d.wait_run(old["id"])["status"] == "succeeded"  # the old run still ends, under its own definition
    assert d.json("loop", "show", "again")["last_run"]["id"] == new["id"]
    wait_until(lambda: d.json("daemon", "status")["running_runs"] == 0, what="no run in flight")
