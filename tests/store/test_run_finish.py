"""A run's end carries its last attempt's end: one write transaction instead of two, and the attempt's
failure never costs the run its end (as when the two were written apart)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleetd.records.result import ParsedOutput
from fleetd.store.attempts import AttemptStore, finish_write
from fleetd.store.db import Database
from fleetd.store.runs import RunStore

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


class CountingRuns(RunStore):
    """Counts the write transactions a run's end takes."""

    writes = 0

    async def finish(self, run_id: int, **kwargs: Any) -> None:
        original = self.db.write

        async def counted(fn: Any) -> Any:
            self.writes += 1
            return await original(fn)

        self.db.write = counted  # type: ignore[method-assign]
        try:
            await super().finish(run_id, **kwargs)
        finally:
            self.db.write = original  # type: ignore[method-assign]


def _run_and_attempt(tmp_path: Path, attempt_end: Any) -> tuple[Any, Any, int]:
    async def go() -> tuple[Any, Any, int]:
        db = await Database.open(tmp_path / "f.db")
        try:
            runs, attempts = CountingRuns(db), AttemptStore(db)
            run = await runs.insert(loop="l", trigger="manual", status="running", scheduled_at=T0, started_at=T0,
                                    backend="command")  # fmt: skip
            assert run is not None
            attempt_id = await attempts.start(run_id=run.id, number=1, backend="command", profile="", model=None,
                                              started_at=T0, pid=123)  # fmt: skip
            await runs.finish(run.id, status="succeeded", finished_at=T0 + timedelta(seconds=2), exit_code=0,
                              attempt_end=attempt_end(attempt_id))  # fmt: skip
            return await runs.get(run.id), (await attempts.for_run(run.id))[0], runs.writes
        finally:
            await db.close()

    return asyncio.run(go())


def test_the_last_attempts_end_is_written_with_the_runs_end(tmp_path: Path) -> None:
    def end(attempt_id: int) -> Any:
        return finish_write(attempt_id, finished_at=T0 + timedelta(seconds=1.5), exit_code=0,
                            parsed=ParsedOutput("succeeded"), error=None, cost_usd=None)  # fmt: skip

    run, attempt, writes = _run_and_attempt(tmp_path, end)
    assert (run.status, run.exit_code) == ("succeeded", 0)
    assert (attempt.outcome, attempt.exit_code, attempt.duration_ms) == ("succeeded", 0, 1500)
    assert attempt.finished_at == T0 + timedelta(seconds=1.5)
    assert writes == 1


def test_an_attempt_end_that_fails_leaves_the_runs_end_written(tmp_path: Path) -> None:
    def end(attempt_id: int) -> Any:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE attempts SET outcome = 'succeeded' WHERE id = ?", (attempt_id,))
            conn.execute("UPDATE no_such_table SET x = 1")  # fails after a statement went through

        return write

    run, attempt, _ = _run_and_attempt(tmp_path, end)
    assert run.status == "succeeded"
    assert attempt.outcome is None and attempt.finished_at is None  # rolled back alone


def test_only_a_waiting_run_interrupted_keeps_the_reset_it_waited_for(tmp_path: Path) -> None:
    """The marker the next start reads to run such a run's loop once more (`Scheduler._cut_while_waiting`)."""

    async def go() -> dict[str, datetime | None]:
        db = await Database.open(tmp_path / "f.db")
        try:
            runs, kept = RunStore(db), {}
            until = T0 + timedelta(hours=1)
            for name, waiting, status in [("cut", True, "interrupted"), ("stopped", True, "cancelled"),
                                          ("timed", True, "timed_out"), ("ran", False, "interrupted")]:  # fmt: skip
                run = await runs.insert(loop=name, trigger="manual", status="running", scheduled_at=T0,
                                        started_at=T0, backend="command")  # fmt: skip
                assert run is not None
                await runs.set_waiting(run.id, until)
                if not waiting:
                    await runs.set_waiting(run.id, None)  # it waited, then ran on
                await runs.finish(run.id, status=status, finished_at=T0 + timedelta(minutes=1))  # type: ignore[arg-type]
                kept[name] = (await runs.get(run.id)).wait_until
            return kept
        finally:
            await db.close()

    assert asyncio.run(go()) == {"cut": T0 + timedelta(hours=1), "stopped": None, "timed": None, "ran": None}
