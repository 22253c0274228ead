"""Run lifecycle and fire events: written by the run store in the run's own transactions, their JSON a
contract (hooks deliver it; the README's "Events" section documents it), and never a reason to lose a run."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetd.records.run import LoopFire
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
EVENT_KEYS = {"id", "at", "type", "backend", "profile", "message", "data"}
RUN_DATA_KEYS = {"run_id", "loop", "status", "trigger", "exit_code", "error", "duration_s", "attempts",
                 "scheduled_at", "started_at", "finished_at", "wait_until"}  # fmt: skip
SKIPPED_DATA_KEYS = {"loop", "run_id", "reason", "error", "trigger", "scheduled_at"}
MISSED_DATA_KEYS = {"loop", "run_id", "reason", "missed", "first_missed_at", "caught_up"}


async def _store(tmp_path: Path) -> tuple[Database, RunStore, EventLog]:
    db = await Database.open(tmp_path / "e.db")
    events = EventLog(db)
    return db, RunStore(db, events, clock=lambda: T0 + timedelta(seconds=5)), events


async def _events(events: EventLog) -> list[dict[str, Any]]:
    return [e.to_json() for e in await events.after(0)]


def test_a_runs_lifecycle_events_carry_what_a_notification_needs(tmp_path: Path) -> None:
    async def go() -> list[dict[str, Any]]:
        db, runs, events = await _store(tmp_path)
        try:
            run = await runs.insert(loop="nightly", trigger="schedule", status="running", scheduled_at=T0,
                                    started_at=T0, backend="command")  # fmt: skip
            assert run is not None
            await runs.set_waiting(run.id, T0 + timedelta(minutes=5))
            await runs.set_waiting(run.id, None)  # back to running: no event
            await runs.finish(run.id, status="failed", finished_at=T0 + timedelta(seconds=12.5), exit_code=3,
                              error="verify `pytest` exited 3:\nE   assert 1 == 2\nmore")  # fmt: skip
            await runs.finish(run.id, status="succeeded", finished_at=T0 + timedelta(seconds=20))  # already ended
            return await _events(events)
        finally:
            await db.close()

    started, waiting, failed = asyncio.run(go())
    for event in (started, waiting, failed):
        assert set(event) == EVENT_KEYS and set(event["data"]) == RUN_DATA_KEYS
        assert event["backend"] == "command" and event["data"]["loop"] == "nightly"
    assert [e["type"] for e in (started, waiting, failed)] == ["run.started", "run.waiting", "run.failed"]
    assert started["at"] == "2026-03-02T09:00:00.000+00:00" and started["message"] == (
        f"run {started['data']['run_id']} of loop nightly started (schedule)"
    )
    assert waiting["at"] == "2026-03-02T09:00:05.000+00:00"  # the store's clock
    assert waiting["data"]["wait_until"] == "2026-03-02T09:05:00.000+00:00"
    data = failed["data"]
    assert (data["status"], data["exit_code"], data["duration_s"], data["attempts"]) == ("failed", 3, 12.5, 0)
    # One line, its lines joined: it was the first alone, and a verify rejection's findings were lost.
    assert data["error"] == "verify `pytest` exited 3: E   assert 1 == 2 more"
    assert failed["at"] == "2026-03-02T09:00:12.500+00:00"
    assert "failed (exit 3) after 12.5s: verify `pytest` exited 3:" in failed["message"]


@pytest.mark.parametrize("status", ["succeeded", "timed_out", "interrupted", "cancelled", "some_later_status"])
def test_every_run_end_is_told_as_run_status(tmp_path: Path, status: str) -> None:
    """One end path for every status, so statuses other branches add (`cancelled`) get their events too."""

    async def go() -> dict[str, Any]:
        db, runs, events = await _store(tmp_path)
        try:
            # A status this schema does not know yet (a pragma of the connection the run writes go through).
            await db.write(lambda conn: conn.execute("PRAGMA ignore_check_constraints = ON").close())
            run = await runs.insert(loop="l", trigger="manual", status="running", scheduled_at=T0, started_at=T0,
                                    backend="command")  # fmt: skip
            assert run is not None
            await runs.finish(run.id, status=status, finished_at=T0 + timedelta(seconds=1))  # type: ignore[arg-type]
            return (await _events(events))[-1]
        finally:
            await db.close()

    event = asyncio.run(go())
    assert event["type"] == f"run.{status}" and event["data"]["status"] == status


def test_skipped_and_missed_fires_are_events(tmp_path: Path) -> None:
    async def go() -> list[dict[str, Any]]:
        db, runs, events = await _store(tmp_path)
        try:
            await runs.insert(loop="l", trigger="manual", status="skipped", scheduled_at=T0, started_at=T0,
                              finished_at=T0, backend="command", error="previous run 3 still running",
                              skip_reason="overlap")  # fmt: skip
            await runs.insert(loop="l", trigger="catch-up", status="skipped", scheduled_at=T0, started_at=T0,
                              finished_at=T0, backend="command", error="missed 4 fires …", skip_reason="daemon_down",
                              missed=4)  # fmt: skip
            await runs.insert(loop="l", trigger="catch-up", status="running", scheduled_at=T0, started_at=T0,
                              backend="command", missed=2, missed_reason="woke_late")  # fmt: skip
            return await _events(events)
        finally:
            await db.close()

    skipped, missed, caught_up, started = asyncio.run(go())
    assert skipped["type"] == "loop.fire_skipped" and set(skipped["data"]) == SKIPPED_DATA_KEYS
    assert skipped["data"]["reason"] == "overlap" and skipped["data"]["error"] == "previous run 3 still running"
    assert missed["type"] == "loop.fire_missed" and set(missed["data"]) == MISSED_DATA_KEYS
    assert (missed["data"]["missed"], missed["data"]["caught_up"], missed["data"]["reason"]) == (
        4,
        False,
        "daemon_down",
    )
    assert caught_up["type"] == "loop.fire_missed" and caught_up["data"]["caught_up"] is True
    assert (caught_up["data"]["missed"], caught_up["data"]["reason"]) == (2, "woke_late")
    assert started["type"] == "run.started" and started["data"]["trigger"] == "catch-up"


def test_a_failed_event_write_never_fails_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> str:
        db, runs, _ = await _store(tmp_path)
        try:
            run = await runs.insert(loop="l", trigger="manual", status="running", scheduled_at=T0, started_at=T0,
                                    backend="command")  # fmt: skip
            assert run is not None
            async with db.transaction() as conn:  # the event log cannot be written any more
                await conn.execute("DROP TABLE events")
            await runs.finish(run.id, status="succeeded", finished_at=T0 + timedelta(seconds=1), exit_code=0)
            return (await runs.get(run.id)).status
        finally:
            await db.close()

    with caplog.at_level(logging.ERROR, logger="fleetd.events"):
        assert asyncio.run(go()) == "succeeded"
    assert "cannot write the event(s) ['run.succeeded']" in caplog.text


def test_a_refused_event_costs_neither_the_change_nor_half_of_its_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A catch-up fire writes two events with its row; the log refusing the second keeps the row and the
    loop's move, and writes neither event (the events are one statement: all or none)."""
    from fleetd.records.loop import Loop, Schedule

    async def go() -> tuple[list[str], list[str], datetime | None]:
        db, runs, events = await _store(tmp_path)
        try:
            await LoopStore(db).insert(Loop("l", Schedule("every", "1m", "UTC"), "command", command="true",
                                            created_at=T0, updated_at=T0, next_fire_at=T0))  # fmt: skip
            async with db.transaction() as conn:
                await conn.execute("CREATE TRIGGER no_starts BEFORE INSERT ON events WHEN NEW.type = 'run.started' "
                                   "BEGIN SELECT RAISE(ABORT, 'refused'); END")  # fmt: skip
            m = timedelta(minutes=1)
            run = await runs.insert(loop="l", trigger="catch-up", status="running", scheduled_at=T0, started_at=T0,
                                    backend="command", missed=2, fired=LoopFire("l", T0, T0 + m, due=T0))  # fmt: skip
            assert run is not None
            statuses = [r.status for r in await runs.list()]
            return statuses, [e["type"] for e in await _events(events)], (await LoopStore(db).get("l")).next_fire_at
        finally:
            await db.close()

    with caplog.at_level(logging.ERROR, logger="fleetd.events"):
        statuses, types, next_fire = asyncio.run(go())
    assert statuses == ["running"] and next_fire == T0 + timedelta(minutes=1)
    assert types == []
    assert "cannot write the event(s) ['loop.fire_missed', 'run.started']" in caplog.text


