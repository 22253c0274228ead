"""Changing things in place: `loop edit`, `profile edit`, `profile set-key`, and what a loop removed and
added again keeps of the old one (nothing).

One real daemon for the module, driven through the real CLI; each test uses its own names.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.test_loops_and_runs import LOOP_KEYS
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


def _show(d: Daemon, name: str) -> dict:
    return d.json("loop", "show", name)  # type: ignore[no-any-return]


def test_edit_changes_a_loop_in_place_and_recomputes_the_next_fire_only_for_a_new_schedule(
    d: Daemon, tmp_path: Path
) -> None:
    d.cli("loop", "add", "tidy", "--every", "1h", "--command", "echo one", "--dir", str(tmp_path),
          "--timeout", "5m", "--env", "A=1", "--catch-up", "skip")  # fmt: skip
    before = _show(d, "tidy")
    created = datetime.fromisoformat(before["created_at"])
    assert datetime.fromisoformat(before["next_fire_at"]) == created + timedelta(hours=1)

    out = d.cli("loop", "edit", "tidy", "--every", "2h")
    assert out.stdout.startswith("edited loop tidy; next run ")
    after = _show(d, "tidy")
    assert after["schedule"]["expr"] == "2h"
    # Still counted from its creation: the grid of an interval loop survives an edit.
    assert datetime.fromisoformat(after["next_fire_at"]) == created + timedelta(hours=2)
    # What was not given stays, add's defaults are not applied (catch-up stays skip, output cap stays).
    assert {k: after[k] for k in ("command", "dir", "timeout_s", "env", "catch_up", "output_cap_bytes")} == {
        "command": "echo one", "dir": str(tmp_path), "timeout_s": 300.0, "env": {"A": "1"}, "catch_up": "skip",
        "output_cap_bytes": 10 * 1024 * 1024,
    }  # fmt: skip
    assert after["created_at"] == before["created_at"] and after["updated_at"] != before["updated_at"]

    d.cli("loop", "edit", "tidy", "--command", "echo two", "--env", "B=2", "--env", "C=3")
    edited = _show(d, "tidy")
    assert edited["command"] == "echo two" and edited["env"] == {"B": "2", "C": "3"}  # --env replaces the set
    assert edited["next_fire_at"] == after["next_fire_at"]  # no new schedule: the next fire stays

    d.cli("loop", "edit", "tidy", "--clear-dir", "--clear-timeout", "--clear-env")
    cleared = _show(d, "tidy")
    assert (cleared["dir"], cleared["timeout_s"], cleared["env"]) == (None, None, {})

    d.cli("loop", "pause", "tidy")
    d.cli("loop", "edit", "tidy", "--cron", "0 3 * * *")
    paused = _show(d, "tidy")
    assert paused["enabled"] is False and paused["next_fire_at"] is None  # paused stays paused
    assert paused["schedule"]["kind"] == "cron" and paused["schedule"]["expr"] == "0 3 * * *"
    d.cli("loop", "edit", "tidy", "--enabled")
    resumed = _show(d, "tidy")
    assert resumed["enabled"] is True and resumed["next_fire_at"] is not None
    d.cli("loop", "edit", "tidy", "--paused")
    assert _show(d, "tidy")["enabled"] is False


def test_edit_json_is_the_loop_as_show_prints_it(d: Daemon) -> None:
    d.cli("loop", "add", "edjson", "--every", "1h", "--command", "true")
    edited = d.json("loop", "edit", "edjson", "--timeout", "10m")
    assert edited == _show(d, "edjson")
    assert set(edited) >= LOOP_KEYS and edited["timeout_s"] == 600.0


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--every", "0s"], 2, "invalid --every"),
        (["--cron", "61 * * * *"], 2, "invalid cron expression"),
        (["--at", "2001-01-01T00:00"], 2, "is in the past"),
        (["--dir", "/nonexistent/fleetd-edit"], 2, "directory not found"),
        (["--timeout", "abc"], 2, "invalid --timeout"),
        (["--env", "NOEQUALS"], 2, "invalid --env"),
        (["--clear-command"], 2, "needs --command"),
        (["--command", "x", "--clear-command"], 2, "give --command or --clear-command, not both"),
        (
            ["--backend", "codex", "--prompt", "x", "--clear-command"],
            1,
            "no codex profile: add one with `fleetd profile add NAME",
        ),
        (["--max-cost", "2"], 2, "--max-cost needs an agent backend"),
        (["--output-cap", "lots"], 2, "invalid --output-cap"),
        ([], 2, "nothing to change"),
    ],
)
def test_a_bad_edit_is_refused_like_a_bad_add_and_changes_nothing(
    d: Daemon, args: list[str], code: int, fragment: str
) -> None:
    if "badedit" not in [lp["name"] for lp in d.json("loop", "list")]:
        d.cli("loop", "add", "badedit", "--every", "1h", "--command", "echo kept", "--timeout", "1m")
    before = _show(d, "badedit")
    result = d.cli("loop", "edit", "badedit", *args, check=False)
    assert result.returncode == code, result
    (line,) = result.stderr.strip().splitlines()
    assert fragment in line
    assert _show(d, "badedit") == before


def test_edit_of_a_missing_loop_is_not_found(d: Daemon) -> None:
    result = d.cli("loop", "edit", "ghost", "--every", "1h", check=False)
    assert result.returncode == 1 and "no loop named 'ghost'" in result.stderr


def test_a_run_in_flight_finishes_under_the_definition_it_started_with(d: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    d.cli("loop", "add", "steady", "--every", "1h", "--env", "WHO=old",
          "--command", f'while [ ! -e {gate} ]; do sleep 0.05; done; echo "ran $WHO"')  # fmt: skip
    run = d.json("loop", "run", "steady")
    d.cli("loop", "edit", "steady", "--timeout", "1s", "--env", "WHO=new", "--command", 'echo "ran $WHO"; exit 4')
    # Past the new timeout: a run that re-read its loop would be killed now; this one started without one.
    started = datetime.fromisoformat(run["started_at"])
    wait_until(lambda: datetime.now(UTC) > started + timedelta(seconds=1.5), what="the new timeout to pass")
    assert d.json("runs", "show", str(run["id"]))["status"] == "running"
    gate.touch()
    done = d.wait_run(run["id"])
    assert done["status"] == "succeeded" and "ran old" in d.cli("runs", "logs", str(run["id"])).stdout
    second = d.wait_run(d.json("loop", "run", "steady")["id"])  # the next fire runs the new definition
    assert second["status"] == "failed" and second["exit_code"] == 4
    assert "ran new" in d.cli("runs", "logs", str(second["id"])).stdout
