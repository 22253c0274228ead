"""Queries on the hooks table and the delivery cursor. No secret ever passes through here."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

import aiosqlite

from fleetd.errors import Conflict, NotFound
from fleetd.records.hook import Hook
from fleetd.store.db import Database
from fleetd.timefmt import from_iso, to_iso

_COLUMNS = "name, on_json, kind, target, timeout_s, has_secret, since_event, created_at"


def _row_to_hook(row: aiosqlite.Row) -> Hook:
    return Hook(
        name=row["name"],
        on=tuple(json.loads(row["on_json"])),
        kind=row["kind"],
        target=row["target"],
        timeout_s=row["timeout_s"],
        has_secret=bool(row["has_secret"]),
        since_event=row["since_event"],
        created_at=from_iso(row["created_at"]),
    )


class HookStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, hook: Hook) -> Hook:
        """Saves `hook` with `since_event` = the newest event now, read in the same transaction, and
        returns it as saved."""
        try:
            async with self.db.transaction() as conn:
                async with conn.execute("SELECT coalesce(max(id), 0) FROM events") as cur:
                    row = await cur.fetchone()
                since = int(row[0]) if row else 0
                await conn.execute(
                    f"INSERT INTO hooks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (hook.name, json.dumps(list(hook.on)), hook.kind, hook.target, hook.timeout_s,
                     int(hook.has_secret), since, to_iso(hook.created_at)),
                )  # fmt: skip
        except sqlite3.IntegrityError:
            raise Conflict(f"hook {hook.name!r} already exists") from None
        return await self.get(hook.name)

    async def get(self, name: str) -> Hook:
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM hooks WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no hook named {name!r}")
        return _row_to_hook(row)

    async def list(self) -> list[Hook]:
        rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM hooks ORDER BY name")
        return [_row_to_hook(r) for r in rows]

    async def delete(self, name: str) -> None:
        async with self.db.transaction() as conn:
            cur = await conn.execute("DELETE FROM hooks WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise NotFound(f"no hook named {name!r}")

    async def cursor(self) -> int | None:
        """The last event id whose deliveries all ended; None before hooks ever ran."""
        row = await self.db.fetchone("SELECT event_id FROM hook_cursor WHERE id = 1")
        return int(row["event_id"]) if row else None

    async def delivered(self) -> dict[str, int]:
        """Each hook's own cursor, where one was saved: the last event id up to which its deliveries all ended."""
        rows = await self.db.fetchall("SELECT name, delivered_upto FROM hooks WHERE delivered_upto IS NOT NULL")
        return {row["name"]: int(row["delivered_upto"]) for row in rows}

    async def save_cursor(self, event_id: int, now: datetime, delivered: dict[str, int] | None = None) -> None:
        """The log's cursor, and (`delivered`) hooks' own, in one transaction."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO hook_cursor (id, event_id, updated_at) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET event_id = excluded.event_id, updated_at = excluded.updated_at",
                (event_id, to_iso(now)),
            )
            if delivered:
                await conn.executemany("UPDATE hooks SET delivered_upto = ? WHERE name = ?",
                                       [(upto, name) for name, upto in delivered.items()])  # fmt: skip

    async def newest_event(self) -> int:
        row = await self.db.fetchone("SELECT coalesce(max(id), 0) AS top FROM events")
        return int(row["top"]) if row else 0
