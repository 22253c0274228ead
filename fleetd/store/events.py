"""The event log (`fleetd events`): profile.exhausted, profile.switched, run.failed, loop.fire_skipped, …

Run and fire events are built here from the run row that a state change wrote (`run_event`,
`fire_event`) and written by the store in that change's own transaction (`RunStore`), so they cost no
transaction of their own and can neither be lost nor told twice. Their JSON is a contract (hooks
deliver it, the README's "Events" section documents it, tests/store/test_events_contract.py pins it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiosqlite

from fleetd.records.fire import MISSED_REASONS
from fleetd.records.run import Run
from fleetd.store.db import Database
from fleetd.timefmt import format_duration, local_text, to_iso

log = logging.getLogger("fleetd.events")
ERROR_CAP = 300  # characters of a run's error in its event: one line, enough for a notification
_INSERT = "INSERT INTO events (at, type, backend, profile, message, data_json) VALUES (?, ?, ?, ?, ?, ?)"


@functools.cache
def _insert_many(n: int) -> str:
    """One INSERT of `n` events: a single statement, atomic by itself."""
    return _INSERT + ", (?, ?, ?, ?, ?, ?)" * (n - 1)


@dataclass(frozen=True)
class Event:
    id: int
    at: str
    type: str
    backend: str | None
    profile: str | None
    message: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "type": self.type, "backend": self.backend, "profile": self.profile,
                "message": self.message, "data": self.data}  # fmt: skip


@dataclass(frozen=True)
class NewEvent:
    """An event not written yet."""

    at: datetime
    type: str
    message: str
    backend: str | None = None
    profile: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def _json_value(value: object) -> str:
    """A value JSON has no form for: a time as every --json answer writes one (ISO 8601), anything else as text."""
    return to_iso(value) if isinstance(value, datetime) else str(value)


def _row(e: NewEvent) -> tuple[str | None, str, str | None, str | None, str, str]:
    return (to_iso(e.at), e.type, e.backend, e.profile, e.message, json.dumps(e.data, default=_json_value))


class EventLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Set, and replaced by a fresh one, by every notify. No lock: notify runs on the path of every run
        # start and end, and waiting for a lock a woken follower held meant one turn of a busy event loop
        # per notifier queued ahead (hundreds of ms per fire at 100 fires a second).
        self._new = asyncio.Event()
        # Bumped by every emit: a follower that read the log at `written == n` waits for `written > n`,
        # so an event written between its read and its wait cannot be missed (a bare notify would be).
        self.written = 0
        self.closed = False  # the daemon is stopping: followers end their streams

    async def emit(
        self, at: datetime, type_: str, message: str, *, backend: str | None = None, profile: str | None = None,
        **data: Any,
    ) -> None:  # fmt: skip
        row = (to_iso(at), type_, backend, profile, message, json.dumps(data, default=_json_value))
        await self.db.write(lambda conn: conn.execute(_INSERT, row).close())
        await self.notify()

    async def write_in(self, conn: aiosqlite.Connection, events: Sequence[NewEvent]) -> bool:
        """Write `events` inside the caller's open write transaction (call `notify` after its commit).
        An event is a record of the change, never a reason to lose it: a failing insert is rolled back
        to a savepoint and logged, and the caller's change commits without it. False when one failed."""
        if not events:
            return True
        await conn.execute("SAVEPOINT events")
        try:
            for e in events:
                await conn.execute(_INSERT, _row(e))
        except Exception:
            log.exception("cannot write the event(s) %s; the change they describe is kept", [e.type for e in events])
            with contextlib.suppress(Exception):  # a transaction SQLite already rolled back fails in the commit
                await conn.execute("ROLLBACK TO events")
                await conn.execute("RELEASE events")
            return False
        await conn.execute("RELEASE events")
        return True

    def write_sync(self, conn: sqlite3.Connection, events: Sequence[NewEvent]) -> bool:
        """`write_in` for a write function on the writer thread (`Database.write`), with the same promise (a
        failing event never costs the change) but no SAVEPOINT: the events go in as one INSERT, and SQLite backs
        out a failed statement alone, the transaction left open. A failure that ends the whole transaction (a full
        disk) fails its commit either way. Two statements fewer in every run start and end (each statement gives
        the GIL up and, with the event loop busy, waits for it back)."""
        if not events:
            return True
        try:
            rows = [_row(e) for e in events]
            conn.execute(_insert_many(len(rows)), [value for row in rows for value in row]).close()
        except Exception:
            log.exception("cannot write the event(s) %s; the change they describe is kept", [e.type for e in events])
            return False
        return True

    async def notify(self) -> None:
        """Wake the followers (`events --follow`, hooks): new events were committed. Never suspends."""
        self.written += 1
        new, self._new = self._new, asyncio.Event()
        new.set()

    def close(self) -> None:
        """Wake the followers for good: the daemon is stopping, and they end their streams (an answer still
        open when the server stops is cancelled, which logs an error and a traceback)."""
        self.closed = True
        self._new.set()

    async def after(self, last_id: int, limit: int = 1000) -> list[Event]:
        rows = await self.db.fetchall(
            "SELECT id, at, type, backend, profile, message, data_json FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (last_id, limit),
        )
        return [
            Event(r["id"], r["at"], r["type"], r["backend"], r["profile"], r["message"], json.loads(r["data_json"]))
            for r in rows
        ]

    async def latest(self, limit: int) -> list[Event]:
        rows = await self.db.fetchall("SELECT max(id) AS top FROM events")
        top = rows[0]["top"] or 0
        return await self.after(max(0, top - limit), limit)

    async def wait(self, timeout: float) -> None:
        """Until the next notify, or `timeout` seconds."""
        await self.wait_past(self.written, timeout)

    async def wait_past(self, seen: int, timeout: float) -> None:
        """Until an event is written after the follower saw `written == seen`, or `timeout` seconds."""
        if self.written > seen:
            return
        # The Event of the notify to come: a notify replaces it, so this cannot miss one. Not wait_for: in
        # 3.11 it drops a cancellation that lands in the turn the wait ends, and a stop cancelling a
        # follower just as a run's end woke it then waited for that follower forever.
        woken = asyncio.ensure_future(self._new.wait())
        try:
            await asyncio.wait({woken}, timeout=timeout)
        finally:
            woken.cancel()


