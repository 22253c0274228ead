"""A loop never overlaps itself, even when two fires arrive together and the first check awaits."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.runs import RunStore
from fleetd.timefmt import local_text, now_utc
from tests.loops.executors import added_loop, command_executor


def test_two_fires_of_a_budgeted_loop_at_once_start_one_run(tmp_path: Path) -> None:
    async def go() -> list[Any]:
        db = await Database.open(tmp_path / "f.db")
        try:
            now = now_utc()
            loop = await added_loop(db, "budgeted", now, command="sleep 0.3", daily_cost=5.0)
            ex = command_executor(db, tmp_path, "fire")
            runs = await asyncio.gather(ex.fire(loop, "schedule", datetime.now(UTC)), ex.fire(loop, "manual", now))
            assert await ex.wait_idle(10)
            return sorted((r.status, r.error or "") for r in runs if r is not None)
        finally:
            await db.close()

    statuses = asyncio.run(go())
    assert [s for s, _ in statuses] == ["running", "skipped"]
    assert "still running" in statuses[1][1]


def test_a_fire_waits_while_the_daemon_recovers_from_a_crash(tmp_path: Path) -> None:
    """Recovery kills the leftovers of dead runs by cgroup and removes their temp dirs: a `loop run` that came
    in meanwhile would lose its processes. It waits for recovery instead (bounded by one kill grace)."""

    async def go() -> tuple[bool, str]:
        db = await Database.open(tmp_path / "r.db")
        try:
            now = now_utc()
            loop = await added_loop(db, "manual", now, command="true")
            ex = command_executor(db, tmp_path, "rec")
            ex.ready.clear()  # the daemon is recovering
            fire = asyncio.create_task(ex.fire(loop, "manual", now))
            await asyncio.sleep(0.2)
            waited = not fire.done() and await RunStore(db).list() == []
            ex.ready.set()
            run = await asyncio.wait_for(fire, 5)
            assert await ex.wait_idle(10)
            return waited, (await RunStore(db).get(run.id)).status if run else "none"
        finally:
            await db.close()

    assert asyncio.run(go()) == (True, "succeeded")


def test_fires_while_a_run_waits_for_a_reset_are_one_skipped_row_with_a_count(tmp_path: Path) -> None:
    """An `--every 1m` loop whose run waits an hour for a usage reset: one row that counts, not 60 rows."""
    from datetime import timedelta

    from fleetd.loops.executor import ActiveRun

    async def go() -> list[tuple[int, str, str | None, int, str | None]]:
        db = await Database.open(tmp_path / "w.db")
        try:
            now = now_utc()
            loop = await added_loop(db, "patient", now, every="1m", command="true")
            ex = command_executor(db, tmp_path, "wait")
            until = datetime(2030, 1, 1, 10, 0, tzinfo=UTC)
            ex.active[loop.instance] = blocker = ActiveRun(run_id=12, waiting=True, wait_until=until)
            for _ in range(3):
                await ex.fire(loop, "schedule", now)
            blocker.waiting, blocker.wait_until = False, None  # the reset came: it runs again
            await ex.fire(loop, "manual", now + timedelta(minutes=1))
            return [(r.id, r.status, r.skip_reason, r.skipped_count, r.error) for r in await RunStore(db).list()]
        finally:
            await db.close()

    overlap, waited = asyncio.run(go())
    until = local_text(datetime(2030, 1, 1, 10, tzinfo=UTC))
    told = f"previous run 12 waits for headroom until {until} (3 fires skipped)"
    assert waited[1:] == ("skipped", "waiting", 3, told)
    assert overlap[1:] == ("skipped", "overlap", 1, "previous run 12 still running")


def test_a_fire_cancelled_mid_write_leaves_the_store_writable_and_no_run_behind(tmp_path: Path) -> None:
    """A stop cancels the scheduler's timers, some in the middle of recording a fire. The cancelled
    write used to leave its statement running on the writer's thread after the lock was released
    (a BEGIN no one would COMMIT): every later write failed, run ends included, and runs were left
    `running`. Cancelled at each point of its way, a fire now either records nothing or records a
    run that starts and ends; the store keeps working."""

    async def go() -> list[tuple[int, str, list[str]]]:
        db = await Database.open(tmp_path / "c.db")
        try:
            now = now_utc()
            loop = await added_loop(db, "cancelled", now, command="true")
            ex = command_executor(db, tmp_path, "cancel")
            wrong = []
            for steps in range(30):  # every point of the fire's way, from before BEGIN to after COMMIT
                fire = asyncio.create_task(ex.fire(loop, "schedule", now_utc()))
                for _ in range(steps):
                    await asyncio.sleep(0)
                fire.cancel()
                await asyncio.gather(fire, return_exceptions=True)
                idle = await ex.wait_idle(5)
                try:
                    await RunStore(db).insert(loop="cancelled", trigger="manual", status="skipped", scheduled_at=now,
                                              started_at=now, finished_at=now, backend="command")  # fmt: skip
                    write = "ok"
                except Exception as e:
                    write = str(e)
                left = [r.status for r in await RunStore(db).list(limit=1000) if r.status in ("running", "waiting")]
                if not idle or write != "ok" or left:
                    wrong.append((steps, write, left))
            return wrong
        finally:
            await db.close()

    assert asyncio.run(go()) == []


def test_started_at_is_when_the_child_was_started_not_when_the_fire_was_recorded(tmp_path: Path) -> None:
    """`started_at - scheduled_at` is the fire's lag: stamped at the fire, before the row and the child
    existed, it hid the time spent until the spawn. A clock that moves a second per reading tells them apart."""
    ticks = itertools.count()
    base = datetime(2026, 1, 1, tzinfo=UTC)

    def clock() -> datetime:
        return base + timedelta(seconds=next(ticks))

    async def go() -> tuple[Any, Any]:
        db = await Database.open(tmp_path / "s.db")
        try:
            loop = await added_loop(db, "lag", base, command="true")
            ex = command_executor(db, tmp_path, "lag", clock)
            fired = await ex.fire(loop, "manual", base)
            assert fired is not None and await ex.wait_idle(10)
            return fired, (await RunStore(db).get(fired.id), await AttemptStore(db).for_run(fired.id))
        finally:
            await db.close()

    fired, (run, attempts) = asyncio.run(go())
    assert run.status == "succeeded"
    assert run.started_at > fired.started_at  # later than the fire's own reading of the clock
    assert run.started_at == attempts[0].started_at  # the moment the attempt's child was started
    assert run.pid is not None
    # Its attempt's end went with the run's (one transaction): recorded all the same.
    assert (attempts[0].outcome, attempts[0].exit_code) == ("succeeded", 0)
    assert attempts[0].finished_at is not None and attempts[0].finished_at <= run.finished_at


def test_a_command_run_costs_three_write_transactions(tmp_path: Path) -> None:
    """Its row at the fire, its attempt once the child exists, and its end with the attempt's end: the
    attempt's end is no transaction of its own (issue 12: fewer writes per run)."""

    async def go() -> tuple[int, str]:
        db = await Database.open(tmp_path / "w.db")
        try:
            now = now_utc()
            loop = await added_loop(db, "writes", now, command="true")
            ex = command_executor(db, tmp_path, "wr")
            writes = 0
            write = db.write

            async def counted(fn: Any) -> Any:
                nonlocal writes
                writes += 1
                return await write(fn)

            db.write = counted  # type: ignore[method-assign]
            run = await ex.fire(loop, "manual", now)
            assert run is not None and await ex.wait_idle(10)
            db.write = write  # type: ignore[method-assign]
            return writes, (await RunStore(db).get(run.id)).status
        finally:
            await db.close()

    assert asyncio.run(go()) == (3, "succeeded")


