"""`RunStore.list_array`: the runs `list` gives, as one JSON array SQLite joins (what `GET /v1/runs` answers). Its
order rests on SQLite taking a LIMITed subquery's rows into group_concat as the index walk yields them (there is
no ORDER BY inside an aggregate before SQLite 3.44): checked here against `list` for every filter combination, on
runs whose start order is not their id order, with ties on the start time."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetd.daemon.views import RUN_JSON_SQL
from fleetd.store import runs as runs_module
from fleetd.store.db import Database
from fleetd.store.runs import RunStore

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
STATUSES = ("succeeded", "failed", "running", "skipped")


def _fill(conn: sqlite3.Connection) -> None:
    rng = random.Random(7)
    rows = []
    for i in range(4000):
        # out of id order, and every fifth run starts in the same millisecond as another
        at = T0 - timedelta(milliseconds=rng.randrange(0, 86_400_000) // 5 * 5)
        iso = at.isoformat(timespec="milliseconds")
        rows.append((f"loop{i % 7}", rng.choice(STATUSES), iso, iso))
    conn.executemany(
        "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend) "
        "VALUES (?, 'schedule', ?, ?, ?, 'command')",
        rows,
    )


FILTERS = list(itertools.product((None, "loop3"), (None, "failed"), (None, T0 - timedelta(hours=6))))


@pytest.mark.parametrize("split_from", [runs_module.SPLIT_FROM, 2])
@pytest.mark.parametrize("limit", [1, 50, 2001, 10_000])
def test_the_array_is_list_s_runs_in_list_s_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int, split_from: int
) -> None:
    """Also when read in two halves at once (from `SPLIT_FROM` rows): the halves meet at a row, ties included."""
    monkeypatch.setattr(runs_module, "SPLIT_FROM", split_from)

    async def go() -> list[tuple[list[int], list[int]]]:
        db = await Database.open(tmp_path / "f.db")
        runs = RunStore(db)
        try:
            await db.write(_fill)
            pairs = []
            for loop, status, since in FILTERS:
                listed = [r.id for r in await runs.list(loop=loop, status=status, since=since, limit=limit)]
                body = await runs.list_array("id", loop=loop, status=status, since=since, limit=limit)
                pairs.append((listed, json.loads(body)))
            return pairs
        finally:
            await db.close()

    for listed, answered in asyncio.run(go()):
        assert answered == listed
        assert 0 < len(listed) <= limit


def test_no_runs_is_an_empty_array_and_objects_are_joined_as_they_are(tmp_path: Path) -> None:
    async def go() -> tuple[bytes, bytes]:
        db = await Database.open(tmp_path / "f.db")
        runs = RunStore(db)
        try:
            empty = await runs.list_array(RUN_JSON_SQL, status="failed")
            await runs.insert(
                loop="l", trigger="manual", status="running", scheduled_at=T0, started_at=T0, backend="command",
                error='"é", \\ },{',
            )  # fmt: skip
            return empty, await runs.list_array(RUN_JSON_SQL)
        finally:
            await db.close()

    empty, one = asyncio.run(go())
    assert empty == b"[]"
    assert isinstance(one, bytes) and one.startswith(b'[{"id":1,') and one.endswith(b"}]")
    assert json.loads(one)[0]["error"] == '"é", \\ },{'
