"""Restarts and crashes: kill -9 mid-run, missed fires with catch-up once / skip, SIGTERM grace."""

from __future__ import annotations

import re
import sqlite3
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.harness import Daemon, alive, standin_env, wait_until
from tests.integration import fake_provider as fp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MakeDaemon = Callable[..., Daemon]


def _now() -> datetime:
    return datetime.now().astimezone()


def test_kill9_mid_run_then_restart_marks_interrupted_and_kills_leftovers(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    d = make_daemon()
    pids_file = tmp_path / "pids"
    d.cli("loop", "add", "crashy", "--every", "1h", "--timeout", "10m",
          "--command", f"{sys.executable} {FIXTURES / 'forker.py'} {pids_file}")  # fmt: skip
    before = d.json("loop", "show", "crashy")
    run = d.json("loop", "run", "crashy")
    pids = wait_until(lambda: [int(p) for p in pids_file.read_text().split()] if pids_file.exists() else [],
                      what="the run's processes to start")  # fmt: skip
    wait_until(lambda: len(pids_file.read_text().split()) == 3, what="three processes")
    pids = [int(p) for p in pids_file.read_text().split()]
    d.kill9()
    assert all(alive(p) for p in pids)  # own sessions: they outlive a crashed daemon

    d = make_daemon()
    after = d.json("runs", "show", str(run["id"]))
    assert after["status"] == "interrupted"
    assert after["error"].startswith("the daemon died (a crash, kill -9 or power loss) while this run was running")
    assert re.search(r"; killed \d+ leftover process\(es\)", after["error"])  # they ran until then: its end is now
    assert after["finished_at"] is not None
    wait_until(lambda: not any(alive(p) for p in pids), timeout=10, what="leftover processes killed")
    loop = d.json("loop", "show", "crashy")
    for key in ("name", "schedule", "command", "timeout_s", "next_fire_at", "created_at"):
        assert loop[key] == before[key]


def test_a_run_that_ended_while_the_daemon_was_down_is_not_given_the_downtime(make_daemon: MakeDaemon) -> None:
    # Its end was taken at the restart: a 20 s command "took 1m18s" after a kill -9 and a minute down, and that went
    # into `stats`; its record read like a graceful stop's, and its log said nothing.
    d = make_daemon()
    # A process of its own left behind in the background (as an agent's dev server) says nothing of when it ended.
    d.cli("loop", "add", "short", "--every", "1h", "--command", "sleep 60 & echo start; sleep 1; echo end")
    run = d.json("loop", "run", "short")
    pid = wait_until(lambda: d.json("runs", "show", str(run["id"]))["pid"], what="the run's process")
    log_path = Path(d.json("runs", "show", str(run["id"]))["log_path"])
    wait_until(lambda: log_path.exists() and b"start" in log_path.read_bytes(), what="its first output")
    d.kill9()
    wait_until(lambda: not alive(pid), timeout=10, what="the run's process to end while the daemon is down")
    down_until = _now()
    d = make_daemon()
    after = d.json("runs", "show", str(run["id"]))
    assert after["status"] == "interrupted"
    assert after["error"] == ("the daemon died (a crash, kill -9 or power loss) while this run was running, its "
                              "process ending unseen (at its last output or later); killed 1 leftover process(es) at "
                              "the next start")  # fmt: skip
    assert datetime.fromisoformat(after["finished_at"]) < down_until, (after, down_until)
    (attempt,) = after["attempt_list"]
    assert attempt["finished_at"] == after["finished_at"] and attempt["error"] == "the daemon died during this attempt"
    assert log_path.read_text().endswith(f"[fleetd] {after['error']}\n")


def test_a_run_whose_verify_still_ran_at_the_restart_ran_until_then(short_home: Path, tmp_path: Path) -> None:
    # The verify's process was not the run's recorded one (the attempt's, exited): the run was dated at its last output
    # (58 ms long), its still running verify called a leftover, its own process said to have "ended unseen".
    standin = short_home / "standin"
    standin.mkdir()
    d = Daemon(short_home / "home", "--kill-grace", "0.5s")
    d.env.update(standin_env(standin))
    d.start()
    d.cli("profile", "add", "vp", "--backend", "claude_code")
    d.cli("loop", "add", "verified", "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "vp",
          "--prompt", "x", "--dir", str(tmp_path), "--verify", "echo verifying; sleep 60")  # fmt: skip
    run = d.json("loop", "run", "verified")
    log_path = Path(d.json("runs", "show", str(run["id"]))["log_path"])
    wait_until(lambda: log_path.exists() and b"verifying" in log_path.read_bytes(), what="the verify under way")
    d.kill9()
    restarted = _now()
    d = Daemon(short_home / "home", "--kill-grace", "0.5s")
    d.env.update(standin_env(standin))
    d.start()
    try:
        after = d.json("runs", "show", str(run["id"]))
        assert after["status"] == "interrupted"
        said = r"the daemon died \(a crash, kill -9 or power loss\) while this run was running; killed \d+ leftover"
        assert re.fullmatch(said + r" process\(es\) at the next start", after["error"]), after["error"]
        assert datetime.fromisoformat(after["finished_at"]) >= restarted
    finally:
        d.stop()


def test_a_call_in_flight_at_a_crash_lasted_as_long_as_the_daemon(make_daemon: MakeDaemon) -> None:
    # With no process of its own, a run whose HTTP call was under way ended at its log's last write, the call's start:
    # 11 s into a call, the run "took 36ms". It lasted as long as the daemon did, which now stamps a file every second.
    d = make_daemon()
    with fp.running_fake_provider("ok") as slow:
        slow.latency = 30.0
        d.cli("profile", "add", "slowpoke", "--backend", "openai_compat", "--base-url", f"{slow.base_url}/v1",
              "--model", "m")  # fmt: skip
        d.cli("loop", "add", "inflight", "--every", "1h", "--paused", "--backend", "openai_compat", "--profile",
              "slowpoke", "--prompt", "hi")  # fmt: skip
        run = d.json("loop", "run", "inflight")
        started = datetime.fromisoformat(d.json("runs", "show", str(run["id"]))["started_at"])
        wait_until(lambda: slow.requests, what="the call under way")
        stamp = d.home / "alive"
        wait_until(lambda: stamp.exists() and stamp.stat().st_mtime > started.timestamp() + 2, timeout=10,
                   what="the daemon's stamp, 2 s into the call")  # fmt: skip
        d.kill9()
        restarted = _now()
        d = make_daemon()
        after = d.json("runs", "show", str(run["id"]))
        slow.latency = 0.0
    assert after["status"] == "interrupted"
    finished = datetime.fromisoformat(after["finished_at"])
    assert started + timedelta(seconds=2) < finished < restarted, (started, finished, restarted)


def _killed_mid_attempt(short_home: Path) -> Callable[[], Daemon]:
    """A daemon killed -9 while a run's attempt on profile `once` (`1d=1req`) was under way; what starts it again."""
    standin = short_home / "standin"
    standin.mkdir()

    def started() -> Daemon:
        daemon = Daemon(short_home / "home", "--kill-grace", "0.5s")
        daemon.env.update(standin_env(standin))
        return daemon.start()

    d = started()
    try:
        d.cli("profile", "add", "once", "--backend", "claude_code", "--limit", "1d=1req")
        (standin / "once.scenario").write_text("held")
        d.cli("loop", "add", "crashed", "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "once",
              "--prompt", "x")  # fmt: skip
        d.json("loop", "run", "crashed")
        wait_until(lambda: (standin / "calls.jsonl").exists(), what="the attempt under way")
    finally:
        d.kill9()
    return started


def _once_used(d: Daemon) -> list[float]:
    [once] = [u for u in d.json("usage") if u["profile"] == "once"]
    assert once["state"] == "exhausted", once
    return [w["used"] for w in once["windows"]]


def test_an_attempt_a_crash_cut_short_counts_against_its_profiles_limit(short_home: Path) -> None:
    # A `1d=1req` profile ran twice across a kill -9: the attempt under way was never counted (a stop counts it).
    d = _killed_mid_attempt(short_home)()
    try:
        assert _once_used(d) == [1]
        # Its route so far is kept (it was written only as the run ended, which a kill -9 never reaches), ended by
        # the crash's stop.
        [run] = d.runs("--loop", "crashed")
        assert [e["kind"] for e in d.json("runs", "show", str(run["id"]))["route"]] == ["try", "stop"]
    finally:
        d.stop()


def test_a_crash_during_recovery_does_not_lose_the_cut_short_attempts_count(short_home: Path) -> None:
    # Recovery closed the open attempts in one transaction and counted them in another: a crash (here, a failing
    # insert) between the two left the attempt closed and never counted, and the next start found nothing to count.
    started = _killed_mid_attempt(short_home)
    with sqlite3.connect(short_home / "home" / "fleetd.db") as db:
        db.execute("CREATE TRIGGER no_count BEFORE INSERT ON usage_records WHEN NEW.source = 'attempt' "
                   "BEGIN SELECT RAISE(ABORT, 'the disk is full'); END")  # fmt: skip
    with pytest.raises(AssertionError, match="daemon exited"):
        started()
    with sqlite3.connect(short_home / "home" / "fleetd.db") as db:
        db.execute("DROP TRIGGER no_count")
    d = started()
    try:
        assert _once_used(d) == [1]
        [run] = d.runs("--loop", "crashed")
        assert run["status"] == "interrupted"
    finally:
        d.stop()


def _missed_while_down(make_daemon: MakeDaemon, catch_up: str, crash: bool) -> tuple[Daemon, dict, list]:
    d = make_daemon()
    d.cli("loop", "add", "tick", "--every", "2s", "--catch-up", catch_up, "--command", "true")
    d.cli("loop", "add", "once", "--at", (_now() + timedelta(seconds=2)).isoformat(timespec="seconds"),
          "--catch-up", catch_up, "--command", "true")  # fmt: skip
    # Stop before either fires, then let both fire times pass while the daemon is down.
    d.kill9() if crash else d.stop()
    loops, run_count = _offline(d)
    assert run_count == 0
    due = {name: datetime.fromisoformat(nxt) for name, nxt in loops.items()}
    wait_until(lambda: _now() > max(due.values()) + timedelta(seconds=2.1), timeout=10,
               what="several missed fire times")  # fmt: skip
    d = make_daemon()
    return d, due, d.runs()


def _offline(d: Daemon) -> tuple[dict[str, str], int]:
    """The stored next fire times and run count, read from the database while the daemon is down."""
    with sqlite3.connect(d.home / "fleetd.db") as db:
        loops = dict(db.execute("SELECT name, next_fire_at FROM loops").fetchall())
        (count,) = db.execute("SELECT count(*) FROM runs").fetchone()
    return loops, count


def test_missed_fires_run_exactly_once_with_catch_up_once(make_daemon: MakeDaemon) -> None:
    d, due, _ = _missed_while_down(make_daemon, "once", crash=True)
    catch_ups = wait_until(
        lambda: [r for r in d.runs() if r["trigger"] == "catch-up" and r["status"] == "succeeded"]
        if len([r for r in d.runs() if r["trigger"] == "catch-up"]) >= 2 else [],
        what="catch-up runs of both loops",
    )  # fmt: skip
    wait_until(lambda: len(d.runs("--loop", "tick", "--status", "succeeded")) >= 2, what="schedule resumes")
    runs = d.runs()
    assert sorted(r["loop"] for r in runs if r["trigger"] == "catch-up") == ["once", "tick"]
    for run in catch_ups:
        assert datetime.fromisoformat(run["scheduled_at"]) == due[run["loop"]]
    # Each missed slot ran once, as the catch-up: not again when the timer was armed (that would say `schedule`).
    for name, slot in due.items():
        at_slot = [r["trigger"] for r in runs if (r["loop"], datetime.fromisoformat(r["scheduled_at"])) == (name, slot)]
        assert at_slot == ["catch-up"], f"{name}'s missed slot {slot} ran as {at_slot}"
    assert len([r for r in runs if r["loop"] == "once"]) == 1
    # After the single catch-up, `tick` continues on its schedule, from after the restart; the one-shot is done.
    scheduled = [r for r in runs if r["loop"] == "tick" and r not in catch_ups]
    assert all(r["trigger"] == "schedule" for r in scheduled)
    restarted_after = max(due.values()) + timedelta(seconds=2)
    assert all(datetime.fromisoformat(r["scheduled_at"]) > restarted_after for r in scheduled)
    assert d.json("loop", "show", "once")["next_fire_at"] is None
    assert datetime.fromisoformat(d.json("loop", "show", "tick")["next_fire_at"]) > due["tick"]


def test_missed_fires_are_skipped_with_catch_up_skip(make_daemon: MakeDaemon) -> None:
    d, due, _ = _missed_while_down(make_daemon, "skip", crash=False)
    wait_until(lambda: d.runs("--loop", "tick", "--status", "succeeded"), what="tick's next scheduled run")
    runs = d.runs()
    # The missed fires ran nothing: each loop has one `skipped` row that says so (`loop show`: why not).
    missed = {r["loop"]: r for r in runs if r["trigger"] == "catch-up"}
    assert sorted(missed) == ["once", "tick"] and len([r for r in runs if r["trigger"] == "catch-up"]) == 2
    assert all((r["status"], r["skip_reason"]) == ("skipped", "daemon_down") for r in missed.values())
    assert [r["status"] for r in runs if r["loop"] == "once"] == ["skipped"]
    first = min(
        datetime.fromisoformat(r["scheduled_at"]) for r in runs if r["loop"] == "tick" and r["status"] != "skipped"
    )
    assert first > due["tick"] + timedelta(seconds=2)  # the missed ones never ran
    assert d.json("loop", "show", "once")["next_fire_at"] is None


def test_sigterm_lets_short_runs_finish(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--stop-grace", "10s")
    d.cli("loop", "add", "short", "--every", "1h", "--command", "sleep 1; echo done")
    run = d.json("loop", "run", "short")
    assert d.stop() == 0
    d = make_daemon()
    assert d.json("runs", "show", str(run["id"]))["status"] == "succeeded"


def test_sigterm_interrupts_runs_that_outlast_the_grace(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    d = make_daemon("--stop-grace", "1s")
    pids_file = tmp_path / "pids"
    d.cli("loop", "add", "long", "--every", "1h",
          "--command", f"{sys.executable} {FIXTURES / 'forker.py'} {pids_file}")  # fmt: skip
    run = d.json("loop", "run", "long")
    wait_until(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3, what="processes")
    assert d.stop(timeout=30) == 0
    pids = [int(p) for p in pids_file.read_text().split()]
    assert not any(alive(p) for p in pids)
    d = make_daemon()
    after = d.json("runs", "show", str(run["id"]))
    assert after["status"] == "interrupted"
    assert after["error"] == "daemon stopped before the run finished"
