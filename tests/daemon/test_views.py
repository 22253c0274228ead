"""`runs list` answers with the JSON objects SQLite builds (views.RUN_JSON_SQL): they must be, key for key, in
order and value for value, what `run_json` makes of the same runs (the shape `runs show` and the CLI read)."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite
import pytest

from fleetd.daemon.views import RUN_JSON_SQL, run_json
from fleetd.store.db import Database, migrate
from fleetd.store.runs import RunStore
from fleetd.store.schema import EPOCH_S_SQL, duration_ms_sql

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
# Strings JSON must escape, and some it need not: quotes, backslashes, control characters, DEL, non-ASCII, astral.
AWKWARD = 'he said "no" \\ C:\\path\n\ttab \x00\x01\x1f\x7f é … 日本 🚀 </script>'


def test_every_run_is_the_object_run_json_makes_of_it(tmp_path: Path) -> None:
    async def go() -> tuple[list[dict[str, object]], bytes]:
        db = await Database.open(tmp_path / "f.db")
        runs = RunStore(db)
        try:
            started = [T0 + timedelta(minutes=i, milliseconds=7 * i) for i in range(8)]
            ids = []
            for i, at in enumerate(started):
                run = await runs.insert(
                    loop=f"loop{i % 3}", trigger="schedule" if i % 2 else "manual", status="running",
                    scheduled_at=at - timedelta(milliseconds=1), started_at=at, backend="command",
                    log_path_for=lambda n: f"/tmp/é {n}.log",
                )  # fmt: skip
                assert run is not None
                ids.append(run.id)
            # finished after 0 ms, 1 ms, 999 ms, 1.5 s, 100 days and a few ms; one "before" it started (a clock step)
            took = [0, 1, 999, 1500, 100 * 86_400_000 + 123, -250]
            for run_id, at, ms in zip(ids, started, took, strict=False):
                await runs.finish(run_id, status="failed", finished_at=at + timedelta(milliseconds=ms), exit_code=3,
                                  error=AWKWARD)  # fmt: skip
            await runs.set_waiting(ids[6], T0 + timedelta(hours=5))  # ids[7] stays running
            await runs.insert(loop="loop0", trigger="schedule", status="skipped", scheduled_at=T0, started_at=T0,
                              finished_at=T0, backend="command", error="busy", skip_reason="overlap",
                              missed=4)  # fmt: skip
            await db.write(lambda c: c.execute("UPDATE runs SET pid = 4242, profile = 'p-1' WHERE id = ?", (ids[1],)))
            expected = [run_json(r) for r in await runs.list(limit=100)]
            body = await runs.list_array(RUN_JSON_SQL, limit=100)
            # Each end wrote its duration_ms: none is left to RUN_JSON_SQL's fallback (worked out from the times).
            unstored = await db.fetchall("SELECT id FROM runs WHERE finished_at IS NOT NULL AND duration_ms IS NULL")
            assert [tuple(r) for r in unstored] == []
            return expected, body
        finally:
            await db.close()

    expected, body = asyncio.run(go())
    assert len(expected) == 9
    answer = json.loads(body)
    assert answer == expected
    assert [list(a) for a in answer] == [list(e) for e in expected]  # the keys' order too
    assert [type(a["duration_s"]) for a in answer] == [type(e["duration_s"]) for e in expected]


@pytest.mark.parametrize("epoch_s", EPOCH_S_SQL)
def test_durations_are_run_json_s_to_the_last_bit(tmp_path: Path, epoch_s: str) -> None:
    """ms / 1000.0 in SQLite, printed by SQLite, read back: the very float run_json rounds to, for any duration,
    whichever way the SQLite at hand counts seconds."""
    rng = random.Random(12)
    pairs = [(T0, T0 + timedelta(milliseconds=ms)) for ms in range(0, 3000)]
    for _ in range(3000):
        start = T0 + timedelta(milliseconds=rng.randrange(-(10**12), 10**12))
        pairs.append((start, start + timedelta(milliseconds=rng.randrange(-(10**6), 4 * 10**11))))

    async def go() -> list[str]:
        db = await Database.open(tmp_path / "f.db")
        try:
            await db.write(lambda c: c.executemany(
                "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, finished_at, backend) "
                "VALUES ('l', 'manual', 'succeeded', ?, ?, ?, 'command')",
                [(s.isoformat(timespec="milliseconds"), s.isoformat(timespec="milliseconds"),
                  f.isoformat(timespec="milliseconds")) for s, f in pairs],
            ).close())  # fmt: skip
            duration = duration_ms_sql("finished_at", "started_at", epoch_s)
            rows = await db.fetchall(f"SELECT json_object('d', {duration} / 1000.0) FROM runs ORDER BY id")
            return [r[0] for r in rows]
        finally:
            await db.close()

    got = [json.loads(text)["d"] for text in asyncio.run(go())]
    assert got == [round((f - s).total_seconds(), 3) for s, f in pairs]


def test_migration_17_stores_the_duration_of_every_ended_run(tmp_path: Path) -> None:
    """Runs ended before migration 17 get their duration_ms from their times; running ones stay NULL."""
    ended = [(T0, T0 + timedelta(milliseconds=ms)) for ms in (0, 1, 999, 1500, 100 * 86_400_000 + 123, -250)]

    async def go() -> list[tuple[object, ...]]:
        async with aiosqlite.connect(tmp_path / "f.db", isolation_level=None) as conn:
            assert await migrate(conn, upto=16) == 16
            iso = [(s.isoformat(timespec="milliseconds"), f.isoformat(timespec="milliseconds")) for s, f in ended]
            await conn.executemany(
                "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, finished_at, backend) "
                "VALUES ('l', 'manual', 'succeeded', ?1, ?1, ?2, 'command')", iso,
            )  # fmt: skip
            await conn.execute("INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend) "
                               "VALUES ('l', 'manual', 'running', ?1, ?1, 'command')", (iso[0][0],))  # fmt: skip
            assert await migrate(conn) >= 17
            async with conn.execute("SELECT duration_ms FROM runs ORDER BY id") as cur:
                return [tuple(r) for r in await cur.fetchall()]

    assert asyncio.run(go()) == [((f - s) // timedelta(milliseconds=1),) for s, f in ended] + [(None,)]
