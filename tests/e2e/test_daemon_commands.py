"""`daemon restart`, `daemon logs`, a second Ctrl-C on `daemon run`, flags every daemon command reads
the same way, and where a loop without --dir runs. Real CLI, real daemon processes."""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.harness import FLEETD, Daemon, alive, wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MakeDaemon = Callable[..., Daemon]


def test_bad_kill_grace_is_a_usage_error_on_every_daemon_command(short_home: Path) -> None:
    d = Daemon(short_home / "home")
    for command in ("run", "start", "restart"):
        result = d.cli("daemon", command, "--kill-grace", "abc", check=False)
        assert result.returncode == 2, command
        assert result.stderr.strip().splitlines() == [
            "fleetd: invalid --kill-grace: invalid duration 'abc' (use e.g. 90s, 10m, 1h30m, 2d)"
        ]
    assert not d.socket.exists()  # nothing was started


def test_restart_stops_gracefully_then_starts_and_logs_show_it(short_home: Path) -> None:
    d = Daemon(short_home / "home")
    try:
        fresh = d.cli("daemon", "restart", "--kill-grace", "0.5s")
        assert fresh.stdout.startswith("fleetd daemon was not running") and "starting it" in fresh.stdout
        first = d.json("daemon", "status")["pid"]
        again = d.cli("daemon", "restart", "--kill-grace", "0.5s")
        second = d.json("daemon", "status")["pid"]  # it answers as soon as restart returns
        assert second != first and not alive(first)
        assert again.stdout.startswith(f"fleetd daemon restarted (pid {second}, was {first}")

        logs = d.cli("daemon", "logs").stdout
        assert f"fleetd daemon ready (pid {first}" in logs and f"fleetd daemon ready (pid {second}" in logs
        assert "fleetd daemon stopped" in logs
        assert d.cli("daemon", "logs", "--since", "1h").stdout == logs  # all of it is recent
        recent = d.cli("daemon", "logs", "--since", "0.001s").stdout
        assert f"ready (pid {first}" not in recent
        assert d.cli("daemon", "logs", "--since", "soon", check=False).returncode == 2

        follower = subprocess.Popen([FLEETD, "daemon", "logs", "-f"], env=d.env, bufsize=0,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            d.cli("loop", "add", "logged", "--every", "1h", "--command", "true")
            run_id = d.json("loop", "run", "logged")["id"]
            wanted = f"run {run_id} of loop logged: succeeded".encode()
            assert follower.stdout is not None
            deadline = time.monotonic() + 20
            seen = b""
            # Raw reads of whatever the pipe holds: a buffered readline() after select() left lines in its
            # buffer that select() could not see, and waited for more output that never came.
            while wanted not in seen and time.monotonic() < deadline:
                if select.select([follower.stdout], [], [], 1)[0]:
                    seen += os.read(follower.stdout.fileno(), 65536)
            assert wanted in seen
        finally:
            follower.terminate()
            follower.wait(10)
    finally:
        d.cli("daemon", "stop", check=False)


def test_restart_keeps_the_running_daemons_options_and_applies_those_given(short_home: Path) -> None:
    """A bare `daemon restart` started the new daemon on the defaults: a `--retain off` (keep everything) became
    90-day pruning, history deleted at its next prune, and a `--gateway` was dropped, without a word."""
    d = Daemon(short_home / "home")
    try:
        d.cli("daemon", "start", "--retain", "off", "--heartbeat-interval", "5m", "--kill-grace", "0.5s")
        assert d.json("daemon", "status")["options"]["retain"] == "off"
        d.cli("daemon", "restart")
        kept = d.json("daemon", "status")["options"]
        assert (kept["retain"], kept["heartbeat_interval"], kept["kill_grace"]) == ("off", "5m", "0.5s"), kept
        d.cli("daemon", "restart", "--retain", "30d")  # what is given is applied; the rest is kept
        changed = d.json("daemon", "status")["options"]
        assert (changed["retain"], changed["heartbeat_interval"]) == ("30d", "5m"), changed
        assert changed["stop_grace"] == "30s" and changed["gateway"] == "" and changed["gateway_public"] is False
    finally:
        d.cli("daemon", "stop", check=False)


def test_a_bare_restart_keeps_a_gateway_enable_made_since_the_daemon_started_with_gateway(short_home: Path) -> None:
    """`gateway enable` is "listen now and after restarts"; a bare restart of a daemon started with `--gateway` put
    the old flag back, and clients pointed at the enabled address broke. The user's later word wins."""
    d = Daemon(short_home / "home")
    try:
        d.cli("daemon", "start", "--gateway", "127.0.0.1:0", "--kill-grace", "0.5s")
        assert d.json("gateway", "status")["source"] == "flag"
        port = _free_port()
        d.cli("gateway", "enable", "--listen", f"127.0.0.1:{port}")
        assert d.json("daemon", "status")["options"]["gateway"] == ""  # the flag no longer says where
        d.cli("daemon", "restart")
        status = d.json("gateway", "status")
        assert (status["source"], status["listen"]) == ("setting", f"127.0.0.1:{port}"), status
        assert d.json("daemon", "status")["options"]["kill_grace"] == "0.5s"  # the other flags are kept
    finally:
        d.cli("daemon", "stop", check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_daemon_logs_without_a_log_says_where_it_would_be(short_home: Path) -> None:
    d = Daemon(short_home / "home")
    d.env["XDG_CONFIG_HOME"] = str(short_home / "config")  # no unit installed
    result = d.cli("daemon", "logs", check=False)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert str(short_home / "home" / "logs" / "daemon.log") in result.stderr


def test_a_second_ctrl_c_kills_the_runs_and_stops_at_once(short_home: Path, tmp_path: Path) -> None:
    d = Daemon(short_home / "home", "--kill-grace", "30s", "--stop-grace", "60s").start()
    try:
        pids_file = tmp_path / "pids"
        d.cli("loop", "add", "stubborn", "--every", "1h",
              "--command", f"{sys.executable} {FIXTURES / 'forker.py'} {pids_file}")  # fmt: skip
        run_id = d.json("loop", "run", "stubborn")["id"]
        wait_until(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3, what="the run's processes")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGINT)
        wait_until(lambda: "press Ctrl-C again" in d.log_text(), what="the first Ctrl-C taken")
        assert d.proc.poll() is None  # the stop grace (60 s): it waits for the run
        started = time.monotonic()
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(15) == 0
        assert time.monotonic() - started < 10  # neither the stop grace nor the kill grace
        pids = [int(p) for p in pids_file.read_text().split()]
        wait_until(lambda: not any(alive(p) for p in pids), what="every process of the run gone")
        with sqlite3.connect(d.home / "fleetd.db") as db:
            status, error = db.execute("SELECT status, error FROM runs WHERE id = ?", (run_id,)).fetchone()
        assert status == "interrupted" and "at once" in error
        # The grace it cut short ended quietly (it logged "_GatheringFuture exception was never retrieved"
        # and a CancelledError traceback).
        assert "Traceback" not in d.log_text() and "never retrieved" not in d.log_text(), d.log_text()
    finally:
        d.stop()


def test_a_loop_without_dir_runs_in_its_own_directory_under_the_home(make_daemon: MakeDaemon) -> None:
    d = make_daemon()
    d.cli("loop", "add", "homeless", "--every", "1h", "--command", 'pwd; echo "PWD=$PWD"; touch made-here')
    run = d.wait_run(d.json("loop", "run", "homeless")["id"])
    assert run["status"] == "succeeded"
    work = d.home / "work" / "homeless"
    assert d.cli("runs", "logs", str(run["id"])).stdout.split() == [str(work), f"PWD={work}"]
    assert (work / "made-here").exists()
    assert stat.S_IMODE(os.stat(work).st_mode) == 0o700 and stat.S_IMODE(os.stat(work.parent).st_mode) == 0o700
    # Deleted since (a clean-up of the home): made again for the next run, not its "working directory not found".
    shutil.rmtree(work.parent)
    again = d.wait_run(d.json("loop", "run", "homeless")["id"])
    assert again["status"] == "succeeded", again
    assert (work / "made-here").exists() and stat.S_IMODE(os.stat(work).st_mode) == 0o700
    assert d.json("loop", "show", "homeless")["dir"] is None  # the loop itself is unchanged


def test_status_says_the_daemon_is_stopping_while_its_runs_get_the_grace(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--stop-grace", "60s")
    d.cli("loop", "add", "lingers", "--every", "1h", "--command", "sleep 60")
    d.json("loop", "run", "lingers")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    # It said "running … store ok" for the whole stop grace.
    wait_until(lambda: d.json("daemon", "status")["status"] == "stopping", what="status stopping")
    assert " stopping (no new fires; its runs get the stop grace): pid " in d.cli("daemon", "status").stdout
    d.proc.send_signal(signal.SIGTERM)  # now: the run is killed
    assert d.proc.wait(15) == 0


def _lingering(home: Path, stop_grace: str) -> tuple[Daemon, int]:
    """A daemon with a run that ignores SIGTERM, so that a stop lasts its whole grace; and the daemon's pid."""
    d = Daemon(home, "--stop-grace", stop_grace, "--kill-grace", "0.5s").start()
    d.cli("loop", "add", "lingers", "--every", "1h", "--command", "trap '' TERM; sleep 60")
    d.json("loop", "run", "lingers")
    assert d.proc is not None
    return d, d.proc.pid


def test_start_while_the_daemon_stops_waits_for_it_then_starts_one(short_home: Path) -> None:
    """`daemon start` said "already running" (exit 0) to a daemon in its stop grace, which then exited: a
    script's `stop || true; start` was left with no daemon and a success."""
    d, old = _lingering(short_home / "home", "1s")
    try:
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: d.json("daemon", "status")["status"] == "stopping", what="status stopping")
        started = d.cli("daemon", "start")
        assert d.proc.wait(15) == 0
        status = d.json("daemon", "status")
        new = status["pid"]
        assert new != old and status["status"] == "ok" and alive(new)
        assert started.stdout.startswith(f"fleetd daemon started (pid {new}"), started.stdout
        assert started.stderr == f"fleetd daemon (pid {old}) is stopping: waiting for it to exit\n"
    finally:
        d.cli("daemon", "stop", check=False)


def test_a_restart_whose_stop_wait_runs_out_says_it_did_not_restart(short_home: Path) -> None:
    """`restart --stop-wait 1` under a longer stop grace said "still running after 1s", exit 1, and the old daemon
    then exited: no daemon, and words that read as if nothing had happened."""
    d, old = _lingering(short_home / "home", "3s")
    try:
        result = d.cli("daemon", "restart", "--stop-wait", "1", check=False)
        assert result.returncode == 1
        assert result.stderr == (
            f"fleetd: fleetd daemon (pid {old}) is still stopping after 1s (its runs' stop grace): it exits by "
            "itself; not restarted: `fleetd daemon start` waits for it and starts one\n"
        )
        assert d.proc is not None and d.proc.wait(15) == 0
    finally:
        d.cli("daemon", "stop", check=False)


def test_an_open_follower_does_not_keep_a_stopping_daemon_alive(make_daemon: MakeDaemon) -> None:
    d = make_daemon()
    follower = subprocess.Popen([FLEETD, "events", "--follow"], env=d.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        # Connected: the daemon's socket has an accepted connection besides the listening one.
        wait_until(lambda: Path("/proc/net/unix").read_text().count(str(d.socket)) >= 2, what="the follower connected")
        started = time.monotonic()
        d.cli("daemon", "stop")
        assert time.monotonic() - started < 15
        _, err = follower.communicate(timeout=15)
        assert follower.returncode == 1
        assert err.strip().splitlines() == ["fleetd: the fleetd daemon stopped"]
        # Its stream was ended, not cancelled when the stop's grace for open answers ran out (which logged
        # "Cancel 1 running task(s), timeout graceful shutdown exceeded" and a CancelledError traceback).
        log = (d.home / "daemon-test.log").read_text(errors="replace")
        assert "Traceback" not in log and "Cancel" not in log and "ERROR" not in log, log[-3000:]
    finally:
        follower.kill()
        follower.wait(5)


def test_a_daemon_too_busy_to_answer_is_never_called_not_running(short_home: Path) -> None:
    """Under load the daemon may answer slower than a health probe waits: `daemon stop`, `restart` and
    `start` must not report it as not running (and `start` must not start a second one)."""
    import socket

    d = Daemon(short_home / "home")
    d.socket.parent.mkdir(parents=True)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # accepts, never answers: a saturated daemon
    silent.bind(str(d.socket))
    silent.listen(16)
    try:
        for argv in (("stop", "--wait", "1"), ("restart", "--stop-wait", "1"), ("start", "--wait", "1")):
            started = time.monotonic()
            result = d.cli("daemon", *argv, check=False)
            assert result.returncode == 1, (argv, result)
            assert "not running" not in result.stderr + result.stdout, (argv, result)
            assert "did not answer" in result.stderr, (argv, result)
            assert time.monotonic() - started < 20
    finally:
        silent.close()


def test_daemon_start_from_a_directory_holding_python_files_runs_the_installed_fleetd(short_home: Path) -> None:
    """`python -m` puts the working directory first on the import path: started from a checkout or any
    project with a `json.py` or a `fleetd/`, the daemon would run those instead of what is installed."""
    project = short_home / "project"
    (project / "fleetd").mkdir(parents=True)
    (project / "fleetd" / "__init__.py").write_text("raise SystemExit('imported from the working directory')\n")
    d = Daemon(short_home / "home")
    result = subprocess.run([FLEETD, "daemon", "start", "--wait", "20"], env=d.env, cwd=project, capture_output=True,
                            text=True)  # fmt: skip
    try:
        assert result.returncode == 0, result.stderr
        assert d.status() == "ok"
    finally:
        d.cli("daemon", "stop", check=False)  # started by the CLI: `d` holds no process to signal


def test_parallel_starts_in_a_fresh_home_all_succeed_with_one_daemon(short_home: Path) -> None:
    d = Daemon(short_home / "home")
    starts = [subprocess.Popen([FLEETD, "daemon", "start"], env=d.env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]  # fmt: skip
    try:
        outcomes = [(p.wait(30), *p.communicate()) for p in starts]
        pid = d.json("daemon", "status")["pid"]
        # The two that lost the race were `exit 1: a daemon is already running`: the user asked for one to run.
        assert [code for code, _, _ in outcomes] == [0, 0, 0], outcomes
        assert sorted(out.split(" (")[0] for _, out, _ in outcomes) == [
            "fleetd daemon already running", "fleetd daemon already running", "fleetd daemon started"
        ], outcomes  # fmt: skip
        assert all(f"(pid {pid}," in out for _, out, _ in outcomes), outcomes
    finally:
        d.cli("daemon", "stop", check=False)


def test_events_follow_prints_each_new_event_as_it_is_written(make_daemon: MakeDaemon) -> None:
    d = make_daemon()
    follower = subprocess.Popen([FLEETD, "events", "--follow", "--json", "--limit", "1"], env=d.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_until(lambda: Path("/proc/net/unix").read_text().count(str(d.socket)) >= 2, what="the follower connected")
        d.cli("loop", "add", "seen", "--every", "1h", "--command", "true")
        run_id = d.json("loop", "run", "seen")["id"]
        assert follower.stdout is not None
        # Read by a thread: lines that came in one chunk are in the file's buffer, where select() cannot see them.
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()  # type: ignore[union-attr]
        types: list[str] = []
        deadline = time.monotonic() + 20
        while "run.succeeded" not in types:
            event = json.loads(lines.get(timeout=max(0.01, deadline - time.monotonic())))
            if event.get("data", {}).get("run_id") == run_id:
                types.append(event["type"])
        assert types == ["run.started", "run.succeeded"]
    finally:
        follower.kill()
        follower.wait(5)


def test_daemon_start_returns_once_the_gateway_listens(short_home: Path) -> None:
    # A script that asked for the gateway's URL right after `daemon start` got none: the gateway started after the
    # heartbeat's first beat (here, a first reading of a profile's 16 MB of transcripts), and start had returned.
    d = Daemon(short_home / "home")
    try:
        d.cli("daemon", "start", "--wait", "20")
        config = Path(d.json("profile", "add", "big", "--backend", "claude_code")["config_dir"])
        d.cli("daemon", "stop")
        transcript = config / "projects" / "p" / "s.jsonl"
        transcript.parent.mkdir(parents=True)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        head = f'{{"sessionId":"s","type":"assistant","timestamp":"{now}","requestId":"r'
        body = '","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"' + "x" * 300
        tail = '"}],"usage":{"input_tokens":4,"output_tokens":5}}}\n'
        transcript.write_text("".join(f'{head}{n}","message":{{"id":"m{n}{body}{tail}' for n in range(40_000)))
        d.cli("daemon", "start", "--gateway", "127.0.0.1:0", "--wait", "20")
        status = d.json("gateway", "status")
        assert status["url"] and status["url"].startswith("http://127.0.0.1:"), status
        assert d.status() == "ok"
    finally:
        d.cli("daemon", "stop", check=False)  # started by the CLI: `d` holds no process to signal
