"""Issue 9, defect 3: a run whose end cannot be written must not hold its loop's slot. The slot is
released first, the write is retried until it lands, and shutdown gives it one last try."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fleetd.loops import executor as executor_module
from fleetd.loops.executor import Executor
from fleetd.records.loop import Loop, Schedule
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc


class FullDiskRuns(RunStore):
    """`finish` fails like a full disk until `heal()`."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.broken = True
        self.refused = 0

    async def finish(self, run_id: int, **kwargs: Any) -> None:
        if self.broken:
            self.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        await super().finish(run_id, **kwargs)


class NoProfiles:
    async def plan(self, loop: Loop) -> Any:
        raise AssertionError("the command backend needs no profile")

    async def known_secrets(self) -> list[str]:
        return []


@asynccontextmanager
async def _executor(tmp_path: Path) -> AsyncIterator[tuple[Executor, FullDiskRuns, Loop]]:
    db = await Database.open(tmp_path / "f.db")
    runs = FullDiskRuns(db)
    now = now_utc()
    loop = Loop(name="tick", schedule=Schedule("every", "1h", "UTC"), backend="command", command="true",
                created_at=now, updated_at=now)  # fmt: skip
    await LoopStore(db).insert(loop)
    ex = Executor(runs, AttemptStore(db), NoProfiles(), log_path=lambda i: tmp_path / f"{i}.log",  # type: ignore[arg-type]
                  tmp_root=tmp_path / "tmp", tag_prefix="t", clock=now_utc, local_tz=ZoneInfo("UTC"),
                  kill_grace=0.5)  # fmt: skip
    try:
        yield ex, runs, loop
    finally:
        await db.close()


async def _finished(ex: Executor, run_id: int) -> None:
    for slot in list(ex.inflight):
        if slot.run_id == run_id:
            await asyncio.wait_for(slot.done.wait(), 10)


def test_an_unwritable_run_end_releases_the_slot_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor_module, "FINISH_RETRY_FIRST", 0.01)

    async def go() -> None:
        async with _executor(tmp_path) as (ex, runs, loop):
            first = await ex.fire(loop, "manual", datetime.now(UTC))
            assert first is not None
            await _finished(ex, first.id)
            assert runs.refused >= 1
            assert ex.running(loop) is None  # the loop is free again...
            second = await ex.fire(loop, "manual", datetime.now(UTC))
            assert second is not None and second.status == "running"  # ...so this is not `skipped`
            await _finished(ex, second.id)
            assert set(ex.unrecorded) == {first.id, second.id}
            runs.broken = False
            for _ in range(500):  # the background retry writes both once the store heals
                if not ex.unrecorded:
                    break
                await asyncio.sleep(0.01)
            assert [(await runs.get(r.id)).status for r in (first, second)] == ["succeeded", "succeeded"]

    asyncio.run(go())


def test_shutdown_gives_unwritten_run_ends_one_last_try(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "FINISH_RETRY_FIRST", 3600)  # the background retry never comes

    async def go() -> None:
        async with _executor(tmp_path) as (ex, runs, loop):
            run = await ex.fire(loop, "manual", datetime.now(UTC))
            assert run is not None
            await _finished(ex, run.id)
            assert await ex.wait_idle(1)
            runs.broken = False
            assert await ex.flush_unrecorded() == 0
            assert (await runs.get(run.id)).status == "succeeded"

    asyncio.run(go())
