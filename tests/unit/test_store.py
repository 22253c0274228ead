from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetd.store import schema
from fleetd.store.db import Database, migrate
from fleetd.store.runs import RunStore


def test_fresh_database_is_migrated_to_the_latest_version_in_wal(tmp_path: Path) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "f.db")
        await db.close()

    asyncio.run(go())
    with sqlite3.connect(tmp_path / "f.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = [*schema.MIGRATIONS, "CREATE TABLE extra (x); CREATE TABLE loops (nope);"]
    monkeypatch.setattr("fleetd.store.db.MIGRATIONS", broken)

    async def go() -> None:
        import aiosqlite

        conn = await aiosqlite.connect(tmp_path / "m.db", isolation_level=None)
        with pytest.raises(sqlite3.OperationalError):
            await migrate(conn)
        await conn.close()

    asyncio.run(go())
    with sqlite3.connect(tmp_path / "m.db") as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert version == len(schema.MIGRATIONS)  # every good step applied...
    assert "extra" not in tables  # ...and nothing of the failing one


def test_finish_only_touches_running_runs(tmp_path: Path) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "r.db")
        runs = RunStore(db)
        now = datetime(2026, 11, 21, tzinfo=UTC)
        run = await runs.insert(
            loop="l", trigger="manual", status="running", scheduled_at=now, started_at=now, backend="command"
        )
        await runs.finish(run.id, status="succeeded", finished_at=now, exit_code=0)
        await runs.finish(run.id, status="interrupted", finished_at=now)  # a late second writer loses
        assert (await runs.get(run.id)).status == "succeeded"
        await db.close()

    asyncio.run(go())


T = "2026-11-21T00:00:00.000+00:00"


def test_migrating_v2_data_to_v3_keeps_runs_and_attempts(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for number, script in enumerate(schema.MIGRATIONS[:2], start=1):
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        conn.execute(
            "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend, attempts) "
            "VALUES ('l', 'manual', 'succeeded', ?, ?, 'claude_code', 1)",
            (T, T),
        )
        conn.execute(
            "INSERT INTO attempts (run_id, number, backend, profile, started_at, input_tokens) "
            "VALUES (1, 1, 'claude_code', 'p', ?, 42)",
            (T,),
        )

    async def go() -> None:
        db = await Database.open(path)
        run = await RunStore(db).get(1)
        assert (run.status, run.wait_until, run.attempts) == ("succeeded", None, 1)
        await db.close()

    asyncio.run(go())
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT input_tokens FROM attempts WHERE run_id = 1").fetchone() == (42,)
        conn.execute("UPDATE runs SET status = 'waiting' WHERE id = 1")  # the new status is allowed
