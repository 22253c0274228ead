"""A run (one fire of a loop) and its attempts (one execution each, by one backend under one profile)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

# The vocabulary lives in its own leaf (the CLI reads it too); re-exported here, where runs are.
from fleetd.records.status import ACTIVE_STATUSES, ENDED_STATUSES, FINAL_STATUSES, STATUSES, RunStatus

__all__ = ["ACTIVE_STATUSES", "ENDED_STATUSES", "FINAL_STATUSES", "STATUSES", "Attempt", "LoopFire", "Run",
           "RunStatus", "accepted_attempt"]  # fmt: skip


@dataclass
class LoopFire:
    """A scheduled fire, recorded in the same transaction as its run row, so a crash cannot leave
    the loop's next fire time and its run history disagreeing.

    `due` is the loop's stored next_fire_at the fire was planned from: the transaction moves it on
    only if it still holds that value, so a fire retried after an error, or raced by a pause or a
    schedule change, is recorded at most once."""

    loop: str
    last_fire_at: datetime
    next_fire_at: datetime | None
    due: datetime | None


@dataclass
class Run:
    id: int
    loop: str
    trigger: str
    status: RunStatus
    scheduled_at: datetime
    started_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    backend: str
    profile: str
    log_path: str | None
    error: str | None
    attempts: int
    pid: int | None
    pid_create_time: float | None
    wait_until: datetime | None = None
    # A `skipped` run: why (records.fire.SKIP_REASONS), and how many fires the row stands for (fires skipped
    # against the same run in progress for the same reason share one row; missed fires are counted).
    skip_reason: str | None = None
    skipped_count: int = 0


@dataclass
class Attempt:
    id: int
    run_id: int
    number: int
    backend: str
    profile: str
    model: str | None
    started_at: datetime
    finished_at: datetime | None = None
    exit_code: int | None = None
    outcome: str | None = None
    error_class: str | None = None
    error: str | None = None
    reset_at: datetime | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    session_id: str | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)
    step: int = 1  # the loop's chain step it came from, from 1
    role: str = "work"
    duration_ms: int | None = None
    verify_exit: int | None = None  # the acceptance gate's verify command, where the loop has one
    verify_ms: int | None = None
    accepted: bool | None = None  # None: no gate judged it
    findings: str | None = None  # why the gate rejected it
    result_text: str | None = None  # the agent's final message (ParsedOutput.final_text), scrubbed and capped


def accepted_attempt(run: Run, attempts: list[Attempt]) -> Attempt | None:
    """The attempt whose work the run accepted: the last one that succeeded, of a run that succeeded.

    Reviewer attempts (role `review`) judge work rather than do it, so they never count. A run that did not
    succeed accepted nothing, whatever its attempts said; an attempt the gate rejected (`accepted` False)
    never counts.
    """
    if run.status != "succeeded":
        return None
    done = [a for a in attempts if a.outcome == "succeeded" and a.role != "review" and a.accepted is not False]
    return max(done, key=lambda a: a.number) if done else None


@dataclass
class Pruned:
    """What one prune freed. `log_bytes` is the run logs' size; the database reuses the space of its
    deleted rows for new ones rather than shrinking the file."""

    runs: int = 0
    attempts: int = 0
    events: int = 0
    gateway_calls: int = 0  # with their logged bodies (a route's --log-bodies)
    log_files: int = 0
    log_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
