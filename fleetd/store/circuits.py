"""Queries on the circuits table: each profile's breaker, so an open circuit survives a restart."""

from __future__ import annotations

from datetime import datetime

from fleetd.records.circuit import Circuit
from fleetd.store.db import Database
from fleetd.timefmt import from_iso, to_iso


class CircuitStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self) -> dict[str, Circuit]:
        rows = await self.db.fetchall("SELECT profile, state, failures, open_until, cooldown_s FROM circuits")
        return {
            r["profile"]: Circuit(r["state"], r["failures"], from_iso(r["open_until"]), r["cooldown_s"]) for r in rows
        }

    async def save(self, profile: str, circuit: Circuit, now: datetime) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO circuits (profile, state, failures, open_until, cooldown_s, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (profile) DO UPDATE SET state = excluded.state, "
                "failures = excluded.failures, open_until = excluded.open_until, cooldown_s = excluded.cooldown_s, "
                "updated_at = excluded.updated_at",
                (profile, circuit.state, circuit.failures, to_iso(circuit.open_until), circuit.cooldown_s, to_iso(now)),
            )

    async def forget(self, profile: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM circuits WHERE profile = ?", (profile,))
