"""Which attempt a run accepted: table-driven."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleetd.records.run import Attempt, Run, accepted_attempt

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _run(status: str) -> Run:
    return Run(id=1, loop="x", trigger="manual", status=status, scheduled_at=T0, started_at=T0,  # type: ignore[arg-type]
               finished_at=T0, exit_code=0, backend="claude_code", profile="p", log_path=None, error=None,
               attempts=3, pid=None, pid_create_time=None)  # fmt: skip


def _attempt(number: int, outcome: str, role: str = "work") -> Attempt:
    return Attempt(id=number, run_id=1, number=number, backend="claude_code", profile="p", model=None,
                   started_at=T0, outcome=outcome, role=role)  # fmt: skip


CASES = {
    "last_succeeded": ("succeeded", [("failed", "work"), ("succeeded", "work")], 2),
    "rejected_then_accepted": ("succeeded", [("succeeded", "work"), ("succeeded", "work")], 2),
    "reviewer_does_not_count": ("succeeded", [("succeeded", "work"), ("succeeded", "review")], 1),
    "failed_run_accepted_nothing": ("failed", [("succeeded", "work")], None),
    "running_run": ("running", [("succeeded", "work")], None),
    "no_attempts": ("succeeded", [], None),
    "nothing_succeeded": ("succeeded", [("failed", "work")], None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_accepted_attempt(name: str) -> None:
    status, attempts, expected = CASES[name]
    found = accepted_attempt(_run(status), [_attempt(i + 1, o, r) for i, (o, r) in enumerate(attempts)])
    assert (found.number if found else None) == expected
