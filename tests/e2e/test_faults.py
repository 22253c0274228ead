"""Issue 9's fault suite: many runs in flight when the daemon is killed or stopped, readers racing
fires, and what a crash leaves behind (open attempts, temp directories, waiting runs)."""

from __future__ import annotations

import itertools
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from tests.harness import Daemon, alive, wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MakeDaemon = Callable[..., Daemon]
IN_FLIGHT = 20
KILL_GRACE = 2.0  # serial recovery or stop would take IN_FLIGHT times this


def _start_stubborn_runs(d: Daemon, tmp_path: Path) -> tuple[list[int], list[Path]]:
    """IN_FLIGHT runs whose processes (child and double-forked grandchild) ignore SIGTERM."""
    run_ids, pid_files = [], []
    for i in range(IN_FLIGHT):
        pid_file = tmp_path / f"pids{i}"
        d.cli("loop", "add", f"stubborn{i}", "--every", "1h", "--paused",
              "--command", f"{sys.executable} {FIXTURES / 'forker.py'} {pid_file}")  # fmt: skip
        run_ids.append(d.json("loop", "run", f"stubborn{i}")["id"])
        pid_files.append(pid_file)
    wait_until(lambda: all(f.exists() and len(f.read_text().split()) == 3 for f in pid_files), timeout=60,
               what="every run's three processes")  # fmt: skip
    return run_ids, pid_files


def _pids(files: list[Path]) -> list[int]:
    return [int(p) for f in files for p in f.read_text().split()]


