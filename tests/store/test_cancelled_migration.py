"""Migration 10: the runs table is rebuilt so a run can end `cancelled`. On a database with history,
nothing else may change: rows, ids, the AUTOINCREMENT mark, stats rollups, every index and trigger on
runs (whatever earlier migrations added: this test adds its own, as a later migration 9 might), and
foreign keys. A cancelled run then counts in the stats as ended, not succeeded."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, get_args

import aiosqlite
import pytest

from fleetd.records.status import ENDED_STATUSES, STATUSES, RunStatus
from fleetd.store.db import migrate

T0 = "2026-11-21T09:00:00.000+00:00"
T1 = "2026-11-21T09:00:05.000+00:00"
INSERT_RUN = (
    "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend) "
    "VALUES (?, 'manual', ?, ?, ?, 'command')"
)
ENDINGS = ["succeeded", "failed", "timed_out", "interrupted", "succeeded", "failed"]


def _v9_with_history(path: Path) -> None:
    async def build() -> None:
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            assert await migrate(conn, upto=9) == 9

    asyncio.run(build())
    with sqlite3.connect(path, isolation_level=None) as conn:
        # As a later migration 9 might: an index and a trigger of its own on runs.
        conn.execute("CREATE INDEX runs_probe ON runs (loop, status, started_at)")
        conn.execute("CREATE TABLE run_audit (run_id INTEGER, status TEXT)")
        conn.execute("CREATE TRIGGER runs_audit AFTER UPDATE OF status ON runs "
                     "BEGIN INSERT INTO run_audit VALUES (NEW.id, NEW.status); END")  # fmt: skip
        for i, ending in enumerate(ENDINGS):
            run_id = conn.execute(
                "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend, attempts) "
                "VALUES (?, 'schedule', 'running', ?, ?, 'command', 1) RETURNING id",
                (f"loop{i % 2}", T0, T0),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO attempts (run_id, number, backend, started_at, input_tokens, cost_usd) "
                "VALUES (?, 1, 'command', ?, 100, 0.5)",
                (run_id, T0),
            )
            conn.execute("UPDATE attempts SET finished_at = ?, duration_ms = 5000 WHERE run_id = ?", (T1, run_id))
            conn.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", (ending, T1, run_id))
        conn.execute("INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend) "
                     "VALUES ('loop0', 'manual', 'running', ?, ?, 'command')", (T0, T0))  # fmt: skip
        conn.execute("INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend, wait_until) "
                     "VALUES ('loop1', 'manual', 'waiting', ?, ?, 'command', ?)", (T0, T0, T1))  # fmt: skip
        # The newest run was pruned: its id must never be given out again.
        conn.execute(INSERT_RUN, ("gone", "skipped", T0, T0))
        conn.execute("DELETE FROM runs WHERE id = (SELECT max(id) FROM runs)")


def _state(conn: sqlite3.Connection) -> dict[str, Any]:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in conn.execute(sql).fetchall()]

    return {
        "runs": rows("SELECT * FROM runs ORDER BY id"),
        "attempts": rows("SELECT * FROM attempts ORDER BY id"),
        "daily": rows("SELECT * FROM stats_daily ORDER BY 1, 2, 3, 4, 5, 6, 7"),
        "hourly": rows("SELECT * FROM stats_hourly ORDER BY 1, 2, 3, 4, 5, 6, 7"),
        "seq": rows("SELECT seq FROM sqlite_sequence WHERE name = 'runs'"),
        "on_runs": rows("SELECT type, name FROM sqlite_master WHERE tbl_name = 'runs' AND type != 'table' ORDER BY 2"),
        "audit": rows("SELECT count(*) FROM run_audit"),
    }


def test_migration_10_keeps_history_indexes_triggers_and_rollups(tmp_path: Path) -> None:
    path = tmp_path / "v9.db"
    _v9_with_history(path)
    with sqlite3.connect(path) as conn:
        before = _state(conn)
        assert ("index", "runs_probe") in before["on_runs"] and ("trigger", "runs_audit") in before["on_runs"]
        with pytest.raises(sqlite3.IntegrityError):  # v9 refuses the new status
            conn.execute("UPDATE runs SET status = 'cancelled' WHERE status = 'running'")

    async def to_v10() -> int:
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            return await migrate(conn, upto=10)  # later migrations change the runs table in their own ways

    assert asyncio.run(to_v10()) == 10
    with sqlite3.connect(path, isolation_level=None) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 10
        assert _state(conn) == before  # same rows and ids, same rollups, every index and trigger back
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert [r[2] for r in conn.execute("PRAGMA foreign_key_list(attempts)")] == ["runs"]
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'runs_v%'").fetchone()[0] == 0
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT id FROM runs WHERE loop = 'x' AND status = 'failed' "
                            "AND started_at > '2026'").fetchall()  # fmt: skip
        assert any("runs_" in str(step[-1]) for step in plan)  # an index, not a scan

        # The running run is cancelled: it counts as ended (not succeeded), once; triggers still fire.
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("UPDATE runs SET status = 'cancelled', finished_at = ? WHERE status = 'running'", (T1,))
        ended, succeeded = conn.execute("SELECT sum(runs_ended), sum(succeeded) FROM stats_daily").fetchone()
        assert (ended, succeeded) == (len(ENDINGS) + 1, ENDINGS.count("succeeded"))
        assert _state(conn)["audit"] == [(before["audit"][0][0] + 1,)]
        new_id = conn.execute(INSERT_RUN + " RETURNING id", ("x", "running", T0, T0)).fetchone()[0]
        assert new_id == before["seq"][0][0] + 1  # the pruned run's id is not reused
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE runs SET status = 'bogus' WHERE id = ?", (new_id,))


def test_a_fresh_database_accepts_exactly_the_status_vocabulary(tmp_path: Path) -> None:
    """One vocabulary: the records' Literal, the tuples, the table's CHECK and the stats' ended list."""
    assert set(get_args(RunStatus)) == set(STATUSES) and len(STATUSES) == len(set(STATUSES))

    async def fresh() -> None:
        async with aiosqlite.connect(tmp_path / "new.db", isolation_level=None) as conn:
            await migrate(conn)

    asyncio.run(fresh())
    with sqlite3.connect(tmp_path / "new.db", isolation_level=None) as conn:
        for status in (*STATUSES, "bogus"):
            try:
                conn.execute(INSERT_RUN, ("x", status, T0, T0))
            except sqlite3.IntegrityError:
                assert status == "bogus"
            else:
                assert status in STATUSES
        view = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'stats_run_facts'").fetchone()[0]
        ended = view.rsplit("IN (", 1)[1].split(")")[0]
        assert {s.strip(" '") for s in ended.split(",")} == set(ENDED_STATUSES)
