"""Migration 4: loops made before escalation chains keep working as they did, with every tier their
backend could reach (a loop over every profile of its backend used metered keys too)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from fleetd.routing.policy import loop_policy
from fleetd.routing.router import ProfileView, World, resolve
from fleetd.store import schema
from fleetd.store.db import Database
from fleetd.store.loops import LoopStore

T = "2026-11-21T00:00:00.000+00:00"


def test_a_v3_loop_keeps_its_pool_model_and_every_tier(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as conn:
        for number, script in enumerate(schema.MIGRATIONS[:3], start=1):
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        for name, pool in (("any", "[]"), ("pooled", '["key-b", "sub-a"]')):
            conn.execute(
                "INSERT INTO loops (name, schedule_kind, schedule_expr, timezone, backend, prompt, catch_up, "
                "output_cap, created_at, updated_at, profiles_json, model) "
                "VALUES (?, 'every', '1h', 'UTC', 'claude_code', 'hi', 'once', 1024, ?, ?, ?, 'sonnet')",
                (name, T, T, pool),
            )

    async def go() -> dict[str, list[str]]:
        db = await Database.open(path)
        try:
            loops = {lp.name: lp for lp in await LoopStore(db).list()}
        finally:
            await db.close()
        world = World(datetime.now(UTC), {
            "sub-a": ProfileView("sub-a", "claude_code", "subscription"),
            "key-b": ProfileView("key-b", "claude_code", "metered"),
        })  # fmt: skip
        out = {}
        for name, loop in loops.items():
            assert loop.chain == [] and loop.model == "sonnet"
            ((step, usable, passed),) = resolve(loop_policy(loop), world)
            assert step.model == "sonnet" and passed == []
            out[name] = [c.profile for c in usable]
        return out

    resolved = asyncio.run(go())
    assert resolved["any"] == ["sub-a", "key-b"]  # the metered key is still reachable, after the subscription
    assert resolved["pooled"] == ["sub-a", "key-b"]  # a named pool, ordered by tier, then its own order
