"""A damaged, emptied, read-only or full database, an unsafe home, a socket that cannot be bound:
`fleetd daemon run` refuses with one clear line (no traceback, no hang), or the running daemon says
what is wrong in `daemon status`, without flooding its log or losing a record it acknowledged."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import FLEETD, Daemon, wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def used_home() -> Iterator[Path]:
    """A home a daemon has used: loops, a run with its log, and enough runs for a multi-page database."""
    root = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    d = Daemon(root / "home", "--kill-grace", "0.5s").start()
    for name in ("alpha", "beta"):
        d.cli("loop", "add", name, "--every", "1h", "--command", f"echo {name}")
    d.cli("loop", "add", "tick", "--every", "1s", "--command", "true")
    d.wait_run(d.json("loop", "run", "alpha")["id"])
    assert d.stop() == 0
    with sqlite3.connect(d.home / "fleetd.db") as conn:
        conn.executemany(
            "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend) "
            "VALUES ('old', 'schedule', 'succeeded', ?, ?, 'command')",
            [("2026-01-01T00:00:00.000+00:00",) * 2] * 400,
        )
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    yield d.home
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def home(used_home: Path, short_home: Path) -> Path:
    copy = short_home / "home"
    shutil.copytree(used_home, copy, ignore=shutil.ignore_patterns("*.sock", "daemon-test.log"))
    return copy


def _run(home: Path, *argv: str, pragma: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETD_HOME": str(home)}
    env.pop("NOTIFY_SOCKET", None)
    command = [FLEETD]
    if pragma is not None:
        env["FLEETD_TEST_PRAGMA"] = pragma
        command = [sys.executable, str(FIXTURES / "pragma_fleetd.py")]
    # The timeout is the "no hang" check: a refused start ends in well under a second.
    return subprocess.run([*command, *argv], env=env, capture_output=True, text=True, timeout=30)


def _refused(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fleetd: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def _truncate_half(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def _garbage_page_in_the_middle(db: Path) -> None:
    pages = db.stat().st_size // 4096
    with open(db, "r+b") as f:
        f.seek(pages // 2 * 4096)
        f.write(bytes((i * 131 + 7) % 256 for i in range(4096)))


def _garbage_header(db: Path) -> None:
    with open(db, "r+b") as f:
        f.write(b"this is not a database" * 4)


@pytest.mark.parametrize("damage", [_truncate_half, _garbage_page_in_the_middle, _garbage_header])
def test_a_damaged_database_refuses_to_start_with_one_line(home: Path, damage: object) -> None:
    db = home / "fleetd.db"
    damage(db)  # type: ignore[operator]
    before = db.read_bytes()
    _refused(_run(home, "daemon", "run"), f"the database {db} is damaged", "move it aside")
    assert db.read_bytes() == before  # left for the user to recover from
    assert _run(home, "daemon", "status").returncode == 1  # nothing half-started answers


def test_daemon_start_says_why_its_daemon_did_not_start_in_one_line(home: Path) -> None:
    _garbage_header(home / "fleetd.db")
    line = _refused(_run(home, "daemon", "start"), "fleetd daemon exited with status 1: the database")
    assert line.count("fleetd: ") == 1  # the daemon's own "fleetd: " prefix was repeated inside the line


def test_an_emptied_database_of_a_used_home_refuses_to_start(home: Path) -> None:
    db = home / "fleetd.db"
    os.truncate(db, 0)
    _refused(_run(home, "daemon", "run"), f"the database {db} is an empty file", "run logs in")
    assert db.stat().st_size == 0  # not overwritten with a fresh schema: run ids would restart at 1


def test_an_empty_database_file_in_a_new_home_starts_with_a_warning(short_home: Path) -> None:
    home = short_home / "fresh"
    home.mkdir(mode=0o700)
    (home / "fleetd.db").touch()
    d = Daemon(home).start()
    try:
        assert "is an empty file: starting with an empty database" in d.log_text()
        assert d.json("loop", "list") == []
    finally:
        assert d.stop() == 0


def test_a_read_only_database_refuses_to_start(home: Path) -> None:
    # Tests run as root, which writes a 0444 file anyway: query_only makes SQLite refuse the same way.
    _refused(_run(home, "daemon", "run", pragma="PRAGMA query_only=1"), "is read-only")


def test_a_socket_that_cannot_be_bound_is_one_line_and_no_hang(home: Path) -> None:
    # The database is open by then: before, its connection thread kept the process (and its lock) alive.
    (home / "run" / "fleetd.sock" / "in-the-way").mkdir(parents=True)
    _refused(_run(home, "daemon", "run"), "cannot listen on the socket")


@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_a_home_others_can_write_is_refused_and_left_alone(short_home: Path, mode: int) -> None:
    shared = short_home / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    _refused(_run(shared, "daemon", "run"), f"refusing to use {shared} as the fleetd home")
    assert stat.S_IMODE(shared.stat().st_mode) == mode
    assert list(shared.iterdir()) == []
    _refused(_run(shared, "daemon", "start"), f"refusing to use {shared}")


# -- a database that fills up while the daemon runs ------------------------------------------------


def _last_leaf_free(db: Path, table: str) -> int:
    """Unallocated bytes in the table's rightmost leaf page, where SQLite appends the next row."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    data = db.read_bytes()
    page = root
    while True:
        start = (page - 1) * page_size
        header = start + (100 if page == 1 else 0)
        kind = data[header]
        if kind == 5:  # interior table page: follow the right-most child
            page = int.from_bytes(data[header + 8 : header + 12], "big")
            continue
        assert kind == 13, kind
        cells = int.from_bytes(data[header + 3 : header + 5], "big")
        content = int.from_bytes(data[header + 5 : header + 7], "big") or 65536
        return content - (header - start + 8 + 2 * cells)


