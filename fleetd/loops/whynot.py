"""Why a loop did not fire (`loop show`): one pure decision over the loop, its newest run, the run it has
in progress, and what the API read for it, with the clock passed in. The reason codes are
`records.fire.REASONS`; the executor and scheduler record every fire that started no run as a `skipped`
row with its reason, and this module reads those rows rather than deciding anything again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetd.loops.model import path_fix
from fleetd.records.fire import daily_cost_text
from fleetd.records.loop import Loop
from fleetd.records.run import Run
from fleetd.routing.router import Resolved
from fleetd.timefmt import to_iso


def usable_at_next_run(resolved: list[Resolved], next_fire: datetime | None) -> int:
    """The candidates a run at the next fire could use: usable now, or passed over for a reason that ends by
    itself — a rate limit's reset or a limit's room (the run would wait for it), or an open circuit that closes
    before that fire. `loop show` told a user to add a profile for one only resting until its reset."""
    count = 0
    for _, usable, passed in resolved:
        count += len(usable)
        count += sum(1 for p in passed if p.until is not None or (p.back_at and next_fire and p.back_at <= next_fire))
    return count


@dataclass(frozen=True)
class LoopFacts:
    """What the decision reads, gathered by `Scheduler.not_firing`."""

    loop: Loop
    last_run: Run | None  # the loop's newest run row
    running_id: int | None = None  # its run in progress
    waiting_until: datetime | None = None  # set while that run waits for headroom
    spent_24h: float | None = None  # what it spent in the last 24 h (loops with --daily-cost)
    spend_eases_at: datetime | None = None  # when that is under its --daily-cost again, should it spend no more
    # candidates its next run could use (agent loops, `usable_at_next_run`; None otherwise)
    usable_profiles: int | None = None
    # its --dir or --prompt-file that a run cannot use now: (option, what is wrong), `model.path_problems`'s first
    path_problem: tuple[str, str] | None = None
    run_cost: float | None = None  # what its latest run that cost anything cost (loops with --daily-cost)


@dataclass(frozen=True)
class NotFiring:
    reason: str  # a code of records.fire.REASONS
    message: str
    since: datetime | None = None
    until: datetime | None = None
    run_id: int | None = None  # the skipped row, or the run in the way

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "since": to_iso(self.since),
                "until": to_iso(self.until), "run_id": self.run_id}  # fmt: skip


def why_not(facts: LoopFacts, now: datetime) -> NotFiring | None:
    """Why the loop's last fire did not happen, or why its next one will not; None when it fires as
    planned. The order is what a user must act on first: a pause hides everything else."""
    loop, last = facts.loop, facts.last_run
    if not loop.enabled:
        return NotFiring(
            "paused", "paused: it fires again after `fleetd loop resume`", since=loop.paused_at or loop.updated_at
        )
    if facts.waiting_until is not None and facts.waiting_until > now:
        skipped = last is not None and last.status == "skipped" and last.skip_reason == "waiting"
        text = f"run {facts.running_id} waits for headroom; fires meanwhile are skipped"
        if skipped and last is not None:
            text += f" ({last.skipped_count} so far, run {last.id})"
        return NotFiring(
            "waiting", text, since=last.scheduled_at if skipped and last else None, until=facts.waiting_until,
            run_id=facts.running_id,
        )  # fmt: skip
    if last is not None and last.status == "skipped" and last.skip_reason:
        # The newest fire started no run, and none has since: that row says why, counted.
        # `loop list` counts only the schedule's fires: a `loop run` that was skipped says it was that.
        fire = "`loop run`" if last.trigger == "manual" else "fire"
        text = f"its last {fire} was skipped: {last.error}" if last.error else f"its last {fire} was skipped"
        if last.skip_reason in ("overlap", "waiting") and facts.running_id is None:
            text += " (it has ended since)"  # the row's "still running" was so then, not now
        until = facts.spend_eases_at if last.skip_reason == "over_daily_cost" else None
        if last.skip_reason == "over_daily_cost":
            # The row's cap was so then: one raised or cleared since lets the next fire run.
            if loop.daily_cost is None:
                text += " (not so now: its --daily-cost was cleared, its next fire runs)"
                until = None
            elif facts.spent_24h is not None and daily_cost_text(facts.spent_24h, loop.daily_cost,
                                                                 facts.run_cost) is None:  # fmt: skip
                text += " (not so now: within its --daily-cost, its next fire runs)"
                until = None
        return NotFiring(last.skip_reason, text, since=last.scheduled_at, until=until, run_id=last.id)
    if loop.next_fire_at is None:
        if loop.schedule.kind == "at":
            # The newest run may be a later `loop run`: name the fire, not that run.
            done = "already fired" if loop.last_fire_at is not None else "is in the past"
            return NotFiring("at_past", f"one-shot --at {loop.schedule.expr} {done}", since=loop.last_fire_at)
        return NotFiring("no_next_fire", f"the schedule {loop.schedule.describe()} has no fire left")
    if loop.daily_cost is not None and facts.spent_24h is not None:
        over = daily_cost_text(facts.spent_24h, loop.daily_cost, facts.run_cost)
        if over is not None:
            return NotFiring("over_daily_cost", f"its next fire will be skipped: {over}", until=facts.spend_eases_at)
    if facts.path_problem is not None:
        option, problem = facts.path_problem
        return NotFiring("unusable_path", f"its runs fail at once: {problem} ({path_fix(loop.name, option)})")
    if facts.usable_profiles == 0:
        return NotFiring(
            "no_profile",
            "no usable profile for its chain: its next run would find no candidate (the steps below say why "
            "each was passed over; one disabled or parked comes back with `fleetd profile enable NAME` once its "
            f"cause is fixed (`fleetd doctor` names them); `fleetd profile add NAME --backend {loop.backend}` adds "
            "another)",
        )
    return None