def test_a_run_that_ends_before_any_attempt_counts_none(tmp_path: Path) -> None:
    """An agent loop whose prompt file cannot be read fails before it starts an attempt: `attempts` says 0."""

    async def go() -> tuple[str, str, int, int]:
        db = await Database.open(tmp_path / "p.db")
        try:
            now = now_utc()
            loop = await added_loop(
                db, "promptless", now, backend="claude_code", prompt_file=str(tmp_path / "missing.md")
            )
            ex = command_executor(db, tmp_path, "np")
            run = await ex.fire(loop, "manual", now)
            assert run is not None and await ex.wait_idle(10)
            (ended,) = await RunStore(db).list(loop="promptless", status=None, since=None, limit=5)
            (n,) = await db.fetchone("SELECT count(*) FROM attempts")  # type: ignore[misc]
            return ended.status, ended.error or "", ended.attempts, n
        finally:
            await db.close()

    status, error, attempts, rows = asyncio.run(go())
    assert (status, attempts, rows) == ("failed", 0, 0), error
    assert "prompt" in error


def test_a_late_fire_tells_the_slots_that_passed_only_when_it_runs(tmp_path: Path) -> None:
    """The timer woke late and slots passed meanwhile (`plan_wake`'s `missed`): a fire that starts its run stands
    for them (`loop.fire_missed`, caught up by that run); one that finds the loop busy skips them with it (its
    skipped row counts them, and is told as a skip)."""
    import json
    import sqlite3

    from fleetd.loops.executor import ActiveRun
    from fleetd.store.events import EventLog

    async def go() -> tuple[Any, Any, Any]:
        db = await Database.open(tmp_path / "l.db")
        try:
            now = now_utc()
            busy = await added_loop(db, "busy", now, every="10s", command="true")
            free = await added_loop(db, "free", now, every="10s", command="true")
            ex = command_executor(db, tmp_path, "late", events=EventLog(db))
            ex.active[busy.instance] = ActiveRun(run_id=12)
            skipped = await ex.fire(busy, "schedule", now, missed=3, missed_reason="woke_late")
            grown = await ex.fire(busy, "schedule", now + timedelta(seconds=40), missed=2, missed_reason="woke_late")
            ran = await ex.fire(free, "schedule", now, missed=3, missed_reason="woke_late")
            del ex.active[busy.instance]
            assert await ex.wait_idle(10)
            return skipped, grown, ran
        finally:
            await db.close()

    skipped, grown, ran = asyncio.run(go())
    assert (skipped.status, skipped.skip_reason, skipped.skipped_count) == ("skipped", "overlap", 3)
    assert skipped.error == "previous run 12 still running (3 fires skipped)"
    assert (grown.id, grown.skipped_count) == (skipped.id, 5)  # the same row: 3 and then 2 more
    assert grown.error == "previous run 12 still running (5 fires skipped)"
    with sqlite3.connect(tmp_path / "l.db") as conn:
        events = {
            (t, json.loads(d)["loop"]): json.loads(d) for t, d in conn.execute("SELECT type, data_json FROM events")
        }
    assert ("loop.fire_missed", "busy") not in events and ("loop.fire_skipped", "busy") in events
    told = events[("loop.fire_missed", "free")]
    assert (told["run_id"], told["missed"], told["reason"], told["caught_up"]) == (ran.id, 3, "woke_late", True)
