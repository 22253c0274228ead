"""The database handle when the file or the disk fails: damaged files refused at open, a backup before a
migration, and a write failure reported once per change instead of once per attempt."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from fleetd.store import db as store_db
from fleetd.store import schema
from fleetd.store.db import Database, StoreError, StoreUnavailable, backup_path, store_problem
from tests.harness import wait_until

T = "2026-11-21T00:00:00.000+00:00"


def _old_database(path: Path, version: int) -> None:
    async def migrate_to() -> None:
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            await store_db.migrate(conn, upto=version)

    asyncio.run(migrate_to())
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend) "
            "VALUES ('kept', 'manual', 'succeeded', ?, ?, 'command')",
            (T, T),
        )


def _open(path: Path) -> None:
    async def go() -> None:
        db = await Database.open(path)
        await db.close()

    asyncio.run(go())


def test_a_migration_of_an_existing_database_first_backs_it_up(tmp_path: Path) -> None:
    path = tmp_path / "fleetd.db"
    _old_database(path, 1)
    _open(path)
    backup = backup_path(path, 1)
    assert backup.name == "fleetd.db.bak-v1"
    assert backup.stat().st_mode & 0o077 == 0
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT loop FROM runs").fetchall() == [("kept",)]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
    assert not list(tmp_path.glob("*.partial"))


def test_a_fresh_or_current_database_gets_no_backup(tmp_path: Path) -> None:
    path = tmp_path / "fleetd.db"
    _open(path)
    _open(path)
    assert not list(tmp_path.glob("*.bak-*"))
    assert path.stat().st_mode & 0o077 == 0  # created private


def test_a_failing_migration_is_one_line_naming_the_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleetd.db"
    _old_database(path, len(schema.MIGRATIONS))
    monkeypatch.setattr("fleetd.store.db.MIGRATIONS", [*schema.MIGRATIONS, "CREATE TABLE loops (again);"])
    with pytest.raises(StoreError) as info:
        _open(path)
    message = str(info.value)
    assert f"from schema v{len(schema.MIGRATIONS)}" in message and "left at" in message
    assert str(backup_path(path, len(schema.MIGRATIONS))) in message and "\n" not in message


def _write_many(path: Path, times: int) -> list[BaseException]:
    """`times` failing writes on a writer that cannot grow the file, then one that fits."""

    async def go() -> list[BaseException]:
        db = await Database.open(path)
        await db._writer.execute("PRAGMA max_page_count=1")  # clamped to the current size: the disk is "full"
        errors: list[BaseException] = []
        for _ in range(times):
            try:
                async with db.transaction() as conn:
                    await conn.execute("INSERT INTO loops_blob VALUES (randomblob(20000))")
            except Exception as e:
                errors.append(e)
        assert db.problem == "disk full"
        async with db.transaction() as conn:  # an update in place needs no new page
            await conn.execute("PRAGMA user_version = user_version")
        assert db.problem is None
        await db.close()
        return errors

    return asyncio.run(go())


def test_a_full_disk_is_one_line_per_change_and_a_503(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "fleetd.db"
    _open(path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE loops_blob (b)")
    caplog.set_level(logging.INFO, logger="fleetd.store")
    errors = _write_many(path, 20)
    assert len(errors) == 20
    assert all(isinstance(e, StoreUnavailable) and isinstance(e, sqlite3.OperationalError) for e in errors)
    assert errors[0].status == 503 and str(errors[0]) == "the database cannot be written: disk full"  # type: ignore[attr-defined]
    lines = [r.getMessage() for r in caplog.records if r.name == "fleetd.store"]
    assert len(lines) == 2, lines
    assert "cannot be written: disk full" in lines[0] and "can be written again" in lines[1]


def test_a_read_only_database_is_refused_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleetd.db"
    _open(path)
    # Root ignores a 0444 file; query_only makes SQLite refuse writes the same way (SQLITE_READONLY).
    monkeypatch.setattr("fleetd.store.db.PRAGMAS", (*store_db.PRAGMAS, "PRAGMA query_only=1"))
    with pytest.raises(StoreError, match=r"fleetd.db is read-only \(attempt to write a readonly database\)"):
        _open(path)


@pytest.mark.parametrize(
    ("code", "name", "problem"),
    [
        (13, "SQLITE_FULL", "disk full"),
        (8, "SQLITE_READONLY", "read-only (x)"),
        (1032, "SQLITE_READONLY_DBMOVED", "read-only (x)"),
        (778, "SQLITE_IOERR_WRITE", "write failed: x"),
        (11, "SQLITE_CORRUPT", "damaged (x)"),
        (5, "SQLITE_BUSY", "locked by another program (x)"),
        (1, "SQLITE_ERROR", None),  # a wrong statement is a bug, not the store's state
    ],
)
def test_store_problem(code: int, name: str, problem: str | None) -> None:
    e = sqlite3.OperationalError("x")
    e.sqlite_errorcode, e.sqlite_errorname = code, name  # type: ignore[attr-defined]
    assert store_problem(e) == problem
    assert store_problem(sqlite3.IntegrityError("UNIQUE constraint failed")) is None


def test_a_damaged_file_is_refused_and_leaves_no_thread_behind(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "fleetd.db"
    _open(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("CREATE TABLE filler (b)")
        conn.executemany("INSERT INTO filler VALUES (randomblob(3000))", [()] * 40)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    before = threading.active_count()
    with pytest.raises(StoreError, match="is damaged"):
        _open(path)
    # An open connection's thread would keep a daemon from ever exiting (it held its lock, hung).
    wait_until(lambda: threading.active_count() == before, timeout=5, what="the connection threads to end")
