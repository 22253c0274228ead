"""Issue 9, defect 1: a write must be visible to the request that made it, even while another query
holds the reader connection's snapshot; and a fire is recorded exactly once, however often the
scheduler retries it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.records.loop import Loop, Schedule
from fleetd.records.run import LoopFire
from fleetd.store.db import Database
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _loop(name: str = "tick") -> Loop:
    return Loop(
        name=name,
        schedule=Schedule("every", "1s", "UTC"),
        backend="command",
        command="true",
        created_at=T0,
        updated_at=T0,
        next_fire_at=T0,
    )


@asynccontextmanager
async def _store(tmp_path: Path) -> AsyncIterator[tuple[Database, LoopStore, RunStore]]:
    db = await Database.open(tmp_path / "f.db")
    try:
        yield db, LoopStore(db), RunStore(db)
    finally:
        await db.close()


async def _with_open_read(db: Database, body: Callable[[], Awaitable[None]]) -> None:
    """Run `body` while a query on the reader connection is half-way through its rows, the way
    aiosqlite interleaves two coroutines' statements on one connection: SQLite then serves every
    read on that connection from the older snapshot."""
    cursor = await db._reader.execute("SELECT id FROM runs")
    assert await cursor.fetchone() is not None
    try:
        await body()
    finally:
        await cursor.close()


def test_insert_returns_the_new_run_while_another_query_reads(tmp_path: Path) -> None:
    async def go() -> None:
        async with _store(tmp_path) as (db, loops, runs):
            await loops.insert(_loop())
            for _ in range(3):  # sqlite3 steps one row ahead: the open query needs rows left
                await runs.insert(loop="tick", trigger="manual", status="succeeded", scheduled_at=T0,
                                  started_at=T0, finished_at=T0, backend="command")  # fmt: skip
            got = []

            async def body() -> None:
                run = await runs.insert(loop="tick", trigger="manual", status="running", scheduled_at=T0,
                                        started_at=T0, backend="command")  # fmt: skip
                got.append(run)
                got.append(await loops.insert(_loop("added")))

            await _with_open_read(db, body)
            assert got[0].id == 4 and got[0].status == "running"
            assert got[1].name == "added" and got[1].next_fire_at == T0
            # Once the other query is done, the reader sees both.
            assert (await runs.get(4)).status == "running"
            assert (await loops.get("added")).name == "added"

    asyncio.run(go())


def test_a_fire_is_recorded_once_however_often_it_is_retried(tmp_path: Path) -> None:
    async def go() -> None:
        async with _store(tmp_path) as (_db, loops, runs):
            await loops.insert(_loop())
            fire = LoopFire("tick", last_fire_at=T0, next_fire_at=T0 + timedelta(seconds=1), due=T0)
            first = await runs.insert(loop="tick", trigger="schedule", status="running", scheduled_at=T0,
                                      started_at=T0, backend="command", fired=fire)  # fmt: skip
            again = await runs.insert(loop="tick", trigger="schedule", status="running", scheduled_at=T0,
                                      started_at=T0, backend="command", fired=fire)  # fmt: skip
            assert first is not None and again is None
            assert [r.scheduled_at for r in await runs.list()] == [T0]
            assert (await loops.get("tick")).next_fire_at == T0 + timedelta(seconds=1)

    asyncio.run(go())
