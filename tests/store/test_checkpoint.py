"""WAL checkpoints run beside the writer, never inside a commit: a commit that passes SQLite's 1,000-page mark
used to copy the WAL into the file and fsync it while every write queued behind it (fires too) waited."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fleetd.store import db as db_module
from fleetd.store.db import Database

BLOB = 5_000_000  # bytes: over 1,000 pages of 4 KiB, SQLite's default autocheckpoint mark


async def _write_blob(db: Database) -> None:
    await db.write(lambda conn: conn.execute("CREATE TABLE t (b BLOB)").close())
    await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (zeroblob(?))", (BLOB,)).close())


def test_a_commit_leaves_the_wal_to_the_checkpointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "CHECKPOINT_EVERY", 3600.0)  # the checkpointer does not come round here
    path = tmp_path / "c.db"

    async def go() -> int:
        db = await Database.open(path)
        try:
            await _write_blob(db)
            return path.stat().st_size  # what the commits copied into the file
        finally:
            await db.close()

    assert asyncio.run(go()) < BLOB // 10


def test_the_checkpointer_copies_what_was_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "CHECKPOINT_EVERY", 0.05)
    path = tmp_path / "c.db"

    async def go() -> int:
        db = await Database.open(path)
        try:
            await _write_blob(db)
            deadline = time.monotonic() + 10
            while path.stat().st_size < BLOB and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return path.stat().st_size
        finally:
            await db.close()

    assert asyncio.run(go()) >= BLOB
