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
        self.recorded = asyncio.Event()  # a fire's row is written

    async def fire(
        self, loop: Loop, trigger: str, scheduled_at: datetime, fired: object = None, **missed: object
    ) -> object:
        self.calls.append((trigger, fired))
        if len(self.calls) == 1:
            raise OSError("database or disk is full")
        run = await self.runs.insert(  # type: ignore[attr-defined]
            loop=loop.name, trigger=trigger, status="skipped", scheduled_at=scheduled_at, started_at=scheduled_at,
            finished_at=scheduled_at, backend="command", fired=fired,
        )  # fmt: skip
        self.recorded.set()
        return run


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
            # The timer retries at once (the fire is past due): waited for until its row is written, not
            # only until it was called, which left the insert one poll's time to commit.
            await asyncio.wait_for(executor.recorded.wait(), 10)
            return [t for t, _ in executor.calls], len(await runs.list())
        finally:
            scheduler.stop()
            await db.close()

    triggers, recorded = asyncio.run(go())
    assert triggers[:2] == ["catch-up", "catch-up"] and recorded == 1  # retried, recorded once


def test_an_edit_that_raced_a_pause_or_resume_saves_nothing(tmp_path: Path) -> None:
    """`loop edit` reads the loop, checks the edit, then saves: a pause or resume in between must not be
    undone by the edit's stale `enabled` (an enabled loop with no next fire never fires again)."""
    import dataclasses

    from fleetd.errors import Conflict
    from fleetd.timefmt import to_iso

    async def go() -> None:
        db = await Database.open(tmp_path / "r.db")
        clock = Clock(T0)  # a clock that stands still: the race is caught whatever the timestamps say
        loops = LoopStore(db)
        scheduler = Scheduler(loops, NoExecutor(), clock=clock, misfire_grace=timedelta(seconds=1))  # type: ignore[arg-type]
        try:
            await scheduler.add(Loop("raced", Schedule("every", "1h", "UTC"), "command", command="true"))
            old = await loops.get("raced")
            await scheduler.pause("raced")  # lands between the edit's read and its write
            try:
                await scheduler.edit(old, dataclasses.replace(old, timeout_s=60.0))
                raise AssertionError("the edit over a paused loop was saved")
            except Conflict as e:
                assert "changed meanwhile" in e.message
            now = await loops.get("raced")
            assert (now.enabled, now.next_fire_at, now.timeout_s) == (False, None, None)
            assert "raced" not in scheduler._timers

            old = await loops.get("raced")  # paused
            await scheduler.resume("raced")
            try:
                await scheduler.edit(old, dataclasses.replace(old, timeout_s=60.0))
                raise AssertionError("the edit over a resumed loop was saved")
            except Conflict:
                pass
            now = await loops.get("raced")
            assert (now.enabled, now.next_fire_at, now.timeout_s) == (True, T0 + H, None)

            # A fire recorded meanwhile (it moves the next fire time only) is no conflict: the edit keeps it.
            old = await loops.get("raced")
            async with db.transaction() as conn:
                await conn.execute("UPDATE loops SET last_fire_at = next_fire_at, next_fire_at = ?",
                                   (to_iso(T0 + 2 * H),))  # fmt: skip
            saved = await scheduler.edit(old, dataclasses.replace(old, timeout_s=60.0))
            assert (saved.enabled, saved.next_fire_at, saved.timeout_s) == (True, T0 + 2 * H, 60.0)
        finally:
            scheduler.stop()
            await db.close()

    asyncio.run(go())


class HeldFire:
    """The first fire holds (as a fire does while it checks the loop's daily cost) until `gate` opens; any
    later fire finds the first's slot taken and records a `skipped` overlap row, as the executor does."""

    def __init__(self, runs: object) -> None:
        self.runs = runs
        self.calls: list[datetime] = []
        self.entered, self.gate = asyncio.Event(), asyncio.Event()
        self.done = asyncio.Event()

    async def fire(self, loop: Loop, trigger: str, scheduled_at: datetime, fired: object = None, **_: object) -> object:
        self.calls.append(scheduled_at)
        first = len(self.calls) == 1
        if first:
            self.entered.set()
            await self.gate.wait()
        run = await self.runs.insert(  # type: ignore[attr-defined]
            loop=loop.name, trigger=trigger, status="running" if first else "skipped", scheduled_at=scheduled_at,
            started_at=scheduled_at, backend="command", fired=fired, skip_reason=None if first else "overlap",
        )  # fmt: skip
        if first:
            self.done.set()
        return run


