"""WAL checkpoints run beside the writer (store/db.py `_Checkpointer`): the commit that takes the WAL past
SQLite's 1,000-page mark, which checkpoints it while every write queued behind it (fires too) waits, finds the
copying done; and the WAL still starts over, bounded, under writes that never pause."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fleetd.store import db as db_module
from fleetd.store.db import Database

PAGE = 4096


async def _until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.02)


def test_what_was_committed_is_copied_before_any_commit_reaches_the_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "CHECKPOINT_EVERY", 0.05)
    path = tmp_path / "c.db"
    blob = 100 * PAGE  # a tenth of the mark: no commit checkpoints this

    async def go() -> int:
        db = await Database.open(path)
        try:
            await db.write(lambda conn: conn.execute("CREATE TABLE t (b BLOB)").close())
            await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (zeroblob(?))", (blob,)).close())
            await _until(lambda: path.stat().st_size >= blob, timeout=10)
            return path.stat().st_size
        finally:
            await db.close()

    assert asyncio.run(go()) >= blob


def test_the_wal_starts_over_under_writes_that_never_pause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "CHECKPOINT_EVERY", 0.001)  # passes all the time, beside every write
    path = tmp_path / "c.db"
    writes = 3000  # ~2 pages each: ~6,000 frames, 24 MB of WAL if it never started over

    async def go() -> int:
        db = await Database.open(path)
        try:
            await db.write(lambda conn: conn.execute("CREATE TABLE t (b BLOB)").close())
            for _ in range(writes):
                await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (zeroblob(?))", (PAGE,)).close())
            return Path(f"{path}-wal").stat().st_size
        finally:
            await db.close()

    assert asyncio.run(go()) < 2_000 * (PAGE + 24)  # the 1,000-page mark, with room for the frames of a pass
