"""Queries on the loops table."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

import aiosqlite

from fleetd.errors import Conflict, NotFound
from fleetd.records.loop import ChainStep, Loop, Schedule
from fleetd.store.db import Database
from fleetd.timefmt import from_iso, to_iso

_COLUMNS = (
    "name, schedule_kind, schedule_expr, timezone, backend, command, prompt, prompt_file, workdir, "
    "env_json, timeout_s, catch_up, output_cap, enabled, created_at, updated_at, last_fire_at, next_fire_at, "
    "profiles_json, model, agent_args_json, chain_json, tiers_json, max_cost, max_tokens, daily_cost, on_exhausted, "
    "verify, verify_timeout_s, repair, review_json, paused_at, attempt_timeout_s"
)


def _row_to_loop(row: aiosqlite.Row) -> Loop:
    return Loop(
        name=row["name"],
        schedule=Schedule(kind=row["schedule_kind"], expr=row["schedule_expr"], timezone=row["timezone"]),
        backend=row["backend"],
        command=row["command"],
        prompt=row["prompt"],
        prompt_file=row["prompt_file"],
        workdir=row["workdir"],
        env=json.loads(row["env_json"]),
        timeout_s=row["timeout_s"],
        catch_up=row["catch_up"],
        output_cap=row["output_cap"],
        enabled=bool(row["enabled"]),
        created_at=from_iso(row["created_at"]),
        updated_at=from_iso(row["updated_at"]),
        last_fire_at=from_iso(row["last_fire_at"]),
        next_fire_at=from_iso(row["next_fire_at"]),
        profiles=json.loads(row["profiles_json"]),
        model=row["model"],
        agent_args=json.loads(row["agent_args_json"]),
        chain=[ChainStep.from_json(step) for step in json.loads(row["chain_json"])],
        tiers=tuple(json.loads(row["tiers_json"])),
        max_cost=row["max_cost"],
        max_tokens=row["max_tokens"],
        daily_cost=row["daily_cost"],
        on_exhausted=row["on_exhausted"],
        verify=row["verify"],
        verify_timeout_s=row["verify_timeout_s"],
        repair=row["repair"],
        review=ChainStep.from_json(json.loads(row["review_json"])) if row["review_json"] else None,
        paused_at=from_iso(row["paused_at"]),
        attempt_timeout_s=row["attempt_timeout_s"],
    )


def _values(loop: Loop) -> tuple[object, ...]:
    """A loop's columns, in _COLUMNS order."""
    return (
        loop.name,
        loop.schedule.kind,
        loop.schedule.expr,
        loop.schedule.timezone,
        loop.backend,
        loop.command,
        loop.prompt,
        loop.prompt_file,
        loop.workdir,
        json.dumps(loop.env, sort_keys=True),
        loop.timeout_s,
        loop.catch_up,
        loop.output_cap,
        int(loop.enabled),
        to_iso(loop.created_at),
        to_iso(loop.updated_at),
        to_iso(loop.last_fire_at),
        to_iso(loop.next_fire_at),
        json.dumps(loop.profiles),
        loop.model,
        json.dumps(loop.agent_args),
        json.dumps([step.to_json() for step in loop.chain]),
        json.dumps(list(loop.tiers)),
        loop.max_cost,
        loop.max_tokens,
        loop.daily_cost,
        loop.on_exhausted,
        loop.verify,
        loop.verify_timeout_s,
        loop.repair,
        json.dumps(loop.review.to_json()) if loop.review else None,
        to_iso(loop.paused_at),
        loop.attempt_timeout_s,
    )


class LoopStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, loop: Loop) -> Loop:
        """Save a new loop; returns it as stored, read back inside the write."""
        try:
            async with self.db.transaction() as conn:
                cur = await conn.execute(
                    f"INSERT INTO loops ({_COLUMNS}) VALUES ({','.join('?' * 33)}) RETURNING {_COLUMNS}", _values(loop)
                )
                row = await cur.fetchone()
                await cur.close()
        except sqlite3.IntegrityError:
            raise Conflict(f"loop {loop.name!r} already exists") from None
        assert row is not None
        return _row_to_loop(row)

    async def replace(self, loop: Loop, *, was: Loop, schedule_moved: bool) -> Loop:
        """Save an edited definition over `was`, the loop as read when the edit began, and the same instance
        (`Loop.instance`): an edit that raced a `loop rm` (and maybe a new `loop add` of the name) changes
        nothing. Neither does one that raced a pause, resume or another edit (Conflict): its `enabled` and
        schedule were decided on a stale read. When and whether it last fired stay as stored (a fire may
        have been recorded meanwhile, and is no conflict), and so does its next fire time unless the edit
        `schedule_moved` it to `loop.next_fire_at`."""
        kept = {"name", "created_at", "last_fire_at"} | (set() if schedule_moved else {"next_fire_at"})
        names = [c.strip() for c in _COLUMNS.split(",")]
        changed = [(n, v) for n, v in zip(names, _values(loop), strict=True) if n not in kept]
        instance = (loop.name, to_iso(loop.created_at))
        same_instance = False
        async with self.db.transaction() as conn:
            # `enabled` as well as `updated_at`: a pause in the same millisecond still differs.
            cur = await conn.execute(
                f"UPDATE loops SET {', '.join(f'{n} = ?' for n, _ in changed)} "
                f"WHERE name = ? AND created_at = ? AND updated_at IS ? AND enabled = ? RETURNING {_COLUMNS}",
                (*(v for _, v in changed), *instance, to_iso(was.updated_at), int(was.enabled)),
            )
            row = await cur.fetchone()
            await cur.close()
            if row is None:
                cur = await conn.execute("SELECT 1 FROM loops WHERE name = ? AND created_at = ?", instance)
                same_instance = await cur.fetchone() is not None
                await cur.close()
        if row is None:
            if same_instance:
                raise Conflict(f"loop {loop.name!r} changed meanwhile (paused, resumed or edited): try again")
            raise NotFound(f"no loop named {loop.name!r} (removed meanwhile?)")
        return _row_to_loop(row)

    async def known(self, name: str) -> bool:
        """Whether `name` is a loop defined now, or one whose runs or stats figures are on record (a loop removed
        keeps its history): a name none of them knows is a mistake, not a loop with nothing to show."""
        row = await self.db.fetchone(
            "SELECT EXISTS (SELECT 1 FROM loops WHERE name = ?1) OR EXISTS (SELECT 1 FROM runs WHERE loop = ?1) "
            "OR EXISTS (SELECT 1 FROM stats_daily WHERE loop = ?1)",
            (name,),
        )
        return bool(row and row[0])

    async def get(self, name: str) -> Loop:
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM loops WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no loop named {name!r}")
        return _row_to_loop(row)

    async def list(self) -> list[Loop]:
        rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM loops ORDER BY name")
        return [_row_to_loop(r) for r in rows]

    async def count(self) -> int:
        row = await self.db.fetchone("SELECT count(*) FROM loops")
        assert row is not None
        return int(row[0])

    async def set_state(
        self,
        name: str,
        *,
        updated_at: datetime,
        enabled: bool | None = None,
        next_fire_at: datetime | None = None,
        last_fire_at: datetime | None = None,
        clear_next: bool = False,
    ) -> None:
        sets, params = ["updated_at = ?"], [to_iso(updated_at)]
        if enabled is not None:
            # `paused_since`, in SQL: a pause of a paused loop keeps when it was paused.
            sets.append("enabled = ?, paused_at = CASE WHEN ? THEN NULL ELSE coalesce(paused_at, ?) END")
            params.extend((int(enabled), int(enabled), to_iso(updated_at)))
        if next_fire_at is not None or clear_next:
            sets.append("next_fire_at = ?")
            params.append(to_iso(next_fire_at))
        if last_fire_at is not None:
            sets.append("last_fire_at = ?")
            params.append(to_iso(last_fire_at))
        async with self.db.transaction() as conn:
            await conn.execute(f"UPDATE loops SET {', '.join(sets)} WHERE name = ?", (*params, name))

    async def delete(self, name: str) -> None:
        async with self.db.transaction() as conn:
            cur = await conn.execute("DELETE FROM loops WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise NotFound(f"no loop named {name!r}")