def test_kill9_with_20_runs_in_flight_recovers_within_one_kill_grace(
    short_home: Path, make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    home = short_home / "home"
    d = Daemon(home, "--kill-grace", f"{KILL_GRACE}s").start()
    run_ids, pid_files = _start_stubborn_runs(d, tmp_path)
    pids = _pids(pid_files)
    tmp_dirs = list((home / "tmp").iterdir())
    assert len(tmp_dirs) == IN_FLIGHT  # each attempt's private TMPDIR
    d.kill9()
    assert all(alive(p) for p in pids)

    d = Daemon(home, "--kill-grace", f"{KILL_GRACE}s")
    began = time.monotonic()
    d.start(until="answers")
    answered = time.monotonic() - began
    seen = {d.status()}
    wait_until(lambda: seen.add(d.status()) or "ok" in seen, timeout=30, what="recovery to finish")
    recovered = time.monotonic() - began
    try:
        # Serially this took IN_FLIGHT kill graces (40 s); now all trees die at once.
        assert recovered < 3 * KILL_GRACE + 4, f"recovery took {recovered:.1f}s"
        assert answered < KILL_GRACE + 4 and "recovering" in seen  # it answered while recovering
        assert not [p for p in pids if alive(p)]
        for run_id in run_ids:
            run = d.json("runs", "show", str(run_id))
            assert run["status"] == "interrupted"
            assert run["finished_at"] is not None
            assert "the daemon died (a crash, kill -9 or power loss) while this run was running" in run["error"]
            (attempt,) = run["attempt_list"]
            assert attempt["finished_at"] is not None and attempt["outcome"] == "failed"
            assert attempt["error"] == "the daemon died during this attempt"
        assert not any(p.exists() for p in tmp_dirs)
    finally:
        d.stop()


def test_sigterm_with_20_runs_in_flight_stops_within_the_graces(short_home: Path, tmp_path: Path) -> None:
    d = Daemon(short_home / "home", "--kill-grace", f"{KILL_GRACE}s", "--stop-grace", "1s").start()
    run_ids, pid_files = _start_stubborn_runs(d, tmp_path)
    # A run that ends cleanly when told to stop: its exit 0 inside the kill grace is its clean shutdown, not its task
    # done (it was recorded `succeeded`, with a run.succeeded event and hooks): interrupted, keeping its exit code.
    d.cli("loop", "add", "polite", "--every", "1h", "--paused",
          "--command", "trap 'echo bye; exit 0' TERM; echo ready; sleep 60 & wait")  # fmt: skip
    polite = d.json("loop", "run", "polite")["id"]
    wait_until(lambda: "ready" in d.cli("runs", "logs", str(polite)).stdout, what="the polite run to start")
    began = time.monotonic()
    assert d.stop(timeout=60) == 0
    took = time.monotonic() - began
    assert took < 1 + KILL_GRACE + 5, f"stop took {took:.1f}s"  # serially: 20 kill graces
    assert not [p for p in _pids(pid_files) if alive(p)]
    with sqlite3.connect(d.home / "fleetd.db") as db:
        statuses = dict(db.execute("SELECT id, status FROM runs").fetchall())
    assert [statuses[i] for i in run_ids] == ["interrupted"] * IN_FLIGHT
    with sqlite3.connect(d.home / "fleetd.db") as db:
        assert db.execute("SELECT status, exit_code FROM runs WHERE id = ?", (polite,)).fetchone() == ("interrupted", 0)


def test_a_run_left_waiting_by_a_crash_says_so_and_keeps_the_reset_it_waited_for(make_daemon: MakeDaemon) -> None:
    d = make_daemon()
    d.cli("loop", "add", "waits", "--every", "1h", "--paused", "--command", "sleep 60")
    d.cli("loop", "add", "goes_on", "--every", "1h", "--command", "echo did the work; sleep 60")
    run = d.json("loop", "run", "waits")
    other = d.json("loop", "run", "goes_on")
    for r in (run, other):
        wait_until(lambda r=r: d.json("runs", "show", str(r["id"]))["attempt_list"], what="the runs' attempts to start")
    d.kill9()
    until = (datetime.now().astimezone() + timedelta(minutes=5)).isoformat(timespec="milliseconds")
    with sqlite3.connect(d.home / "fleetd.db") as db:  # as runs waiting for a profile's reset leave them
        db.execute("UPDATE runs SET status = 'waiting', wait_until = ?", (until,))
    restarted = datetime.now().astimezone()
    d = make_daemon("--stop-grace", "1s")  # (the run it starts again sleeps)
    after = d.json("runs", "show", str(run["id"]))
    assert after["status"] == "interrupted"
    assert after["error"].startswith(
        "the daemon died (a crash, kill -9 or power loss) while this run waited for headroom"
    )
    # Its end is its last sign of life, not the restart (the downtime was counted as its run time); its route says
    # how it ended (it ended at its `wait`, as if still waiting).
    assert datetime.fromisoformat(after["finished_at"]) < restarted
    assert (after["route"][-1]["kind"], after["route"][-1]["detail"]) == ("stop", after["error"]), after["route"]
    assert datetime.fromisoformat(after["wait_until"]) == datetime.fromisoformat(until)  # the next start reads it
    # A paused loop's: not run again (a fire of the loop, which its pause holds back).
    assert [r["id"] for r in d.json("runs", "list", "--loop", "waits")] == [run["id"]]
    # An enabled loop's is: its work was never done.
    again = wait_until(lambda: [r for r in d.json("runs", "list", "--loop", "goes_on") if r["id"] != other["id"]],
                       what="goes_on's run to be run again")  # fmt: skip
    assert [r["trigger"] for r in again] == ["catch-up"]
    wait_until(lambda: "did the work" in d.cli("runs", "logs", str(again[0]["id"])).stdout, what="its command to run")


def test_every_fire_is_recorded_exactly_once_while_clients_read(make_daemon: MakeDaemon) -> None:
    """Three clients list runs while loops fire every second: the reads once served stale snapshots
    to the writes' read-backs, and fires were retried into duplicates while the next slot was lost."""
    d = make_daemon()
    loops = [f"tick{i}" for i in range(4)]
    for name in loops:
        d.cli("loop", "add", name, "--every", "1s", "--command", "true")
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for args in (("runs", "list", "--limit", "200"), ("loop", "list"), ("loop", "show", "tick0")):
                result = d.cli(*args, check=False)
                if result.returncode != 0:
                    errors.append(result.stderr)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        added = [d.json("loop", "add", f"late{i}", "--every", "1h", "--paused", "--command", "true")
                 for i in range(5)]  # fmt: skip
        manual = [d.json("loop", "run", f"late{i}") for i in range(5)]
        wait_until(lambda: min(len(d.runs("--loop", n)) for n in loops) >= 5, timeout=60, what="5 fires per loop")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert [a["name"] for a in added] == [f"late{i}" for i in range(5)]
    for run in manual:
        assert d.wait_run(run["id"])["status"] == "succeeded"
    for name in loops:
        runs = [r for r in d.runs("--loop", name) if r["trigger"] == "schedule"]
        slots = sorted(datetime.fromisoformat(r["scheduled_at"]) for r in runs)
        duplicated = [s for s, n in Counter(slots).items() if n > 1]
        assert not duplicated, f"{name}: slots recorded twice: {duplicated}"
        # A fire that started a whole period late (a loaded host) is followed by the next slot still ahead, not
        # by the ones already past (schedule.following): only a gap after a fire on time is a lost slot.
        started = {datetime.fromisoformat(r["scheduled_at"]): datetime.fromisoformat(r["started_at"]) for r in runs}
        gaps = [(a, b - a) for a, b in itertools.pairwise(slots)
                if b - a != timedelta(seconds=1) and started[a] - a < timedelta(seconds=1)]  # fmt: skip
        assert not gaps, f"{name}: slots missing between fires: {gaps}"
