"""The live scheduler over a real store, with the clock passed in: what pause and resume do to the fire grid."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.loops.scheduler import Scheduler
from fleetd.records.loop import Loop, Schedule
from fleetd.store.db import Database
from fleetd.store.loops import LoopStore

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
H, M = timedelta(hours=1), timedelta(minutes=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class NoExecutor:
    """No fire is due during these tests: any call is a failure."""

    async def fire(self, *args: object) -> None:
        raise AssertionError(f"unexpected fire {args}")


def test_resume_keeps_an_every_loop_on_the_grid_counted_from_its_creation(tmp_path: Path) -> None:
    async def go() -> list[datetime | None]:
        db = await Database.open(tmp_path / "s.db")
        clock = Clock(T0)
        scheduler = Scheduler(LoopStore(db), NoExecutor(), clock=clock, misfire_grace=timedelta(seconds=1))  # type: ignore[arg-type]
        try:
            loop = await scheduler.add(Loop("hourly", Schedule("every", "1h", "UTC"), "command", command="true"))
            seen = [loop.next_fire_at]
            for paused_at, resumed_at in ((T0 + 10 * M, T0 + 25 * M), (T0 + 90 * M, T0 + 2 * H + 20 * M)):
                clock.now = paused_at
                await scheduler.pause("hourly")
                clock.now = resumed_at
                seen.append((await scheduler.resume("hourly")).next_fire_at)
            return seen
        finally:
            scheduler.stop()
            await db.close()

    # Created at 09:00 → fires at 10:00, 11:00, …; resuming at 09:25 or 11:20 does not restart the count.
    assert asyncio.run(go()) == [T0 + H, T0 + H, T0 + 3 * H]