def test_fires_skipped_into_one_row_move_the_loop_on_and_tell_once(tmp_path: Path) -> None:
    from fleetd.records.loop import Loop, Schedule

    async def go() -> tuple[list[Any], list[str], datetime | None]:
        db, runs, events = await _store(tmp_path)
        try:
            await LoopStore(db).insert(Loop("l", Schedule("every", "1m", "UTC"), "command", command="true",
                                            created_at=T0, updated_at=T0, next_fire_at=T0))  # fmt: skip
            m = timedelta(minutes=1)
            first = await runs.insert(loop="l", trigger="schedule", status="skipped", scheduled_at=T0, started_at=T0,
                                      finished_at=T0, backend="command", error="1", skip_reason="waiting",
                                      fired=LoopFire("l", T0, T0 + m, due=T0))  # fmt: skip
            assert first is not None
            grown = await runs.add_skip(first.id, 2, "2", LoopFire("l", T0 + m, T0 + 2 * m, due=T0 + m))
            again = await runs.add_skip(first.id, 3, "3", LoopFire("l", T0 + m, T0 + 2 * m, due=T0 + m))  # replayed
            gone = await runs.add_skip(first.id + 1, 3, "3")
            rows = [(r.id, r.skipped_count, r.error) for r in await runs.list()]
            loop = await LoopStore(db).get("l")
            return [grown is not None, again, gone, rows], [e["type"] for e in await _events(events)], loop.next_fire_at
        finally:
            await db.close()

    (grown, again, gone, rows), types, next_fire = asyncio.run(go())
    assert grown and again is None and gone is None
    assert rows == [(1, 2, "2")]  # the replay changed nothing
    assert next_fire == T0 + timedelta(minutes=2)
    assert types == ["loop.fire_skipped"]


def test_a_time_in_an_events_data_is_iso_8601_as_everywhere_else(tmp_path: Path) -> None:
    """profile.exhausted's `exhausted_until` and circuit.opened's `open_until` read "2026-12-02 00:47:23+00:00"
    (str of a datetime, microseconds and all): hooks and --json got a form the README does not promise."""

    async def go() -> list[dict[str, Any]]:
        db, _, events = await _store(tmp_path)
        try:
            until = T0 + timedelta(minutes=5, microseconds=502123)
            await events.emit(T0, "profile.exhausted", "p is exhausted", profile="p", exhausted_until=until)
            return await _events(events)
        finally:
            await db.close()

    (event,) = asyncio.run(go())
    assert event["data"]["exhausted_until"] == "2026-03-02T09:05:00.502+00:00"
