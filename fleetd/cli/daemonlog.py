"""`fleetd daemon logs`: print the daemon's own log, from its file or from the journal.

The file (`logs/daemon.log`, plus rotated `daemon.log.N` siblings when --since reaches into them) is
read here; a daemon systemd runs logs to the journal, where journalctl is the reader: this execs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import click

from fleetd.cli.client import CliError
from fleetd.timefmt import DAEMON_LOG_FORMAT

POLL_S = 0.2  # how often --follow looks for more


def show_journal(unit: str, *, follow: bool, since_s: float | None) -> None:
    """Replace this process with journalctl on the daemon's unit (it pages, follows and filters)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise CliError(f"the daemon logs to the systemd journal ({unit}), but journalctl is not on PATH")
    argv = [journalctl, "--user", "-u", unit]
    if follow:
        argv.append("--follow")
    if since_s is not None:
        argv.append(f"--since=-{max(1, int(since_s))}s")
    click.echo(f"fleetd: the daemon runs under systemd; its log is the journal: {' '.join(argv[1:])}", err=True)
    sys.stdout.flush()
    os.execv(journalctl, argv)


def show_file(path: Path, *, follow: bool, since_s: float | None) -> None:
    cutoff = datetime.now(UTC) - timedelta(seconds=since_s) if since_s is not None else None
    # Older, rotated files only matter when --since reaches back; newest last.
    files = [*_rotated(path), path] if cutoff is not None else [path]
    out = sys.stdout
    keep = cutoff is None
    for name in files:
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                for line in f:
                    keep = _keep(line, cutoff, keep)
                    if keep:
                        out.write(line)
        except FileNotFoundError:
            continue
    out.flush()
    if follow:
        try:
            for chunk in _tail(path):
                out.write(chunk)
                out.flush()
        except KeyboardInterrupt:
            return


def _rotated(path: Path) -> list[Path]:
    """`daemon.log.1` (newest) … `daemon.log.N` (oldest), oldest first."""
    numbered = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    return sorted(numbered, key=lambda p: int(p.suffix[1:]), reverse=True)


def _keep(line: str, cutoff: datetime | None, previous: bool) -> bool:
    """Whether a line is inside --since, by its timestamp; a line without one (a traceback's) goes with the line
    before it."""
    if cutoff is None:
        return True
    at = _line_time(line)
    return previous if at is None else at >= cutoff


def _line_time(line: str) -> datetime | None:
    """A line's time: `2026-11-21 09:00:00 +0100` (DAEMON_LOG_FORMAT); a line of an older daemon names its zone
    instead (`… CET`), read as UTC when it says so and else as the reader's own zone, as it was before."""
    with contextlib.suppress(ValueError):
        return datetime.strptime(line[:25], DAEMON_LOG_FORMAT)
    try:
        at = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if line[20:24] in ("UTC ", "GMT ") else at.astimezone()


def _tail(path: Path) -> Iterator[str]:
    """What is appended to `path` from now on; a file replaced (rotated) or truncated is read anew."""
    f = _open_at_end(path)
    try:
        while True:
            chunk = f.read() if f else ""
            if chunk:
                yield chunk
                continue
            time.sleep(POLL_S)
            if _replaced(f, path):
                if f:
                    yield from _rest(f)
                    f.close()
                f = _open_at(path, 0)
    finally:
        if f:
            f.close()


def _rest(f: Iterable[str]) -> Iterator[str]:
    yield from f


def _open_at_end(path: Path) -> TextIO | None:
    f = _open_at(path, 0)
    if f:
        f.seek(0, os.SEEK_END)
    return f


def _open_at(path: Path, offset: int) -> TextIO | None:
    try:
        f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - the tail loop closes it
    except FileNotFoundError:
        return None
    f.seek(offset)
    return f


def _replaced(f: TextIO | None, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if f is None:
        return True
    mine = os.fstat(f.fileno())
    return (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev) or st.st_size < f.tell()
