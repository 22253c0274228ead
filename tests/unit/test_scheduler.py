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


class FailsOnce:
    """A store error on the first fire (the catch-up at start), then fires are recorded normally."""

    def __init__(self, runs: object) -> None:
        self.calls: list[tuple[str, object]] = []
        self.runs = runs

    async def fire(
        self, loop: Loop, trigger: str, scheduled_at: datetime, fired: object = None, **missed: object
    ) -> object:
        self.calls.append((trigger, fired))
        if len(self.calls) == 1:
            raise OSError("database or disk is full")
        return await self.runs.insert(  # type: ignore[attr-defined]
            loop=loop.name, trigger=trigger, status="skipped", scheduled_at=scheduled_at, started_at=scheduled_at,
            finished_at=scheduled_at, backend="command", fired=fired,
        )  # fmt: skip


def test_a_catch_up_that_cannot_be_recorded_at_start_is_retried_by_the_loops_timer(tmp_path: Path) -> None:
    from fleetd.store.runs import RunStore

    async def go() -> tuple[list[str], int]:
        db = await Database.open(tmp_path / "c.db")
        clock = Clock(T0)
        runs = RunStore(db)
        executor = FailsOnce(runs)
        scheduler = Scheduler(LoopStore(db), executor, clock=clock, misfire_grace=timedelta(seconds=1))  # type: ignore[arg-type]
        try:
            await scheduler.add(Loop("hourly", Schedule("every", "1h", "UTC"), "command", command="true"))
            scheduler.stop()
            clock.now = T0 + 2 * H + 30 * M  # the daemon was down across two fire times
            await scheduler.start()
            for _ in range(200):  # the timer's retry comes a second later
                if len(executor.calls) >= 2:
                    break
                await asyncio.sleep(0.02)
            return [t for t, _ in executor.calls], len(await runs.list())
        finally:
            scheduler.stop()
            await db.close()

    triggers, recorded = asyncio.run(go())
    assert triggers[:2] == ["catch-up", "catch-up"] and recorded == 1  # retried, recorded once


class HeldFires:
    """Each fire's write runs to its end as the executor's does (`finish_first`); the first is held."""

    def __init__(self) -> None:
        self.fired: list[str] = []
        self.first_started = asyncio.Event()
        self.release = asyncio.Event()

    async def fire(self, loop: Loop, *args: object, **kwargs: object) -> None:
        from fleetd.store.db import finish_first

        async def write() -> None:
            if not self.fired:
                self.first_started.set()
                await self.release.wait()
            self.fired.append(loop.name)

        await finish_first(write())


def test_a_cancelled_start_fires_no_more_catch_ups(tmp_path: Path) -> None:
    """A stop cancels the start's catch-up fires: the fire in flight is written whole, the others are not
    started (each fire's `finish_first` used to take the cancellation for its own and re-raise it at the
    next fire's write, so a stop waited for every loop's catch-up while the timers already fired)."""

    async def go() -> tuple[list[str], bool]:
        db = await Database.open(tmp_path / "s.db")
        clock = Clock(T0)
        executor = HeldFires()
        scheduler = Scheduler(LoopStore(db), executor, clock=clock, misfire_grace=timedelta(seconds=1))  # type: ignore[arg-type]
        try:
            for i in range(5):
                await scheduler.add(Loop(f"l{i}", Schedule("every", "1h", "UTC"), "command", command="true"))
            scheduler.stop()
            clock.now = T0 + 2 * H + 30 * M  # every loop missed fires while the daemon was down
            starting = asyncio.create_task(scheduler.start())
            await asyncio.wait_for(executor.first_started.wait(), 10)
            starting.cancel()
            await asyncio.sleep(0)
            executor.release.set()
            await asyncio.wait({starting}, timeout=10)
            return executor.fired, starting.cancelled()
        finally:
            scheduler.stop()
            await db.close()

    fired, cancelled = asyncio.run(go())
    assert fired == ["l0"] and cancelled