def _fill_runs_table(db: Path) -> None:
    """Leave no room for one more run row without a new page (and no free page to reuse)."""

    def add(size: int) -> None:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend, error) "
                "VALUES ('filler', 'manual', 'succeeded', ?, ?, 'command', ?)",
                ("2026-01-01T00:00:00.000+00:00", "2026-01-01T00:00:00.000+00:00", "x" * size),
            )

    free = _last_leaf_free(db, "runs")
    add(100)
    overhead = free - _last_leaf_free(db, "runs") - 100 + 2  # + 2: a longer text's bigger serial type
    for _ in range(20):
        free = _last_leaf_free(db, "runs")
        if free < 40:
            break
        add(max(1, free - overhead - 20))
    assert _last_leaf_free(db, "runs") < 40
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)


class FullDaemon(Daemon):
    """The daemon through pragma_fleetd.py: max_page_count fixes the file at its current size."""

    def start(self) -> FullDaemon:
        log = open(self.home / "daemon-test.log", "ab")  # noqa: SIM115 - handed to the child
        self.env["FLEETD_TEST_PRAGMA"] = "PRAGMA max_page_count=1"  # clamped up to the current size
        self.proc = subprocess.Popen(
            [sys.executable, str(FIXTURES / "pragma_fleetd.py"), "daemon", "run", *self.args],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        # `daemon status` exits 1 as soon as the store is full: that it answers is enough here.
        wait_until(lambda: "running: pid" in self.cli("daemon", "status", check=False).stdout, timeout=20)
        return self


def test_a_full_database_is_reported_once_and_loses_nothing_acknowledged(home: Path) -> None:
    db = home / "fleetd.db"
    _fill_runs_table(db)
    with sqlite3.connect(db) as conn:
        runs_before = conn.execute("SELECT id, status FROM runs ORDER BY id").fetchall()

    d = FullDaemon(home, "--kill-grace", "0.5s", "--stop-grace", "2s").start()
    try:
        # `tick` (every 1s, overdue) cannot record its fire; the scheduler retries it every second.
        status = wait_until(
            lambda: (r := d.cli("daemon", "status", check=False)).returncode == 1 and "disk full" in r.stdout and r,
            timeout=15,
            what="status to report the full disk",
        )
        assert "store unusable: disk full" in status.stdout
        assert json.loads(d.cli("daemon", "status", "--json", check=False).stdout)["store"] == "disk full"

        big = d.cli("loop", "add", "big", "--every", "1h", "--command", "echo " + "y" * 20000, check=False)
        assert big.returncode == 1
        assert big.stderr.strip() == "fleetd: the database cannot be written: disk full"
        assert "big" not in {lp["name"] for lp in d.json("loop", "list")}

        # At least three more retries of the failing fire: the log says it once, without a traceback.
        since = time.monotonic()
        wait_until(lambda: time.monotonic() - since > 3.5, timeout=10, what="three retry periods")
        log = d.log_text()
        assert "Traceback" not in log
        assert log.count("cannot be written") == 1, log
        assert len(log.splitlines()) < 15, log

        d.cli("loop", "pause", "tick")  # an in-place update fits, and stops the failing fires
        assert d.cli("daemon", "status").stdout.splitlines()[-1] == "store ok"
        assert "can be written again" in d.log_text()
    finally:
        assert d.stop(timeout=30) == 0  # no hang on the way out either

    d = Daemon(home, "--kill-grace", "0.5s").start()
    try:
        names = {lp["name"] for lp in d.json("loop", "list")}
        assert names == {"alpha", "beta", "tick"}
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("SELECT id, status FROM runs ORDER BY id").fetchall()[: len(runs_before)] == runs_before
    finally:
        d.stop()
