"""Add → fires → history, overlap, timeout, output cap, manual runs, JSON shapes, filters.

One real daemon for the module (real socket, real SQLite file, real children); the CLI is run
as a user runs it. Each test uses its own loop names.
"""

from __future__ import annotations

import os
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.cli.format import local_time
from tests.harness import Daemon, alive, wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUN_KEYS = {"id", "loop", "trigger", "status", "exit_code", "scheduled_at", "started_at", "finished_at",
            "backend", "profile", "error"}  # fmt: skip
LOOP_KEYS = {"name", "schedule", "backend", "enabled", "next_fire_at", "last_fire_at"}


def finished(daemon: Daemon, loop: str, n: int = 1, status: str | None = None) -> list[dict]:
    def done() -> list[dict]:
        runs = [r for r in daemon.runs("--loop", loop) if r["status"] != "running"]
        if status:
            runs = [r for r in runs if r["status"] == status]
        return runs if len(runs) >= n else []

    return wait_until(done, timeout=20, what=f"{n} finished run(s) of {loop}")


def test_add_fires_and_records_history_with_prompt_on_stdin_and_env(daemon: Daemon, tmp_path: Path) -> None:
    out = daemon.cli(
        "loop", "add", "hist", "--every", "1s", "--dir", str(tmp_path), "--prompt", "look at X",
        "--env", "GREETING=hello",
        "--command", 'echo "$GREETING $FLEETD_PROMPT in $PWD ($FLEETD_TRIGGER)"; cat; exit 3',
    )  # fmt: skip
    assert "added loop hist" in out.stdout
    runs = finished(daemon, "hist", n=2)
    daemon.cli("loop", "pause", "hist")
    run = runs[-1]
    assert set(run) >= RUN_KEYS
    assert run["trigger"] == "schedule"
    assert run["status"] == "failed" and run["exit_code"] == 3
    assert run["backend"] == "command" and run["profile"] == ""
    for key in ("scheduled_at", "started_at", "finished_at"):
        assert datetime.fromisoformat(run[key]).utcoffset() is not None
    log = daemon.cli("runs", "logs", str(run["id"])).stdout
    assert f"hello look at X in {tmp_path} (schedule)" in log
    assert log.count("look at X") == 2  # once from the variable, once from stdin
    shown = daemon.json("runs", "show", str(run["id"]))
    assert shown["id"] == run["id"] and shown["error"] == "exit code 3"
    table = daemon.cli("runs", "list", "--loop", "hist").stdout
    assert table.splitlines()[0].split()[:4] == ["ID", "LOOP", "TRIGGER", "STATUS"]


def test_loop_json_shapes_and_pause_resume(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "shape", "--cron", "0 2 * * *", "--tz", "Europe/Stockholm", "--command", "true")
    loops = daemon.json("loop", "list")
    assert isinstance(loops, list)
    loop = next(lp for lp in loops if lp["name"] == "shape")
    assert set(loop) >= LOOP_KEYS
    assert loop["schedule"] == {"kind": "cron", "expr": "0 2 * * *", "timezone": "Europe/Stockholm"}
    nxt = datetime.fromisoformat(loop["next_fire_at"])
    assert nxt.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Stockholm")).hour == 2
    assert loop["enabled"] is True and loop["last_fire_at"] is None
    daemon.cli("loop", "pause", "shape")
    paused = daemon.json("loop", "show", "shape")
    assert paused["enabled"] is False and paused["next_fire_at"] is None
    daemon.cli("loop", "resume", "shape")
    assert daemon.json("loop", "show", "shape")["next_fire_at"] == loop["next_fire_at"]
    daemon.cli("loop", "rm", "shape")
    assert "shape" not in [lp["name"] for lp in daemon.json("loop", "list")]


def test_manual_run_and_filters(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "manual", "--every", "1h", "--command", "echo manual-output")
    started = daemon.json("loop", "run", "manual")
    assert started["trigger"] == "manual" and started["status"] == "running"
    run = finished(daemon, "manual")[0]
    assert run["status"] == "succeeded" and run["exit_code"] == 0
    assert "manual-output" in daemon.cli("runs", "logs", str(run["id"])).stdout
    assert daemon.runs("--loop", "manual", "--status", "failed") == []
    assert [r["id"] for r in daemon.runs("--loop", "manual", "--since", "1h")] == [run["id"]]
    assert len(daemon.json("runs", "list", "--limit", "1")) == 1


