"""Why a loop did not fire: the reason codes, said once. The executor and the scheduler record a fire
that started no run as a `skipped` run with one of the skip reasons; `loops/whynot.py` explains a loop
with these codes and the few that are not about one fire (paused, a one-shot in the past, no profile).
The README's "Why a loop did not fire" table is this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from fleetd.records.money import cap_room_at, cap_taken, reaches, usd, usd_apart
from fleetd.timefmt import local_text

SkipReason = Literal["overlap", "waiting", "over_daily_cost", "shutting_down", "daemon_down", "woke_late"]

# Fires that fell while fleetd could not fire them (recorded as `loop.fire_missed`); the other skip
# reasons are fires that came due and were not run (`loop.fire_skipped`).
MISSED_REASONS: tuple[SkipReason, ...] = ("daemon_down", "woke_late")

REASONS: dict[str, str] = {
    "paused": "the loop is paused (`fleetd loop resume NAME`)",
    "at_past": "a one-shot `--at` loop whose time has passed: it fired, or it was missed",
    "no_next_fire": "the schedule has no fire left",
    "overlap": "the previous run was still running (a loop never overlaps itself)",
    "waiting": "the previous run waits for headroom; fires meanwhile are skipped, one row with a count",
    "over_daily_cost": "the loop spent its `--daily-cost` in the last 24 h",
    "shutting_down": "the daemon was stopping",
    "daemon_down": "fires fell while the daemon was down and `--catch-up skip` does not run them",
    "woke_late": "the timer woke late (host suspended, clock changed) and `--catch-up skip` does not run them",
    "no_profile": "an agent loop with no usable profile: its next run would find no candidate",
    "unusable_path": "its --dir or --prompt-file is gone (or unreadable) since it was saved: each run fails at once",
}
SKIP_REASONS: tuple[SkipReason, ...] = ("overlap", "waiting", "over_daily_cost", "shutting_down", *MISSED_REASONS)

# Counting missed fires stops here: an `--every 1s` loop down for a week is "1000+", not a long loop.
MISSED_CAP = 1000


def skip_text(reason: SkipReason, count: int, blocking_run: int | None, until: datetime | None = None) -> str:
    """A skipped run's `error`: why, and how many fires the row stands for when it is more than one."""
    if reason == "overlap":
        text = f"previous run {blocking_run or '(starting)'} still running"
        return text if count == 1 else f"{text} ({count} fires skipped)"
    if reason == "waiting":
        when = f" until {local_text(until)}" if until else ""  # as every message says a time
        text = f"previous run {blocking_run} waits for headroom{when}"
        return text if count == 1 else f"{text} ({count} fires skipped)"
    if reason in MISSED_REASONS:
        many = f"{count}+" if count >= MISSED_CAP else str(count)
        fires = "1 fire" if count == 1 else f"{many} fires"
        where = "while the daemon was down" if reason == "daemon_down" else "while the timer slept (host suspended?)"
        return f"missed {fires} {where}; not run: --catch-up skip"
    if reason == "shutting_down":
        return "daemon is shutting down"
    raise ValueError(f"no text for skip reason {reason!r}")  # over_daily_cost: daily_cost_text


def daily_cost_eases(
    costs: Sequence[tuple[datetime, float]], daily_cost: float, run_cost: float | None = None
) -> datetime | None:
    """When a loop over its --daily-cost is under it again (with room for a run at `run_cost`), should it spend nothing
    more: 24 h after the cost (of `costs`, its last 24 h's, oldest first) whose leaving the window makes that room.
    None: there is room already."""
    return cap_room_at(costs, daily_cost, run_cost)


def daily_cost_text(spent: float, daily_cost: float, run_cost: float | None = None) -> str | None:
    """`budget: …` when the loop has spent its --daily-cost, or a run at `run_cost` (what its latest one cost) would
    pass it (the one place that decides it), else None. A run over the cap alone is let in when nothing is spent."""
    if not cap_taken(spent, daily_cost, run_cost):
        return None
    shown, cap = usd_apart(spent, daily_cost)
    if reaches(spent, daily_cost) or run_cost is None:
        return f"budget: the loop spent {shown} of its {cap} daily cost in the last 24 h"
    return (f"budget: the loop spent {shown} of its {cap} daily cost in the last 24 h, and a run of it costs about "
            f"{usd(run_cost)}")  # fmt: skip