def one_line(text: str | None, cap: int = ERROR_CAP) -> str | None:
    """An error for a notification: its non-empty lines joined into one, at most `cap` characters (the first line
    alone of a verify rejection was `verify … exited 1:`, its findings lost)."""
    if not text:
        return text
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= cap else line[: cap - 1] + "…"


def run_event(run: Run, at: datetime) -> NewEvent:
    """`run.<status>` for a run that just started, began waiting for a reset, or ended. The data is the
    same for every status; the run's error is already scrubbed of keys (it comes from scrubbed output)."""
    duration = None if run.finished_at is None else round((run.finished_at - run.started_at).total_seconds(), 3)
    data = {
        "run_id": run.id,
        "loop": run.loop,
        "status": run.status,
        "trigger": run.trigger,
        "exit_code": run.exit_code,
        "error": one_line(run.error),
        "duration_s": duration,
        "attempts": run.attempts,
        "scheduled_at": to_iso(run.scheduled_at),
        "started_at": to_iso(run.started_at),
        "finished_at": to_iso(run.finished_at),
        "wait_until": to_iso(run.wait_until),
    }
    who = f"run {run.id} of loop {run.loop}"
    if run.status == "running":
        message = f"{who} started ({run.trigger})"
    elif run.status == "waiting":
        message = f"{who} waits for headroom until {local_text(run.wait_until) if run.wait_until else '-'}"
    else:
        code = f" (exit {run.exit_code})" if run.exit_code is not None and run.status != "succeeded" else ""
        message = f"{who} {run.status.replace('_', ' ')}{code} after {format_duration(duration)}"
        if data["error"]:
            message += f": {data['error']}"
    kind = "started" if run.status == "running" else run.status
    return NewEvent(at, f"run.{kind}", message, backend=run.backend, profile=run.profile or None, data=data)


def fire_event(run: Run, at: datetime, missed: int = 0, missed_reason: str = "daemon_down") -> NewEvent | None:
    """`loop.fire_missed` for fires that fell while fleetd could not fire them (`missed` of them, whether a
    catch-up `run` stands for them or a `skipped` one), `loop.fire_skipped` for a fire that came due and
    started no run; None for a run that is neither."""
    if run.status == "skipped" and run.skip_reason in MISSED_REASONS:
        missed = run.skipped_count
    # A row skipped for another reason (the loop busy) tells the fires it stands for as skipped ones, whether they
    # came due or a late timer passed over them: its `skipped_count` counts them.
    if missed and (run.status != "skipped" or run.skip_reason in MISSED_REASONS):
        caught_up = run.status != "skipped"
        data: dict[str, Any] = {
            "loop": run.loop,
            "run_id": run.id,
            "reason": run.skip_reason or missed_reason,
            "missed": missed,
            "first_missed_at": to_iso(run.scheduled_at),
            "caught_up": caught_up,
        }
        what = f"caught up by run {run.id}" if caught_up else "not run (--catch-up skip)"
        fires = "1 fire" if missed == 1 else f"{missed} fires"
        message = f"loop {run.loop} missed {fires} while the daemon could not fire them: {what}"
        return NewEvent(at, "loop.fire_missed", message, backend=run.backend, data=data)
    if run.status != "skipped":
        return None
    data = {
        "loop": run.loop,
        "run_id": run.id,
        "reason": run.skip_reason,
        "error": one_line(run.error),
        "trigger": run.trigger,
        "scheduled_at": to_iso(run.scheduled_at),
    }
    message = f"loop {run.loop}: fire skipped (run {run.id}): {data['error']}"
    return NewEvent(at, "loop.fire_skipped", message, backend=run.backend, data=data)
