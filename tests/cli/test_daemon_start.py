"""`daemon start`'s word on a daemon that exited before it answered: its own last line, never an earlier daemon's."""

from __future__ import annotations

from pathlib import Path

from fleetd.cli.daemon import _last_line

OLD = "2026-12-01 18:06:51 +0000 INFO fleetd.daemon: fleetd daemon ready (pid 11061, socket /s)\n"


def test_the_reason_is_read_from_what_the_new_daemon_wrote(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(OLD)
    since = log.stat().st_size
    # Killed while it recovered a crash's runs: the old daemon's "ready" was given as the reason.
    assert _last_line(log, since) == "(it logged nothing)"
    with log.open("a") as f:
        f.write("2026-12-01 18:07:00 +0000 INFO fleetd.daemon: recovering 1 run\nfleetd: database is read-only\n")
    assert _last_line(log, since) == "database is read-only"


def test_a_log_rotated_meanwhile_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text("fleetd: no room\n")
    assert _last_line(log, since=10_000) == "no room"
    assert _last_line(tmp_path / "none.log", since=0) == "(no log)"
