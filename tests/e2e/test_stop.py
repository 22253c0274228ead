"""Stopping runs through the real CLI and a real daemon: `runs stop [--kill]`, `loop stop`, `loop rm
[--force]`, a run waiting for a reset, and what `runs logs --follow` says about the end (footer, exit
status, a daemon that goes away)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import FLEETD, Daemon, alive, capture_folder, standin_env, wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUN_KEYS = {"id", "loop", "trigger", "status", "exit_code", "scheduled_at", "started_at", "finished_at",
            "backend", "profile", "error", "attempts", "log_path", "duration_s"}  # fmt: skip
MakeDaemon = Callable[..., Daemon]


def follow(d: Daemon, run_id: int) -> subprocess.Popen[str]:
    """`runs logs RUN --follow` in the background, as a user would leave it running in a terminal."""
    return subprocess.Popen([FLEETD, "runs", "logs", str(run_id), "--follow"], env=d.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def logged(d: Daemon, run_id: int, text: str) -> None:
    wait_until(lambda: text in d.cli("runs", "logs", str(run_id)).stdout, what=f"{text!r} in run {run_id}'s log")


def test_runs_stop_ends_the_whole_tree_cancelled_and_the_follower_says_so(daemon: Daemon, tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    daemon.cli("loop", "add", "stoppable", "--every", "1h",
               "--command", f"{sys.executable} {FIXTURES / 'forker.py'} {pids_file}")  # fmt: skip
    run = daemon.json("loop", "run", "stoppable")
    logged(daemon, run["id"], "forker ready")
    follower = follow(daemon, run["id"])
    stopped = daemon.json("runs", "stop", str(run["id"]))  # SIGTERM is ignored: the kill grace, then SIGKILL
    assert set(stopped) >= RUN_KEYS  # the contract of `runs stop --json`: a run
    assert stopped["status"] == "cancelled" and stopped["error"] == "stopped by `fleetd runs stop`"
    assert stopped["exit_code"] < 0  # killed by a signal
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 3  # the run, its child and the double-forked grandchild
    wait_until(lambda: not any(alive(p) for p in pids), what="every process of the run gone")
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 1 and "forker ready" in out
    assert err.strip().splitlines() == [f"run {run['id']} cancelled (stopped by `fleetd runs stop`)"]
    assert [r["id"] for r in daemon.runs("--status", "cancelled")] == [run["id"]]
    assert daemon.json("runs", "show", str(run["id"]))["attempt_list"][0]["finished_at"] is not None

    again = daemon.cli("runs", "stop", str(run["id"]), check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"fleetd: run {run['id']} already ended: cancelled (stopped by `fleetd runs stop`)"
    unknown = daemon.cli("runs", "stop", "999999", check=False)
    assert (unknown.returncode, unknown.stderr.strip()) == (1, "fleetd: no run with id 999999")
    assert daemon.cli("runs", "stop", "x7", check=False).returncode == 2


def test_follow_exits_with_the_runs_status_and_a_footer(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "ends_ok", "--every", "1h", "--command", "echo fine; sleep 0.3")
    daemon.cli("loop", "add", "ends_bad", "--every", "1h", "--command", "echo oops; sleep 0.3; exit 3")
    for loop, code, footer in (("ends_ok", 0, "succeeded"), ("ends_bad", 1, "failed, exit 3")):
        run_id = daemon.json("loop", "run", loop)["id"]
        followed = daemon.cli("runs", "logs", str(run_id), "--follow", check=False)
        assert followed.returncode == code
        assert followed.stderr.strip() == f"run {run_id} {footer}"
        # Following a run that has already ended says the same.
        again = daemon.cli("runs", "logs", str(run_id), "-f", check=False)
        assert (again.returncode, again.stderr.strip()) == (code, f"run {run_id} {footer}")
        assert daemon.cli("runs", "logs", str(run_id)).returncode == 0  # without --follow: just the log


def test_loop_stop_keeps_the_schedule(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "keeps", "--every", "1h", "--command", "echo up; sleep 30")
    before = daemon.json("loop", "show", "keeps")
    run = daemon.json("loop", "run", "keeps")
    logged(daemon, run["id"], "up")
    out = daemon.cli("loop", "stop", "keeps")
    assert out.stdout.strip() == f"run {run['id']} of loop keeps cancelled, exit -15"
    shown = daemon.json("runs", "show", str(run["id"]))
    assert shown["error"] == "stopped by `fleetd loop stop`"
    daemon.cli("loop", "run", "keeps")
    stopped = daemon.json("loop", "stop", "keeps", "--kill")  # the contract of `loop stop --json`: the run
    assert set(stopped) >= RUN_KEYS and stopped["loop"] == "keeps" and stopped["status"] == "cancelled"
    after = daemon.json("loop", "show", "keeps")
    assert after["enabled"] is True and after["next_fire_at"] == before["next_fire_at"]
    assert after["running_run_id"] is None
    idle = daemon.cli("loop", "stop", "keeps", check=False)
    assert (idle.returncode, idle.stderr.strip()) == (1, "fleetd: loop keeps has no running run")
    assert daemon.cli("loop", "stop", "no_such_loop", check=False).returncode == 1


def test_loop_rm_refuses_a_running_loop_unless_forced(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "busy_rm", "--every", "1h", "--command", "echo up; sleep 30")
    run = daemon.json("loop", "run", "busy_rm")
    logged(daemon, run["id"], "up")
    refused = daemon.cli("loop", "rm", "busy_rm", check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert f"has run {run['id']} in progress" in refused.stderr and "--force" in refused.stderr
    assert daemon.json("loop", "show", "busy_rm")["running_run_id"] == run["id"]  # nothing changed
    forced = daemon.cli("loop", "rm", "busy_rm", "--force")
    assert forced.stdout.strip() == f"removed loop busy_rm (stopped its run {run['id']})"
    ended = daemon.json("runs", "show", str(run["id"]))
    assert ended["status"] == "cancelled" and "`fleetd loop rm --force`" in ended["error"]
    assert "busy_rm" not in [lp["name"] for lp in daemon.json("loop", "list")]


def test_kill_is_at_once_and_a_stop_wins_over_an_exit_0_in_the_grace(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--kill-grace", "30s")  # a grace no test waits out
    d.cli("loop", "add", "deaf", "--every", "1h", "--command", "trap '' TERM; echo up; sleep 60")
    run = d.json("loop", "run", "deaf")
    logged(d, run["id"], "up")
    started = time.monotonic()
    killed = d.json("runs", "stop", str(run["id"]), "--kill")
    assert time.monotonic() - started < 10
    assert (killed["status"], killed["exit_code"]) == ("cancelled", -9)
    assert killed["error"] == "killed by `fleetd runs stop --kill`"
    # A command that exits 0 on SIGTERM was stopped, not done: the stop came first.
    d.cli("loop", "add", "polite", "--every", "1h", "--command", "trap 'exit 0' TERM; echo up; sleep 60 & wait")
    run = d.json("loop", "run", "polite")
    logged(d, run["id"], "up")
    polite = d.json("runs", "stop", str(run["id"]))
    assert (polite["status"], polite["exit_code"]) == ("cancelled", 0)


def test_follow_says_so_when_the_daemon_goes_away(make_daemon: MakeDaemon) -> None:
    d = make_daemon()
    d.cli("loop", "add", "orphan", "--every", "1h", "--command", "echo up; sleep 30")
    run = d.json("loop", "run", "orphan")
    logged(d, run["id"], "up")
    leftover = d.json("runs", "show", str(run["id"]))["pid"]  # a killed daemon leaves it: the test cleans up
    follower = follow(d, run["id"])
    assert follower.stdout is not None
    assert select.select([follower.stdout], [], [], 20)[0], "the follower printed nothing"
    assert follower.stdout.readline() == "up\n"  # mid-stream now
    d.kill9()
    _, err = follower.communicate(timeout=20)
    assert follower.returncode == 1
    assert err.strip().splitlines() == [f"fleetd: the fleetd daemon went away while following run {run['id']}"]
    os.killpg(leftover, signal.SIGKILL)


@pytest.fixture
def standins() -> Iterator[Daemon]:
    capture_folder("cc_ok_stream")
    root = Path(tempfile.mkdtemp(prefix="fls-", dir="/tmp"))
    (root / "standin").mkdir()
    d = Daemon(root / "home", "--kill-grace", "0.5s")
    d.env.update(standin_env(root / "standin"))
    d.start()
    d.standin_dir = root / "standin"  # type: ignore[attr-defined]
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_a_run_waiting_for_a_reset_is_cancelled_too(standins: Daemon) -> None:
    d = standins
    d.cli("profile", "add", "tired", "--backend", "claude_code")
    (d.standin_dir / "tired.scenario").write_text("usage_limit +3600")  # type: ignore[attr-defined]
    d.cli("loop", "add", "waits", "--every", "1h", "--backend", "claude_code", "--prompt", "x", "--profile", "tired")
    run_id = d.json("loop", "run", "waits")["id"]
    wait_until(lambda: d.json("runs", "show", str(run_id))["status"] == "waiting", timeout=20, what="the run to wait")
    stopped = d.json("runs", "stop", str(run_id))
    assert stopped["status"] == "cancelled" and stopped["error"] == "stopped by `fleetd runs stop`"
    assert stopped["wait_until"] is None


def test_a_stop_under_load_ends_within_the_graces_and_leaves_no_run_running(short_home: Path) -> None:
    """`daemon stop` with runs by the dozen in flight, fires arriving all the while (some of them cut short
    by the stop) and a hook following every event: done within the stop grace plus the kill grace, every
    run recorded. It once waited out both graces (a run slot that never said it was done) or forever
    (the hooks follower missed its cancellation when the last run's end woke it)."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from fleetd.records.loop import Loop, Schedule
    from fleetd.store.db import Database
    from fleetd.store.loops import LoopStore

    home = short_home / "home"
    home.mkdir()

    async def prefill() -> None:  # written before the start: 60 `loop add`s would take longer than the test
        db = await Database.open(home / "fleetd.db")
        try:
            now = datetime.now(UTC)
            for i in range(60):
                created = now - timedelta(seconds=1, milliseconds=1000 * i // 60)
                command = "sleep 30" if i % 2 else "true"  # half stay in flight, half keep firing
                await LoopStore(db).insert(Loop(f"load{i:02d}", Schedule("every", "1s", "UTC"), "command",
                                                command=command, created_at=created, updated_at=created,
                                                next_fire_at=now + timedelta(seconds=2)))  # fmt: skip
        finally:
            await db.close()

    asyncio.run(prefill())
    d = Daemon(home, "--stop-grace", "1s", "--kill-grace", "1s").start()
    try:
        d.cli("hook", "add", "everything", "--on", "*", "--exec", "cat > /dev/null")

        def sleeping() -> int:  # the `sleep 30` runs (odd loops): a `true` run counted here could end before the stop
            return sum(int(r["loop"][4:]) % 2 for r in d.runs("--status", "running"))

        wait_until(lambda: sleeping() >= 30, timeout=30, what="the 30 sleeping runs in flight")
        started = time.monotonic()
        d.cli("daemon", "stop", "--wait", "60")
        took = time.monotonic() - started
    finally:
        d.stop()
    assert took < 1 + 1 + 5, f"daemon stop took {took:.1f}s"
    with sqlite3.connect(home / "fleetd.db") as db:
        left = db.execute("SELECT count(*) FROM runs WHERE status IN ('running', 'waiting')").fetchone()[0]
        interrupted = db.execute("SELECT count(*) FROM runs WHERE status = 'interrupted'").fetchone()[0]
    assert left == 0
    assert interrupted >= 30