def test_finished_at_is_when_the_run_ended(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "slow", "--every", "1h", "--command", "sleep 1.2")
    started = daemon.json("loop", "run", "slow")
    assert started["finished_at"] is None and started["duration_s"] is None
    run = daemon.wait_run(started["id"])
    seen_done = datetime.now(UTC)
    begin, end = datetime.fromisoformat(run["started_at"]), datetime.fromisoformat(run["finished_at"])
    assert begin + timedelta(seconds=1.2) <= end <= seen_done
    assert run["duration_s"] == round((end - begin).total_seconds(), 3)
    (attempt,) = run["attempt_list"]
    attempt_begin, attempt_end = (datetime.fromisoformat(attempt[k]) for k in ("started_at", "finished_at"))
    assert begin <= attempt_begin and attempt_begin + timedelta(seconds=1.2) <= attempt_end <= end
    # The list and the text view say the same; 1.2 s apart, the two times differ even to the second.
    (listed,) = daemon.runs("--loop", "slow")
    assert listed["finished_at"] == run["finished_at"]
    shown = dict(line.split(None, 1) for line in daemon.cli("runs", "show", str(run["id"])).stdout.splitlines())
    assert shown["finished"] == local_time(run["finished_at"]) != shown["started"] == local_time(run["started_at"])


def test_overlapping_fire_is_recorded_as_skipped(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "overlap", "--every", "1s", "--command", "sleep 2.5")
    skipped = finished(daemon, "overlap", status="skipped")
    daemon.cli("loop", "pause", "overlap")
    assert skipped[0]["error"].startswith("previous run ") and "still running" in skipped[0]["error"]
    assert skipped[0]["exit_code"] is None
    # It ran nothing, so it has no output: `runs logs` printed nothing at all, exit 0, as for a silent run.
    logs = daemon.cli("runs", "logs", str(skipped[0]["id"]))
    said = f"run {skipped[0]['id']} was skipped ({skipped[0]['error']}): no output\n"
    assert logs.stdout == "" and logs.stderr == said
    # A manual fire while it runs is refused the same way, with a clear message.
    daemon.cli("loop", "add", "busy", "--every", "1h", "--command", "sleep 3")
    daemon.cli("loop", "run", "busy")
    refused = daemon.cli("loop", "run", "busy", check=False)
    assert refused.returncode == 1
    assert "skipped: previous run" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_timeout_kills_the_whole_tree_even_when_sigterm_is_ignored(daemon: Daemon, tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    daemon.cli(
        "loop", "add", "stubborn", "--every", "1h", "--timeout", "3s",  # (time to fork twice on a loaded host)
        "--command", f"{sys.executable} {FIXTURES / 'forker.py'} {pids_file}",
    )  # fmt: skip
    daemon.cli("loop", "run", "stubborn")
    run = finished(daemon, "stubborn")[0]
    assert run["status"] == "timed_out"
    assert run["error"] == "timed out after 3s"
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 3  # the run, its child, and the double-forked grandchild
    wait_until(lambda: not any(alive(p) for p in pids), timeout=10, what="every process of the run gone")
    assert "timed out after" in daemon.cli("runs", "logs", str(run["id"])).stdout


def test_output_is_capped_keeping_the_tail(daemon: Daemon) -> None:
    # 3000 numbered lines of 100 bytes = 300 kB through a 64 kB cap.
    script = "for i in range(3000): print(f'{i:05d}' + 'x' * 94)"
    daemon.cli(
        "loop", "add", "noisy", "--every", "1h", "--output-cap", "64k",
        "--command", f"{sys.executable} -c \"{script}\"",
    )  # fmt: skip
    daemon.cli("loop", "run", "noisy")
    run = finished(daemon, "noisy")[0]
    assert run["status"] == "succeeded"
    path = Path(run["log_path"])
    assert path.stat().st_size <= 64 * 1024 + 200  # the tail plus a one-line marker
    text = path.read_text()
    assert text.startswith("[fleetd] output capped at 65536 bytes")
    assert text.rstrip().endswith("02999" + "x" * 94)
    assert "00000xxx" not in text


def test_follow_streams_a_live_run_until_it_ends(daemon: Daemon) -> None:
    daemon.cli(
        "loop", "add", "live", "--every", "1h",
        "--command", "for i in 1 2 3; do echo tick-$i; sleep 0.4; done",
    )  # fmt: skip
    run = daemon.json("loop", "run", "live")
    followed = daemon.cli("runs", "logs", str(run["id"]), "--follow")
    assert followed.stdout.split() == ["tick-1", "tick-2", "tick-3"]
    assert daemon.json("runs", "show", str(run["id"]))["status"] == "succeeded"


def test_socket_is_private(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.socket.parent).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(daemon.socket).st_mode)


def test_second_daemon_on_the_same_home_exits_1(daemon: Daemon) -> None:
    second = Daemon(daemon.home)
    result = second.cli("daemon", "run", check=False)
    assert result.returncode == 1
    assert "already running" in result.stderr and str(daemon.home) in result.stderr
    assert daemon.cli("daemon", "status").returncode == 0  # the first one is unharmed
