"""The event log (`fleetd events`): profile.exhausted, profile.switched, run.waiting, …"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetd.store.db import Database
from fleetd.timefmt import to_iso


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


class EventLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._new = asyncio.Condition()
        # Bumped by every emit: a follower that read the log at `written == n` waits for `written > n`,
        # so an event written between its read and its wait cannot be missed (a bare notify would be).
        self.written = 0

    async def emit(
        self, at: datetime, type_: str, message: str, *, backend: str | None = None, profile: str | None = None,
        **data: Any,
    ) -> None:  # fmt: skip
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO events (at, type, backend, profile, message, data_json) VALUES (?, ?, ?, ?, ?, ?)",
                (to_iso(at), type_, backend, profile, message, json.dumps(data, default=str)),
            )
        async with self._new:
            self.written += 1
            self._new.notify_all()

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
        async with self._new:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), timeout)

    async def wait_past(self, seen: int, timeout: float) -> None:
        """Until an event is written after the follower saw `written == seen`, or `timeout` seconds."""
        async with self._new:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait_for(lambda: self.written > seen), timeout)
