"""Each attempt's final message is stored (capped) and read back with the attempt."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetd.records.result import ParsedOutput
from fleetd.store.attempts import RESULT_TEXT_CAP, AttemptStore
from fleetd.store.db import Database
from fleetd.store.runs import RunStore

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def _finish_one(tmp_path: Path, final_text: str | None) -> str | None:
    db = await Database.open(tmp_path / "f.db")
    try:
        runs, attempts = RunStore(db), AttemptStore(db)
        run = await runs.insert(loop="x", trigger="manual", status="running", scheduled_at=T0, started_at=T0,
                                backend="claude_code")  # fmt: skip
        assert run is not None
        attempt_id = await attempts.start(run_id=run.id, number=1, backend="claude_code", profile="p", model=None,
                                          started_at=T0)  # fmt: skip
        await attempts.finish(attempt_id, finished_at=T0 + timedelta(seconds=1), exit_code=0,
                              parsed=ParsedOutput("succeeded", final_text=final_text), error=None,
                              cost_usd=None)  # fmt: skip
        (attempt,) = await attempts.for_run(run.id)
        return attempt.result_text
    finally:
        await db.close()


@pytest.mark.parametrize("text", ["Fixed the flaky test; `pytest -q` passes.", "ünïcode ✓\nsecond line", None])
def test_final_text_round_trips(tmp_path: Path, text: str | None) -> None:
    assert asyncio.run(_finish_one(tmp_path, text)) == text


def test_empty_final_text_is_stored_as_none(tmp_path: Path) -> None:
    assert asyncio.run(_finish_one(tmp_path, "")) is None


def test_a_runaway_final_text_is_capped_with_a_mark(tmp_path: Path) -> None:
    stored = asyncio.run(_finish_one(tmp_path, "a" * (RESULT_TEXT_CAP * 3)))
    assert stored is not None and len(stored) == RESULT_TEXT_CAP
    assert stored.startswith("aaaa") and stored.endswith(f"cut: {RESULT_TEXT_CAP * 2} more characters")
