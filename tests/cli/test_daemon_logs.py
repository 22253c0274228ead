"""`daemon logs --since`: which lines of the daemon's own log are inside the window, whatever zone each side runs in."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fleetd.cli.daemonlog import show_file
from fleetd.daemon.main import log_formatter


@contextmanager
def zone(monkeypatch: pytest.MonkeyPatch, name: str) -> Iterator[None]:
    monkeypatch.setenv("TZ", name)
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def _line(message: str, ago_s: float) -> str:
    record = logging.LogRecord("fleetd.daemon", logging.INFO, __file__, 1, message, None, None)
    record.created = time.time() - ago_s
    return log_formatter().format(record) + "\n"


@pytest.mark.parametrize("reader", ["America/New_York", "Europe/Stockholm", "UTC", "Asia/Kolkata"])
def test_since_keeps_the_lines_of_the_window_when_the_cli_runs_in_another_zone_than_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], reader: str
) -> None:
    # The lines' times were read as the CLI's local time: with the daemon in Stockholm, `--since 2m` in New York
    # printed the whole file, and in Stockholm's zone nothing from a UTC daemon.
    log = tmp_path / "daemon.log"
    with zone(monkeypatch, "Europe/Stockholm"):
        log.write_text(_line("an hour ago", 3600) + _line("a minute ago", 60) + "Traceback: its line\n")
    with zone(monkeypatch, "UTC"), log.open("a") as f:
        f.write(_line("a second ago", 1))
    with zone(monkeypatch, reader):
        show_file(log, follow=False, since_s=120)
    shown = capsys.readouterr().out
    assert "a minute ago" in shown and "Traceback: its line" in shown and "a second ago" in shown
    assert "an hour ago" not in shown


def test_a_line_in_the_format_before_the_offset_is_read_by_its_zone_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "daemon.log"
    with zone(monkeypatch, "UTC"):
        now = time.time()
        log.write_text(
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now - 3600)) + " INFO x: old\n"
            + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now - 10)) + " INFO x: recent\n"
        )  # fmt: skip
    with zone(monkeypatch, "America/New_York"):
        show_file(log, follow=False, since_s=120)
    shown = capsys.readouterr().out
    assert "recent" in shown and "old" not in shown