def test_an_edit_during_a_fire_does_not_fire_the_same_due_time_again(tmp_path: Path) -> None:
    """An edit re-arms the loop's timer while the old timer's fire at T is still recording itself: the new
    timer must wait for it and take the due time after T, not fire T again (a bogus overlap skip that also
    makes the real fire at T record nothing)."""
    import dataclasses

    from fleetd.store.runs import RunStore

    async def go() -> None:
        db = await Database.open(tmp_path / "e.db")
        clock = Clock(T0)
        loops, runs = LoopStore(db), RunStore(db)
        executor = HeldFire(runs)
        scheduler = Scheduler(loops, executor, clock=clock, misfire_grace=timedelta(seconds=1))  # type: ignore[arg-type]
        try:
            await scheduler.add(Loop("held", Schedule("every", "1h", "UTC"), "command", command="true"))
            scheduler.stop()
            clock.now = T0 + H  # due now: the timer fires at once
            await scheduler.start()
            await asyncio.wait_for(executor.entered.wait(), 10)
            old = await loops.get("held")
            await scheduler.edit(old, dataclasses.replace(old, timeout_s=60.0))
            for _ in range(20):  # let the re-armed timer run up to its first wait
                await asyncio.sleep(0)
            executor.gate.set()
            await asyncio.wait_for(executor.done.wait(), 10)
            for _ in range(20):
                await asyncio.sleep(0)
            assert executor.calls == [T0 + H]
            assert [(r.status, r.scheduled_at) for r in await runs.list()] == [("running", T0 + H)]
            assert (await loops.get("held")).next_fire_at == T0 + 2 * H
        finally:
            scheduler.stop()
            await db.close()

    asyncio.run(go())


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


def test_a_paused_loops_why_not_says_since_the_pause_not_since_its_last_edit(tmp_path: Path) -> None:
    # `since` was the loop's updated_at: an edit while paused moved the start of the pause to the edit.
    from dataclasses import replace

    from fleetd.loops.whynot import LoopFacts, why_not

    async def go() -> list[datetime | None]:
        db = await Database.open(tmp_path / "s.db")
        clock = Clock(T0)
        loops = LoopStore(db)
        scheduler = Scheduler(loops, NoExecutor(), clock=clock, misfire_grace=timedelta(seconds=1))  # type: ignore[arg-type]

        async def since(name: str) -> datetime | None:
            why = why_not(LoopFacts(await loops.get(name), None), clock.now)
            return why.since if why is not None else None

        try:
            await scheduler.add(Loop("edited", Schedule("every", "1h", "UTC"), "command", command="true"))
            await scheduler.add(Loop("born", Schedule("every", "1h", "UTC"), "command", command="true", enabled=False))
            clock.now = T0 + 10 * M
            await scheduler.pause("edited")
            clock.now = T0 + 20 * M
            for name in ("edited", "born"):
                old = await loops.get(name)
                await scheduler.edit(old, replace(old, command="echo again"))
            clock.now = T0 + 25 * M
            await scheduler.pause("edited")  # again (a script's): the pause is still the first one
            seen = [await since("born"), await since("edited")]
            # Resumed and paused again by edits: the pause is the second one.
            resumed = await scheduler.edit(await loops.get("edited"), replace(await loops.get("edited"), enabled=True))
            clock.now = T0 + 30 * M
            await scheduler.edit(resumed, replace(resumed, enabled=False))
            return [*seen, await since("edited")]
        finally:
            scheduler.stop()
            await db.close()

    assert asyncio.run(go()) == [T0, T0 + 10 * M, T0 + 30 * M]


def test_migration_22_dates_a_loop_paused_before_it_from_its_last_change(tmp_path: Path) -> None:
    import aiosqlite

    from fleetd.store.db import migrate

    async def go() -> list[tuple[object, ...]]:
        async with aiosqlite.connect(tmp_path / "f.db", isolation_level=None) as conn:
            assert await migrate(conn, upto=21) == 21
            for name, enabled in (("on", 1), ("off", 0)):
                await conn.execute(
                    "INSERT INTO loops (name, schedule_kind, schedule_expr, timezone, backend, catch_up, output_cap, "
                    "enabled, created_at, updated_at) VALUES (?, 'every', '1h', 'UTC', 'command', 'once', 1, ?, "
                    "'2026-03-01T00:00:00.000+00:00', '2026-03-02T09:10:00.000+00:00')",
                    (name, enabled),
                )
            assert await migrate(conn, upto=22) == 22
            async with conn.execute("SELECT name, paused_at FROM loops ORDER BY name") as cur:
                return [tuple(r) for r in await cur.fetchall()]

    assert asyncio.run(go()) == [("off", "2026-03-02T09:10:00.000+00:00"), ("on", None)]
