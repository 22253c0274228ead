"""Why a loop did not fire: the pure decision, table-driven, with the clock passed in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from fleetd.loops.whynot import LoopFacts, usable_at_next_run, why_not
from fleetd.records.fire import daily_cost_eases, daily_cost_text
from fleetd.records.loop import Loop, Schedule
from fleetd.records.run import Run

NOW = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
M = timedelta(minutes=1)
LOOP = Loop("nightly", Schedule("every", "10m", "UTC"), "command", command="true", created_at=NOW - 60 * M,
            updated_at=NOW - 60 * M, next_fire_at=NOW + 5 * M, last_fire_at=NOW - 5 * M)  # fmt: skip


def run(id_: int, status: str = "succeeded", **kw: object) -> Run:
    fields: dict[str, object] = dict(
        id=id_, loop="nightly", trigger="schedule", status=status, scheduled_at=NOW - 5 * M, started_at=NOW - 5 * M,
        finished_at=NOW - 4 * M, exit_code=0, backend="command", profile="", log_path=None, error=None, attempts=1,
        pid=None, pid_create_time=None,
    )  # fmt: skip
    fields.update(kw)
    return Run(**fields)  # type: ignore[arg-type]


def skipped(id_: int, reason: str, error: str, count: int = 1) -> Run:
    return run(id_, "skipped", skip_reason=reason, error=error, skipped_count=count, attempts=0, exit_code=None)


UNTIL = NOW + 30 * M
CASES = [
    # (what, facts, reason, message contains, since, until, run_id)
    ("fires as planned", LoopFacts(LOOP, run(3)), None, "", None, None, None),
    ("never ran yet", LoopFacts(LOOP, None), None, "", None, None, None),
    (
        "paused",
        LoopFacts(replace(LOOP, enabled=False, next_fire_at=None, updated_at=NOW - 2 * M), run(3)),
        "paused",
        "fleetd loop resume",
        NOW - 2 * M,
        None,
        None,
    ),
    (
        "paused wins over a skipped fire",
        LoopFacts(replace(LOOP, enabled=False), skipped(4, "overlap", "previous run 3 still running")),
        "paused",
        "paused",
        LOOP.updated_at,
        None,
        None,
    ),
    (
        "one-shot that fired",
        LoopFacts(replace(LOOP, schedule=Schedule("at", "2026-03-02T08:00", "UTC"), next_fire_at=None), run(3)),
        "at_past",
        "--at 2026-03-02T08:00 already fired",
        LOOP.last_fire_at,
        None,
        None,
    ),
    (
        "one-shot that fired, then run by hand: the fire, not the later run",
        LoopFacts(
            replace(LOOP, schedule=Schedule("at", "2026-03-02T08:00", "UTC"), next_fire_at=None),
            run(9, trigger="manual"),
        ),
        "at_past",
        "--at 2026-03-02T08:00 already fired",
        LOOP.last_fire_at,
        None,
        None,
    ),
    (
        "one-shot in the past, never run",
        LoopFacts(
            replace(LOOP, schedule=Schedule("at", "2026-03-01T08:00", "UTC"), next_fire_at=None, last_fire_at=None),
            None,
        ),
        "at_past",
        "is in the past",
        None,
        None,
        None,
    ),
    (
        "one-shot missed while down under --catch-up skip",
        LoopFacts(
            replace(LOOP, schedule=Schedule("at", "2026-03-02T08:00", "UTC"), next_fire_at=None),
            skipped(5, "daemon_down", "missed 1 fire while the daemon was down; not run: --catch-up skip"),
        ),
        "daemon_down",
        "while the daemon was down",
        NOW - 5 * M,
        None,
        5,
    ),
    (
        "previous run still running",
        LoopFacts(LOOP, skipped(4, "overlap", "previous run 3 still running (3 fires skipped)", 3), running_id=3),
        "overlap",
        "previous run 3 still running (3 fires skipped)",
        NOW - 5 * M,
        None,
        4,
    ),
    (
        "a skipped `loop run` says it was one (`loop list`'s last fire counts the schedule's fires only)",
        LoopFacts(
            LOOP,
            run(
                4,
                "skipped",
                skip_reason="overlap",
                error="previous run 3 still running",
                skipped_count=1,
                attempts=0,
                exit_code=None,
                trigger="manual",
            ),
        ),
        "overlap",
        "its last `loop run` was skipped: previous run 3 still running (it has ended since)",
        NOW - 5 * M,
        None,
        4,
    ),
    (
        "the last fire was skipped and the run in the way has ended: still the answer until a run starts",
        LoopFacts(LOOP, skipped(4, "overlap", "previous run 3 still running")),
        "overlap",
        "its last fire was skipped: previous run 3 still running (it has ended since)",
        NOW - 5 * M,
        None,
        4,
    ),
    (
        "skipped by the catch-up policy after a late wake",
        LoopFacts(LOOP, skipped(6, "woke_late", "missed 4 fires while the timer slept; not run: --catch-up skip", 4)),
        "woke_late",
        "missed 4 fires",
        NOW - 5 * M,
        None,
        6,
    ),
    (
        "a run waits for headroom, nothing skipped yet",
        LoopFacts(LOOP, run(7, "waiting", finished_at=None, wait_until=UNTIL), running_id=7, waiting_until=UNTIL),
        "waiting",
        "run 7 waits for headroom",
        None,
        UNTIL,
        7,
    ),
    (
        "a run waits for headroom, fires skipped into one row",
        LoopFacts(
            LOOP,
            skipped(8, "waiting", "previous run 7 waits for headroom (60 fires skipped)", 60),
            running_id=7,
            waiting_until=UNTIL,
        ),
        "waiting",
        "(60 so far, run 8)",
        NOW - 5 * M,
        UNTIL,
        7,
    ),
    (
        "a wait whose reset has passed is not a reason",
        LoopFacts(LOOP, run(7, "running", finished_at=None), running_id=7, waiting_until=NOW - M),
        None,
        "",
        None,
        None,
        None,
    ),
    (
        "over its daily cost: the next fire will be skipped, until its spend eases",
        LoopFacts(replace(LOOP, daily_cost=1.0), run(3), spent_24h=1.25, spend_eases_at=NOW + 90 * M),
        "over_daily_cost",
        "spent $1.25 of its $1.00 daily cost",
        None,
        NOW + 90 * M,
        None,
    ),
    (
        "under its daily cost",
        LoopFacts(replace(LOOP, daily_cost=1.0), run(3), spent_24h=0.5),
        None,
        "",
        None,
        None,
        None,
    ),
    (
        "a fire skipped over the daily cost",
        LoopFacts(
            replace(LOOP, daily_cost=1.0),
            skipped(9, "over_daily_cost", "budget: the loop spent $1.25 …"),
            spent_24h=1.25,
            spend_eases_at=NOW + 90 * M,
        ),
        "over_daily_cost",
        "its last fire was skipped: budget:",
        NOW - 5 * M,
        NOW + 90 * M,  # `loop show` said nothing of when it fires again
        9,
    ),
    (
        # The skip is history once the loop's cap was raised or cleared: it read as if the next fire would be skipped.
        "a fire skipped over a daily cost raised since",
        LoopFacts(replace(LOOP, daily_cost=10.0), skipped(9, "over_daily_cost", "budget: …"), spent_24h=1.25),
        "over_daily_cost",
        "its last fire was skipped: budget: … (not so now: within its --daily-cost, its next fire runs)",
        NOW - 5 * M,
        None,
        9,
    ),
    (
        "a fire skipped over a daily cost cleared since",
        LoopFacts(LOOP, skipped(9, "over_daily_cost", "budget: …")),
        "over_daily_cost",
        "its last fire was skipped: budget: … (not so now: its --daily-cost was cleared, its next fire runs)",
        NOW - 5 * M,
        None,
        9,
    ),
    (
        "an agent loop with no usable profile",
        LoopFacts(replace(LOOP, backend="some_agent", command=None, prompt="x"), None, usable_profiles=0),
        "no_profile",
        "--backend some_agent",
        None,
        None,
        None,
    ),
    ("an agent loop with a usable profile", LoopFacts(LOOP, None, usable_profiles=2), None, "", None, None, None),
    (
        "a loop whose --dir is gone",
        LoopFacts(LOOP, run(3, "failed"), path_problem=("--dir", "directory not found: /src/app")),
        "unusable_path",
        "its runs fail at once: directory not found: /src/app (`fleetd loop edit nightly --dir DIR`)",
        None,
        None,
        None,
    ),
    (
        "a paused loop whose prompt file is gone: the pause first",
        LoopFacts(replace(LOOP, enabled=False), None, path_problem=("--prompt-file", "prompt file not found: /p")),
        "paused",
        "paused",
        NOW - 60 * M,
        None,
        None,
    ),
]


@pytest.mark.parametrize(("what", "facts", "reason", "text", "since", "until", "run_id"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_why_not(
    what: str, facts: LoopFacts, reason: str | None, text: str, since: datetime | None, until: datetime | None,
    run_id: int | None,
) -> None:  # fmt: skip
    answer = why_not(facts, NOW)
    if reason is None:
        assert answer is None
        return
    assert answer is not None
    assert (answer.reason, answer.since, answer.until, answer.run_id) == (reason, since, until, run_id)
    assert text in answer.message


def test_a_skip_against_a_run_still_in_progress_does_not_say_it_ended() -> None:
    facts = LoopFacts(LOOP, skipped(4, "overlap", "previous run 3 still running"), running_id=3)
    answer = why_not(facts, NOW)
    assert answer is not None and answer.message == "its last fire was skipped: previous run 3 still running"


def test_its_json_is_stable() -> None:
    answer = why_not(LoopFacts(replace(LOOP, enabled=False), None), NOW)
    assert answer is not None
    assert answer.to_json() == {"reason": "paused", "message": answer.message, "since": "2026-03-02T08:00:00.000+00:00",
                                "until": None, "run_id": None}  # fmt: skip


def test_a_loop_over_its_daily_cost_is_under_it_again_as_enough_of_its_oldest_costs_leave_the_window() -> None:
    costs = [(NOW - 20 * 60 * M, 0.5), (NOW - 10 * 60 * M, 0.25), (NOW - 60 * M, 0.5)]  # $1.25 of $1.00
    assert daily_cost_eases(costs, 1.0) == NOW - 20 * 60 * M + 24 * 60 * M  # the first leaving: $0.75
    assert daily_cost_eases(costs, 0.6) == NOW - 10 * 60 * M + 24 * 60 * M  # $0.75, then $0.50
    assert daily_cost_eases(costs, 0.5) == NOW - 60 * M + 24 * 60 * M  # at $0.50 of $0.50 still spent: all must leave
    assert daily_cost_eases(costs, 2.0) is None  # under it
    assert daily_cost_eases([], 1.0) is None


def test_a_candidate_resting_until_a_reset_counts_for_the_next_run() -> None:
    """`loop show` said "no usable profile … `fleetd profile add` adds another" for a chain whose one profile was
    only exhausted until its reset (the run would wait for it), or whose circuit closes before the next fire."""
    from fleetd.records.loop import ChainStep
    from fleetd.routing.router import Passed

    step = ChainStep("codex", ("c1",))
    nxt = NOW + 60 * M
    resting = [(step, [], [Passed(0, "c1", "exhausted until …", NOW + 10 * M, back_at=NOW + 10 * M)])]
    assert usable_at_next_run(resting, nxt) == 1  # type: ignore[arg-type]
    circuit = [(step, [], [Passed(0, "c1", "circuit open until …", back_at=NOW + 2 * M)])]
    assert usable_at_next_run(circuit, nxt) == 1  # type: ignore[arg-type]
    assert usable_at_next_run(circuit, NOW + M) == 0  # type: ignore[arg-type]
    disabled = [(step, [], [Passed(0, "c1", "disabled by hand")])]
    assert usable_at_next_run(disabled, nxt) == 0  # type: ignore[arg-type]


def test_a_loop_whose_next_run_would_pass_its_daily_cost_is_over_it_until_room_for_that_run() -> None:
    costs = [(NOW - 20 * 60 * M, 0.5), (NOW - 60 * M, 0.25)]  # $0.75 of $1.00, and a run costs about $0.5
    assert daily_cost_text(0.75, 1.0) is None
    assert daily_cost_text(0.75, 1.0, 0.5) == (
        "budget: the loop spent $0.75 of its $1.00 daily cost in the last 24 h, and a run of it costs about $0.50"
    )
    assert daily_cost_text(0.5, 1.0, 0.5) is None  # it fits, just
    assert daily_cost_eases(costs, 1.0, 0.5) == NOW - 20 * 60 * M + 24 * 60 * M  # $0.25 left: room for $0.50
    assert daily_cost_text(0.0, 1.0, 3.0) is None  # a run over the cap alone: let in when nothing is spent
