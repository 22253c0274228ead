"""Queries on the profiles table. No secret ever passes through here."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

import aiosqlite

from fleetd.errors import Conflict, NotFound
from fleetd.records.profile import PRICE_FIELDS, Limit, Profile
from fleetd.store.db import Database
from fleetd.timefmt import from_iso, to_iso

_COLUMNS = (
    "name, backend, tier, config_dir, base_url, model, price_input, price_output, price_cache_read, "
    "price_cache_write, has_secret, enabled, created_at, updated_at, limits_json, default_reset_s, daily_cost"
)


def _row_to_profile(row: aiosqlite.Row) -> Profile:
    return Profile(
        name=row["name"],
        backend=row["backend"],
        tier=row["tier"],
        config_dir=row["config_dir"],
        base_url=row["base_url"],
        model=row["model"],
        has_secret=bool(row["has_secret"]),
        enabled=bool(row["enabled"]),
        created_at=from_iso(row["created_at"]),
        updated_at=from_iso(row["updated_at"]),
        limits=[Limit.from_json(x) for x in json.loads(row["limits_json"])],
        default_reset_s=row["default_reset_s"],
        daily_cost=row["daily_cost"],
        **{key: row[key] for key in PRICE_FIELDS},
    )


def _values(profile: Profile) -> tuple[object, ...]:
    """A profile's columns, in _COLUMNS order."""
    return (
        profile.name,
        profile.backend,
        profile.tier,
        profile.config_dir,
        profile.base_url,
        profile.model,
        *(getattr(profile, key) for key in PRICE_FIELDS),
        int(profile.has_secret),
        int(profile.enabled),
        to_iso(profile.created_at),
        to_iso(profile.updated_at),
        json.dumps([limit.to_json() for limit in profile.limits]),
        profile.default_reset_s,
        profile.daily_cost,
    )


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, profile: Profile) -> None:
        values = _values(profile)
        try:
            async with self.db.transaction() as conn:
                await conn.execute(f"INSERT INTO profiles ({_COLUMNS}) VALUES ({','.join('?' * 17)})", values)
        except sqlite3.IntegrityError:
            raise Conflict(f"profile {profile.name!r} already exists") from None

    async def get(self, name: str) -> Profile:
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM profiles WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no profile named {name!r}")
        return _row_to_profile(row)

    async def list(self, backend: str | None = None) -> list[Profile]:
        if backend is None:
            rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM profiles ORDER BY name")
        else:
            rows = await self.db.fetchall(
                f"SELECT {_COLUMNS} FROM profiles WHERE backend = ? ORDER BY name", (backend,)
            )
        return [_row_to_profile(r) for r in rows]

    async def replace(self, profile: Profile) -> Profile:
        """Save an edited profile over the stored one of its name (its key flag and enabled state stay)."""
        names = [c.strip() for c in _COLUMNS.split(",")]
        kept = {"name", "backend", "config_dir", "has_secret", "enabled", "created_at"}
        changed = [(n, v) for n, v in zip(names, _values(profile), strict=True) if n not in kept]
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"UPDATE profiles SET {', '.join(f'{n} = ?' for n, _ in changed)} WHERE name = ? RETURNING {_COLUMNS}",
                (*(v for _, v in changed), profile.name),
            )
            row = await cur.fetchone()
            await cur.close()
        if row is None:
            raise NotFound(f"no profile named {profile.name!r}")
        return _row_to_profile(row)

    async def set_has_secret(self, name: str, has_secret: bool, now: datetime) -> None:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE profiles SET has_secret = ?, updated_at = ? WHERE name = ?",
                (int(has_secret), to_iso(now), name),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no profile named {name!r}")

    async def set_enabled(self, name: str, enabled: bool, now: datetime) -> None:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE profiles SET enabled = ?, updated_at = ? WHERE name = ?",
                (int(enabled), to_iso(now), name),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no profile named {name!r}")

    async def delete(self, name: str) -> None:
        async with self.db.transaction() as conn:
            cur = await conn.execute("DELETE FROM profiles WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise NotFound(f"no profile named {name!r}")
