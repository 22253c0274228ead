"""Every history query is an index search (issue 12): `runs list` with any combination of filters, `loop
list`'s last runs, `stats`, and retention's batches. Checked with EXPLAIN QUERY PLAN on the SQL the stores
issue, on a fresh (un-ANALYZEd, as the daemon keeps it) database: a `SCAN runs` without an index would read
every row of a million-run history, and a TEMP B-TREE would sort every matching row before the limit."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest

from fleetd.daemon.views import RUN_JSON_SQL
from fleetd.store import attempts, gateway_stats, retention
from fleetd.store.db import Database
from fleetd.store.rollups import window
from fleetd.store.runs import _COLUMNS, NEWEST_FIRST, array_query, list_query
from fleetd.store.stats import GROUP_KEYS, _queries

# The parameters of a stats query from 09:30 (store/rollups.py `window`), with the whole periods it would read.
WINDOW = {**window(datetime(2026, 11, 21, 9, 30, tzinfo=UTC)), "days": '["2026-11-22", "2026-11-23"]',
          "hours": '["2026-11-21T10"]'}  # fmt: skip

SINCE = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    path = tmp_path_factory.mktemp("plans") / "fleetd.db"

    async def create() -> None:
        await (await Database.open(path)).close()

    asyncio.run(create())
    return sqlite3.connect(path)


def plan(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[str]:
    return [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def full_scans(steps: list[str], tables: tuple[str, ...]) -> list[str]:
    """The steps that read a whole table, or sort rows before a limit."""
    return [
        s
        for s in steps
        if "TEMP B-TREE" in s
        or any(s == f"SCAN {t}" or (s.startswith(f"SCAN {t} ") and "INDEX" not in s) for t in tables)
    ]


FILTERS = list(itertools.product((None, "loop07"), (None, "failed", "running"), (None, SINCE)))


@pytest.mark.parametrize(("loop", "status", "since"), FILTERS)
@pytest.mark.parametrize(
    "select", [_COLUMNS, RUN_JSON_SQL, "api-array", "newer-half", "older-half"],
    ids=["runs", "api-json", "api-array", "newer-half", "older-half"],
)  # fmt: skip
def test_runs_list_is_an_index_walk_for_every_filter_combination(
    conn: sqlite3.Connection, loop: str | None, status: str | None, since: datetime | None, select: str
) -> None:
    """`api-array`, and its two halves read at once for a long list (`RunStore.list_array`), each bounded by the
    row where they meet."""
    half = {"newer-half": {"newer_than": ("2026-11-25T00:00:00.000+00:00", 7)},
            "older-half": {"from_": ("2026-11-25T00:00:00.000+00:00", 7)}}.get(select)  # fmt: skip
    if half is not None:
        sql, params = array_query(RUN_JSON_SQL, loop=loop, status=status, since=since, limit=5_000, **half)
        outer = plan(conn, sql, params)
        assert outer[0].startswith("CO-ROUTINE") and outer[-1].startswith("SCAN (subquery"), outer
        (step,) = outer[1:-1]
        assert step.startswith("SEARCH runs USING") and "TEMP B-TREE" not in step, outer
        assert ("started_at<?" if "from_" in half else "started_at>?") in step, outer
        return
    if select == "api-array":
        # The API's answer: the same walk as a co-routine whose rows group_concat takes in its order (never
        # flattened into the aggregate, which could take them in any order).
        sql, params = array_query(RUN_JSON_SQL, loop=loop, status=status, since=since, limit=10_000)
        outer = plan(conn, sql, params)
        assert outer[0].startswith("CO-ROUTINE") and outer[-1].startswith("SCAN (subquery"), outer
        steps = outer[1:-1]
    else:
        sql, params = list_query(loop=loop, status=status, since=since, limit=10_000, select=select)
        steps = plan(conn, sql, params)
    assert not full_scans(steps, ("runs",)), steps
    assert all("USING INDEX" in s or "USING COVERING INDEX" in s for s in steps), steps
    if loop or status or since:
        # Every filter narrows the walk through the index: one that only some of them narrow reads all the
        # rows of the others (`--loop X --status failed` walked all of X's runs to find its few failures).
        assert len(steps) == 1 and steps[0].startswith("SEARCH runs USING"), steps
        bounds = steps[0].partition("(")[2]
        wanted = [c for c, value in (("loop=?", loop), ("status=?", status), ("started_at>?", since)) if value]
        assert all(c in bounds for c in wanted), steps


def test_last_run_of_every_loop_is_one_probe_per_loop(conn: sqlite3.Connection) -> None:
    sql = (
        f"SELECT {_COLUMNS} FROM runs WHERE id IN (SELECT (SELECT id FROM runs r WHERE r.loop = l.name "
        f"ORDER BY {NEWEST_FIRST} LIMIT 1) FROM loops l)"
    )
    steps = plan(conn, sql)
    assert not full_scans(steps, ("runs", "r")), steps


@pytest.mark.parametrize("by", [(k,) for k in GROUP_KEYS] + [("loop", "step")])
@pytest.mark.parametrize("loop", [None, "loop07"])
def test_stats_reads_rollups_and_raw_rows_by_index(
    conn: sqlite3.Connection, by: tuple[str, ...], loop: str | None
) -> None:
    params = {**WINDOW, "loop": loop}
    for sql in _queries(by, loop):
        steps = plan(conn, sql, params)
        scans = [
            s
            for s in full_scans(steps, ("runs", "r", "attempts", "a", "stats_daily", "stats_hourly"))
            if "TEMP B-TREE" not in s
        ]
        assert not scans, steps


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        (retention.OLD_RUNS, ("2026-11-21", 500)),
        (retention.LOOP_NAMES, ()),
        (retention.KEEP_EDGE, ("loop07", 999)),
        (retention.BEYOND_EDGE, ("loop07", "2026-11-21", "2026-11-21", 7, 500)),
        (retention.OLD_EVENTS, ("2026-11-21", 500)),
        (retention.OLD_GATEWAY_CALLS, ("2026-11-21", 500)),
    ],
)
def test_each_prune_batch_is_an_index_walk(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> None:
    steps = plan(conn, sql, params)
    assert not full_scans(steps, ("runs", "r", "events", "gateway_calls")), steps


def test_a_profiles_daily_spend_is_two_index_searches(conn: sqlite3.Connection) -> None:
    """Checked before each routing decision for a profile with --daily-cost: loops' attempts and gateway calls."""
    steps = plan(conn, attempts.PROFILE_COST, ("p", "2026-11-21", "p", "2026-11-21"))
    assert not full_scans(steps, ("attempts", "gateway_calls")), steps
    assert any("gateway_calls" in s and "profile=?" in s for s in steps), steps
    assert any("attempts" in s and "profile=?" in s for s in steps), steps


@pytest.mark.parametrize("by", [(k,) for k in gateway_stats.COLUMNS] + [("route", "profile")])
def test_gateway_stats_read_rollups_and_the_first_hours_calls_by_index(
    conn: sqlite3.Connection, by: tuple[str, ...]
) -> None:
    params = WINDOW
    tables = ("gateway_calls", *(f"gateway_{k}_{p}" for k in ("stats", "histograms") for p in ("daily", "hourly")))
    for sql in gateway_stats.queries(by):
        steps = plan(conn, sql, params)
        assert not [s for s in full_scans(steps, tables) if "TEMP B-TREE" not in s], steps


def test_a_batch_of_calls_adds_to_the_rollups_by_index(conn: sqlite3.Connection) -> None:
    """Each statement reads the batch alone (its ids, each a search), never the whole call log."""
    for sql in gateway_stats._ADD_BATCH:
        steps = plan(conn, sql, {"ids": "[1000001, 1000002]"})
        assert not [s for s in full_scans(steps, ("gateway_calls",)) if "TEMP B-TREE" not in s], steps
        assert any("gateway_calls USING INTEGER PRIMARY KEY (rowid=?)" in s for s in steps), steps
