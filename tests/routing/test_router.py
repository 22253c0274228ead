"""The router, driven like the executor drives it, with an injected clock and seed: every failure
class at every chain position, tiers, budgets, waits and the route it records."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from fleetd.records.loop import ChainStep
from fleetd.routing.router import (
    AttemptResult,
    Backoff,
    Finish,
    Observation,
    Passed,
    Policy,
    ProfileView,
    Router,
    Try,
    WaitUntil,
    World,
    backoff_delay,
    expand,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OK = AttemptResult("succeeded", cost_usd=0.5, tokens=1000)


def fail(error_class: str, cost: float = 0.0, tokens: int = 0, reset_at: datetime | None = None) -> AttemptResult:
    return AttemptResult("failed", error_class, f"{error_class} (test)", cost, tokens, reset_at)


PROFILES = {
    "qwen": ProfileView("qwen", "openai_compat", "local"),
    "cc-a": ProfileView("cc-a", "claude_code", "subscription"),
    "cc-b": ProfileView("cc-b", "claude_code", "subscription"),
    "cc-api": ProfileView("cc-api", "claude_code", "metered"),
    "codex": ProfileView("codex", "codex", "subscription"),
}
CHAIN = (ChainStep("openai_compat", ("qwen",)), ChainStep("claude_code", (), "sonnet"), ChainStep("codex"))


class Drive:
    """Plays the executor: performs each decision, answers attempts from `answers` by profile (each
    call pops the next answer; the last one repeats), and lets `on_result` change the world."""

    def __init__(
        self,
        policy: Policy,
        answers: dict[str, list[AttemptResult]],
        profiles: dict[str, ProfileView] = PROFILES,
        on_result: Callable[[dict[str, ProfileView], str, AttemptResult, datetime], None] | None = None,
    ) -> None:
        self.router = Router(policy, random.Random(7))
        self.answers = {k: list(v) for k, v in answers.items()}
        self.profiles = dict(profiles)
        self.now = T0
        self.on_result = on_result or heartbeat_like
        self.tried: list[str] = []
        self.decisions: list[object] = []

    def world(self) -> World:
        return World(self.now, dict(self.profiles))

    def run(self) -> Finish:
        flow = self.router.route(self.world())
        decision = next(flow)
        while True:
            self.decisions.append(decision)
            if isinstance(decision, Finish):
                return decision
            if isinstance(decision, Try):
                name = decision.candidate.profile
                self.tried.append(f"{name}@{decision.candidate.model}" if decision.candidate.model else name)
                queue = self.answers[name]
                result = queue.pop(0) if len(queue) > 1 else queue[0]
                self.now += timedelta(seconds=1)
                self.on_result(self.profiles, name, result, self.now)
                decision = flow.send(Observation(self.world(), result))
            elif isinstance(decision, Backoff):
                self.now += timedelta(seconds=decision.seconds)
                decision = flow.send(Observation(self.world()))
            elif isinstance(decision, WaitUntil):
                assert decision.until > self.now, "a wait must be for a time to come"
                self.now = decision.until
                decision = flow.send(Observation(self.world()))
            assert len(self.decisions) < 200, "the router must end"


def heartbeat_like(profiles: dict[str, ProfileView], name: str, result: AttemptResult, now: datetime) -> None:
    """What the heartbeat does with an attempt's class: exhausted, parked, disabled."""
    view = profiles[name]
    if result.error_class == "rate_limited":
        profiles[name] = replace(view, state="exhausted", until=result.reset_at or now + timedelta(minutes=1))
    elif result.error_class == "quota":
        profiles[name] = replace(view, state="parked")
    elif result.error_class == "auth":
        profiles[name] = replace(view, state="disabled")
    elif result.outcome == "succeeded" and view.state == "exhausted":
        profiles[name] = replace(view, state="available", until=None)


# -- each failure class at each position of the chain ---------------------------------------------------------

CASES = [
    # (answers, expected order of attempts, expected finish)
    ({"qwen": [OK]}, ["qwen"], "succeeded"),
    ({"qwen": [fail("transient"), OK]}, ["qwen", "qwen"], "succeeded"),
    ({"qwen": [fail("transient")], "cc-a": [OK]}, ["qwen", "qwen", "qwen", "cc-a@sonnet"], "succeeded"),
    ({"qwen": [fail("rate_limited")], "cc-a": [OK]}, ["qwen", "cc-a@sonnet"], "succeeded"),
    ({"qwen": [fail("quota")], "cc-a": [OK]}, ["qwen", "cc-a@sonnet"], "succeeded"),
    ({"qwen": [fail("auth")], "cc-a": [OK]}, ["qwen", "cc-a@sonnet"], "succeeded"),
    ({"qwen": [fail("unavailable")], "cc-a": [OK]}, ["qwen", "cc-a@sonnet"], "succeeded"),
    ({"qwen": [fail("capability")], "cc-a": [OK]}, ["qwen", "cc-a@sonnet"], "succeeded"),
    ({"qwen": [fail("contract")], "cc-a": [OK]}, ["qwen"], "failed"),
    ({"qwen": [fail("unknown")], "cc-a": [OK]}, ["qwen"], "failed"),
    # second step: the next profile of the same step before the next step
    ({"qwen": [fail("auth")], "cc-a": [fail("rate_limited")], "cc-b": [OK]},
     ["qwen", "cc-a@sonnet", "cc-b@sonnet"], "succeeded"),
    ({"qwen": [fail("auth")], "cc-a": [fail("auth")], "cc-b": [fail("quota")], "codex": [OK]},
     ["qwen", "cc-a@sonnet", "cc-b@sonnet", "codex"], "succeeded"),
    # a capability shortfall skips the rest of its step
    ({"qwen": [fail("auth")], "cc-a": [fail("capability")], "cc-b": [OK], "codex": [OK]},
     ["qwen", "cc-a@sonnet", "codex"], "succeeded"),
    # last step: contract stops at once; everything out → failed with the reasons
    ({"qwen": [fail("auth")], "cc-a": [fail("auth")], "cc-b": [fail("auth")], "codex": [fail("contract")]},
     ["qwen", "cc-a@sonnet", "cc-b@sonnet", "codex"], "failed"),
    ({"qwen": [fail("auth")], "cc-a": [fail("auth")], "cc-b": [fail("auth")], "codex": [fail("quota")]},
     ["qwen", "cc-a@sonnet", "cc-b@sonnet", "codex"], "failed"),
]  # fmt: skip


@pytest.mark.parametrize(("answers", "order", "status"), CASES)
def test_each_failure_class_has_its_action(answers: dict, order: list[str], status: str) -> None:
    drive = Drive(Policy(CHAIN), answers)
    assert drive.run().status == status
    assert drive.tried == order


def test_the_metered_profile_is_never_expanded_under_default_tiers_but_named_it_is_used() -> None:
    everyone_out = {"qwen": [fail("auth")], "cc-a": [fail("auth")], "cc-b": [fail("auth")], "codex": [fail("auth")],
                    "cc-api": [OK]}  # fmt: skip
    drive = Drive(Policy(CHAIN), everyone_out)
    finish = drive.run()
    assert finish.status == "failed" and "cc-api" not in drive.tried
    assert "tier metered not allowed" in finish.reason
    assert any(e["kind"] == "skip" and e["profile"] == "cc-api" for e in drive.router.trail)
    drive = Drive(Policy(CHAIN, tiers=frozenset({"local", "subscription", "metered"})), everyone_out)
    assert drive.run().status == "succeeded" and drive.tried[-1] == "cc-api@sonnet"
    named = (*CHAIN, ChainStep("claude_code", ("cc-api",)))
    drive = Drive(Policy(named), everyone_out)
    assert drive.run().status == "succeeded" and drive.tried[-1] == "cc-api"


def test_when_nothing_has_headroom_the_run_waits_for_the_earliest_reset_then_starts_at_the_cheapest() -> None:
    soon, later = T0 + timedelta(minutes=5), T0 + timedelta(minutes=30)
    answers = {
        "qwen": [fail("rate_limited", reset_at=soon), OK],
        "cc-a": [fail("rate_limited", reset_at=later)],
        "cc-b": [fail("rate_limited", reset_at=later)],
        "codex": [fail("rate_limited", reset_at=later)],
    }
    drive = Drive(Policy(CHAIN), answers)
    assert drive.run().status == "succeeded"
    waits = [d for d in drive.decisions if isinstance(d, WaitUntil)]
    assert [w.until for w in waits] == [soon]
    assert drive.tried == ["qwen", "cc-a@sonnet", "cc-b@sonnet", "codex", "qwen"]


def test_on_exhausted_wait_waits_for_the_step_instead_of_escalating() -> None:
    soon = T0 + timedelta(minutes=5)
    answers = {"qwen": [fail("rate_limited", reset_at=soon), OK], "cc-a": [OK]}
    drive = Drive(Policy(CHAIN, on_exhausted="wait"), answers)
    assert drive.run().status == "succeeded"
    assert drive.tried == ["qwen", "qwen"]
    assert [d.until for d in drive.decisions if isinstance(d, WaitUntil)] == [soon]
    # It said "nothing allowed has headroom" while the next step had room.
    [wait] = [e["detail"] for e in drive.router.trail if e["kind"] == "wait"]
    assert wait.startswith("step 1 has no headroom (--on-exhausted wait): waiting until "), wait


def test_a_run_over_budget_after_its_last_rejection_says_both() -> None:
    """The budget's stop came first and hid why the work failed: rejected, with no step left to take it."""
    chain = (ChainStep("openai_compat", ("qwen",)),)
    drive = Drive(Policy(chain, max_cost=1.0), {"qwen": [fail("capability", cost=1.2)]})
    finish = drive.run()
    assert finish.status == "failed" and finish.error_class == "capability"
    assert finish.reason == "budget: spent $1.20 of the run's $1.00; last: capability: capability (test)"
    drive = Drive(Policy(chain, max_cost=0.4), {"qwen": [OK]})
    assert drive.run().status == "succeeded"  # a success that went over is still a success
    # ... and its route says so (`runs show` said nothing of the budget).
    assert drive.router.trail[-1]["kind"] == "budget"
    assert drive.router.trail[-1]["detail"] == "spent $0.50 of the run's $0.40: its last attempt used it up"


def test_an_attempt_stopped_at_the_budget_it_was_given_ends_the_run_for_its_budget() -> None:
    """Claude Code given the $0.0004 a run had left stops itself (`error_max_budget_usd`: contract) after spending
    $0.0009: the run ended "contract: Reached maximum budget … (not escalated: another worker would get the same
    task)", where the README promises `budget: …; last: …`."""
    chain = (ChainStep("openai_compat", ("qwen",)), ChainStep("claude_code", ("cc-a",)))
    answers = {"qwen": [fail("capability", cost=0.0001)], "cc-a": [fail("contract", cost=0.0009)]}
    finish = Drive(Policy(chain, max_cost=0.0005), answers).run()
    assert finish.status == "failed" and finish.error_class == "contract"
    assert finish.reason == "budget: spent $0.001 of the run's $0.0005; last: contract: contract (test)"
    # Within its budget, a contract failure still stops the run as one.
    finish = Drive(Policy(chain, max_cost=1.0), answers).run()
    assert finish.reason is not None and finish.reason.startswith("contract") and "not escalated" not in finish.reason


def test_transient_retries_back_off_with_full_jitter_within_the_cap() -> None:
    drive = Drive(Policy(CHAIN, retries=2, backoff_base=2, backoff_cap=3), {"qwen": [fail("transient")], "cc-a": [OK]})
    drive.run()
    delays = [d.seconds for d in drive.decisions if isinstance(d, Backoff)]
    assert len(delays) == 2 and 0 <= delays[0] <= 2 and 0 <= delays[1] <= 3
    rng = random.Random(1)
    samples = [backoff_delay(5, 2, 60, rng) for _ in range(500)]
    assert max(samples) <= 32 and min(samples) >= 0 and max(samples) > 16  # full jitter, capped at base*2^4


def test_a_run_budget_stops_before_the_next_attempt_and_is_passed_down() -> None:
    answers = {"qwen": [fail("transient", cost=0.8, tokens=400)], "cc-a": [fail("auth", cost=0.5)], "cc-b": [OK]}
    drive = Drive(Policy(CHAIN, max_cost=2.0), answers)
    finish = drive.run()
    assert finish.status == "failed" and finish.reason.startswith("budget: spent $2.4")
    tries = [d for d in drive.decisions if isinstance(d, Try)]
    assert [round(t.cost_left or 0, 2) for t in tries] == [2.0, 1.2, 0.4]
    drive = Drive(Policy(CHAIN, max_tokens=1000), {"qwen": [fail("transient", tokens=600)], "cc-a": [OK]})
    finish = drive.run()
    assert finish.status == "failed" and "600" not in (finish.reason or "") and "tokens" in (finish.reason or "")
    assert drive.tried == ["qwen", "qwen"]


def test_open_and_half_open_circuits_are_passed_over_and_one_probe_is_allowed() -> None:
    profiles = dict(PROFILES)
    profiles["qwen"] = replace(profiles["qwen"], circuit="open", circuit_until=T0 + timedelta(minutes=1))
    profiles["cc-a"] = replace(profiles["cc-a"], circuit="half_open", probe_taken=True)
    drive = Drive(Policy(CHAIN), {"cc-b": [OK]}, profiles)
    assert drive.run().status == "succeeded" and drive.tried == ["cc-b@sonnet"]
    skips = {e["profile"]: e["detail"] for e in drive.router.trail if e["kind"] == "skip"}
    assert "circuit open until" in skips["qwen"] and "probe is in flight" in skips["cc-a"]
    profiles["cc-a"] = replace(profiles["cc-a"], probe_taken=False)  # the probe is free: it is tried
    drive = Drive(Policy(CHAIN), {"cc-a": [OK], "cc-b": [OK]}, profiles)
    assert drive.run().status == "succeeded" and drive.tried == ["cc-a@sonnet"]


def test_a_run_that_waits_anyway_wakes_when_an_open_circuit_half_opens() -> None:
    """A run waits for a rate limit's reset (hours), not for an open circuit (a provider's outage: it fails instead).
    But once it waits, a profile whose circuit half-opens sooner is worth its probe: the run slept through it to the
    reset. Only open circuits and nothing else: it still fails, saying when they come back."""
    chain = (ChainStep("claude_code", ("cc-a", "cc-b")),)
    profiles = {
        "cc-a": replace(PROFILES["cc-a"], circuit="open", circuit_until=T0 + timedelta(minutes=1)),
        "cc-b": replace(PROFILES["cc-b"], state="exhausted", until=T0 + timedelta(hours=5)),
    }
    flow = Router(Policy(chain), random.Random(7)).route(World(T0, profiles))
    first = next(flow)
    assert isinstance(first, WaitUntil) and first.until == T0 + timedelta(minutes=1), first
    half_open = dict(profiles, **{"cc-a": replace(profiles["cc-a"], circuit="half_open")})
    probe = flow.send(Observation(World(T0 + timedelta(minutes=1), half_open)))
    assert isinstance(probe, Try) and probe.candidate.profile == "cc-a", probe
    # The open circuit a step before the one whose reset the run waits for: woken for too.
    two_steps = (ChainStep("claude_code", ("cc-a",)), ChainStep("claude_code", ("cc-b",)))
    for on_exhausted in ("escalate", "wait"):
        waits = Router(Policy(two_steps, on_exhausted=on_exhausted), random.Random(7)).route(World(T0, profiles))
        first = next(waits)
        assert isinstance(first, WaitUntil) and first.until == T0 + timedelta(minutes=1), (on_exhausted, first)
    only_a = (ChainStep("claude_code", ("cc-a",)),)
    alone = Router(Policy(only_a), random.Random(7)).route(World(T0, {"cc-a": profiles["cc-a"]}))
    finish = next(alone)
    assert isinstance(finish, Finish) and finish.status == "failed" and finish.back_at == T0 + timedelta(minutes=1)


def test_a_transient_failure_that_opened_the_circuit_is_not_retried_after_a_backoff() -> None:
    # A failed half-open probe reopens its circuit: the backoff was slept all the same, and the retry then found
    # the candidate passed over. It goes on to the next candidate at once.
    def circuit_opens(profiles: dict[str, ProfileView], name: str, result: AttemptResult, now: datetime) -> None:
        if result.error_class == "transient":
            profiles[name] = replace(profiles[name], circuit="open", circuit_until=now + timedelta(minutes=5))

    drive = Drive(Policy(CHAIN), {"qwen": [fail("transient")], "cc-a": [OK]}, on_result=circuit_opens)
    assert drive.run().status == "succeeded"
    assert drive.tried == ["qwen", "cc-a@sonnet"]
    assert not any(isinstance(d, Backoff) for d in drive.decisions)
    [moved] = [e["detail"] for e in drive.router.trail if e["kind"] == "next"]
    assert moved == "qwen: transient; its circuit is open: trying the next candidate"


def test_the_active_profile_goes_first_then_headroom() -> None:
    profiles = dict(PROFILES)
    profiles["cc-a"] = replace(profiles["cc-a"], headroom=0.9)
    profiles["cc-b"] = replace(profiles["cc-b"], headroom=0.2, active=True)
    chain = (ChainStep("claude_code"),)
    drive = Drive(Policy(chain), {"cc-a": [OK], "cc-b": [OK]}, profiles)
    drive.run()
    assert drive.tried == ["cc-b"]
    profiles["cc-b"] = replace(profiles["cc-b"], active=False)
    drive = Drive(Policy(chain), {"cc-a": [OK], "cc-b": [OK]}, profiles)
    drive.run()
    assert drive.tried == ["cc-a"]  # the most headroom, not the least


def test_unavailable_disabled_and_over_daily_cost_candidates_are_skipped_with_the_reason() -> None:
    profiles = dict(PROFILES)
    profiles["qwen"] = replace(profiles["qwen"], unavailable="no server at 127.0.0.1:11434")
    profiles["cc-a"] = replace(profiles["cc-a"], state="disabled", reason="auth failure")
    profiles["cc-b"] = replace(profiles["cc-b"], over_daily_cost="over its daily cost: $10.00 of $10.00")
    drive = Drive(Policy(CHAIN), {"codex": [OK]}, profiles)
    assert drive.run().status == "succeeded" and drive.tried == ["codex"]
    skips = [e["detail"] for e in drive.router.trail if e["kind"] == "skip"]
    assert skips == [
        "qwen: unavailable: no server at 127.0.0.1:11434",
        "cc-a: disabled: auth failure",
        "cc-api: tier metered not allowed (--tiers local,subscription)",
        "cc-b: over its daily cost: $10.00 of $10.00",
    ]


def test_the_route_records_every_decision_in_order() -> None:
    drive = Drive(Policy(CHAIN), {"qwen": [fail("transient"), fail("transient"), fail("transient")],
                                  "cc-a": [fail("rate_limited")], "cc-b": [OK]})  # fmt: skip
    drive.run()
    kinds = [e["kind"] for e in drive.router.trail if e["kind"] != "skip"]
    assert kinds == ["try", "outcome", "retry", "try", "outcome", "retry", "try", "outcome", "next",
                     "try", "outcome", "next", "try", "outcome"]  # fmt: skip


def test_attempts_are_bounded() -> None:
    # A profile that keeps saying rate_limited but whose state never changes cannot loop forever.
    drive = Drive(Policy((ChainStep("claude_code", ("cc-a",)),), max_attempts=5), {"cc-a": [fail("rate_limited")]},
                  on_result=lambda *_: None)  # fmt: skip
    finish = drive.run()
    assert finish.status == "failed"
    assert len(drive.tried) <= 5


def test_candidates_go_local_then_subscription_then_metered_then_by_state_and_headroom() -> None:
    profiles = {
        "metered": ProfileView("metered", "claude_code", "metered"),
        "sub_low": ProfileView("sub_low", "claude_code", "subscription", headroom=0.2),
        "sub_high": ProfileView("sub_high", "claude_code", "subscription", headroom=0.9),
        "near": ProfileView("near", "claude_code", "subscription", "near_limit", headroom=0.95),
        "gone": ProfileView("gone", "claude_code", "subscription", "exhausted", until=T0 + timedelta(hours=2)),
        "local": ProfileView("local", "claude_code", "local", headroom=0.1),
    }
    pool = ChainStep("claude_code", tuple(profiles))
    ordered, passed = expand(0, pool, World(T0, profiles), frozenset())
    assert [c.profile for c in ordered] == ["local", "sub_high", "sub_low", "near", "metered"]
    assert [(p.profile, p.until) for p in passed] == [("gone", T0 + timedelta(hours=2))]


def test_a_rejection_gets_repair_rounds_on_the_same_worker_then_escalates_with_the_findings() -> None:
    rejected = AttemptResult("failed", "capability", "2 tests still fail: test_a, test_b")
    drive = Drive(Policy(CHAIN, repairs=1), {"qwen": [rejected], "cc-a": [rejected, OK]})
    assert drive.run().status == "succeeded"
    assert drive.tried == ["qwen", "qwen", "cc-a@sonnet", "cc-a@sonnet"]
    tries = [d for d in drive.decisions if isinstance(d, Try)]
    assert [t.repair for t in tries] == [False, True, False, True]
    assert [t.findings for t in tries] == [None, *["2 tests still fail: test_a, test_b"] * 3]
    # The route said "repair of 2: qwen …" for attempt 2, read as a repair of attempt 2.
    said = [e["detail"].split(":")[0] for e in drive.router.trail if e["kind"] == "try"]
    assert said == ["attempt 1", "attempt 2 (repair of attempt 1)", "attempt 3", "attempt 4 (repair of attempt 3)"]


def test_rejected_by_every_step_fails_with_reason_rejected_and_the_last_findings() -> None:
    rejected = AttemptResult("failed", "capability", "verify exit 1: 3 failed")
    drive = Drive(Policy(CHAIN), {name: [rejected] for name in PROFILES})
    finish = drive.run()
    assert finish.status == "failed" and finish.reason == "rejected: verify exit 1: 3 failed"
    # The last step's rejection said "escalating to the next step", of which there was none.
    steps = [e["detail"] for e in drive.router.trail if e["kind"] == "next"]
    assert steps[-1] == "step 3 rejected: no step left" and steps[0] == "step 1 rejected: escalating to the next step"


def test_a_candidate_the_run_is_done_with_is_no_reason_to_wait() -> None:
    """Put out for auth, then shown exhausted: its reset must not keep the run waiting."""

    def auth_then_exhausted(profiles: dict[str, ProfileView], name: str, result: AttemptResult, now: datetime) -> None:
        profiles[name] = replace(profiles[name], state="exhausted", until=now + timedelta(hours=5))

    finish = Drive(Policy((ChainStep("claude_code", ("cc-a",)),)), {"cc-a": [fail("auth")]},
                   on_result=auth_then_exhausted).run()  # fmt: skip
    assert finish.status == "failed"


def test_a_route_refused_only_for_daily_costs_finishes_as_over_cost() -> None:
    # Spent, or the next attempt would pass it: both are the daily cost's refusal (the gateway's 429 with
    # retry-after 3600), not an upstream's failure.
    chain = (ChainStep("claude_code", ("cc-a", "cc-b")),)
    profiles = dict(PROFILES)
    profiles["cc-a"] = replace(profiles["cc-a"], over_daily_cost="over its daily cost: $10.00 of $10.00")
    profiles["cc-b"] = replace(profiles["cc-b"], over_daily_cost="no room in its daily cost: $9.80 of $10.00 spent in "
                               "the last 24 h, and one costs about $0.33")  # fmt: skip
    assert Drive(Policy(chain), {}, profiles).run().over_cost
    profiles["cc-a"] = replace(profiles["cc-a"], over_daily_cost=None, state="disabled")
    assert not Drive(Policy(chain), {}, profiles).run().over_cost  # one is out for another reason


def test_a_wait_on_attempts_under_way_is_told_once_however_often_it_looks() -> None:
    # Each attempt's end wakes the run; a look that still finds no room continues the same wait: it was a new
    # `wait` and a new skip with the figures of the moment each time (the gateway ends calls many times a second).
    chain = (ChainStep("claude_code", ("cc-a",)),)
    router = Router(Policy(chain, on_exhausted="wait"), random.Random(7))

    def busy(now: datetime, used: int) -> World:
        view = replace(PROFILES["cc-a"], no_room=f"1d=10req: {used} used, 1 attempt(s) under way",
                       room_at=now + timedelta(minutes=5), room_pending=True)  # fmt: skip
        return World(now, {"cc-a": view})

    flow = router.route(busy(T0, 8))
    first = next(flow)
    assert isinstance(first, WaitUntil) and first.pending and not first.again and first.waiting_on == {"cc-a"}
    looks = [flow.send(Observation(busy(T0 + timedelta(seconds=s), 8 + s % 2))) for s in (1, 2, 3)]
    assert all(isinstance(w, WaitUntil) and w.again for w in looks), looks
    assert [e["kind"] for e in router.trail] == ["skip", "wait"], router.trail
    assert router.trail[-1]["detail"].endswith("at the latest, or until an attempt under way ends")
    # Its room now waits on what is recorded (hours): a different wait, told.
    full = replace(PROFILES["cc-a"], no_room="1d=10req: 10 used", room_at=T0 + timedelta(hours=20))
    changed = flow.send(Observation(World(T0 + timedelta(seconds=4), {"cc-a": full})))
    assert isinstance(changed, WaitUntil) and not changed.again and not changed.pending and not changed.waiting_on
    assert [e["kind"] for e in router.trail] == ["skip", "wait", "skip", "wait"]
    # Room again: it tries.
    assert isinstance(flow.send(Observation(World(T0 + timedelta(hours=20), dict(PROFILES)))), Try)


def test_nothing_left_names_each_candidate_once() -> None:
    # A gateway call refused at its second look, then passed over by the next world: "g7: no room in its daily
    # cost: …; g7: unavailable".
    from fleetd.routing.router import _nothing_left

    passed = [Passed(0, "g7", "no room in its daily cost: $0.028 of $0.03 spent in the last 24 h"),
              Passed(0, "g8", "disabled")]  # fmt: skip
    out = {(0, "g7"): "unavailable", (0, "g9"): "auth"}
    assert _nothing_left(passed, out, None) == (
        "no usable candidate (g7: no room in its daily cost: $0.028 of $0.03 spent in the last 24 h; g8: disabled; "
        "g9: auth)"
    )


def test_a_rejection_on_the_last_step_with_an_earlier_one_resting_says_so_and_goes_back() -> None:
    # It said "no step left" (the last step), and then the run went back to step 1 once its reset came.
    soon = T0 + timedelta(minutes=5)
    rejected = AttemptResult("failed", "capability", "verify exit 1")
    chain = (ChainStep("openai_compat", ("qwen",)), ChainStep("codex"))
    drive = Drive(Policy(chain), {"qwen": [fail("rate_limited", reset_at=soon), OK], "codex": [rejected]})
    assert drive.run().status == "succeeded"
    assert drive.tried == ["qwen", "codex", "qwen"]
    [told] = [e["detail"] for e in drive.router.trail if e["kind"] == "next" and "rejected" in e["detail"]]
    assert told == "step 2 rejected: back to an earlier step, once it has room"


def test_a_profile_re_enabled_while_the_run_waits_is_tried_again() -> None:
    """A run that had found g1 out of quota and waited for c1's reset went on waiting after `profile enable g1`:
    it had put g1 aside for good ("the README: enabling makes waiting runs look again at once")."""
    chain = (ChainStep("codex", ("c1",)), ChainStep("gemini", ("g1",)))
    views = {"c1": ProfileView("c1", "codex", "subscription"), "g1": ProfileView("g1", "gemini", "subscription")}
    router = Router(Policy(chain), random.Random(7))
    flow = router.route(World(T0, views))
    assert isinstance(first := next(flow), Try) and first.candidate.profile == "c1"
    views["c1"] = replace(views["c1"], state="exhausted", until=T0 + timedelta(minutes=10))
    second = flow.send(Observation(World(T0, views), fail("rate_limited", reset_at=T0 + timedelta(minutes=10))))
    assert isinstance(second, Try) and second.candidate.profile == "g1"
    views["g1"] = replace(views["g1"], state="parked")
    wait = flow.send(Observation(World(T0, views), fail("quota")))
    assert isinstance(wait, WaitUntil) and wait.until == T0 + timedelta(minutes=10)
    views["g1"] = replace(views["g1"], state="available")  # `fleetd profile enable g1`: the run looks again
    again = flow.send(Observation(World(T0 + timedelta(seconds=5), views)))
    assert isinstance(again, Try) and again.candidate.profile == "g1", again


def test_a_rate_limited_profile_enabled_by_hand_while_the_run_waits_is_tried_again() -> None:
    """`profile enable` of a rate-limited profile made `usage` say it was available, and a new run used it, while the
    run already waiting for it went on waiting for the rest it had set itself."""
    chain = (ChainStep("claude_code", ("cc-a",)),)
    views = {"cc-a": ProfileView("cc-a", "claude_code", "subscription")}
    flow = Router(Policy(chain, on_exhausted="wait"), random.Random(7)).route(World(T0, views))
    assert isinstance(next(flow), Try)
    views["cc-a"] = replace(views["cc-a"], state="exhausted", until=T0 + timedelta(minutes=1))
    wait = flow.send(Observation(World(T0, views), fail("rate_limited", reset_at=T0 + timedelta(minutes=1))))
    assert isinstance(wait, WaitUntil)
    # Enabled by hand 5 s later: the heartbeat's exhaustion is gone, and the run looks again.
    enabled = T0 + timedelta(seconds=5)
    views["cc-a"] = ProfileView("cc-a", "claude_code", "subscription", enabled_at=enabled)
    again = flow.send(Observation(World(enabled, views)))
    assert isinstance(again, Try) and again.candidate.profile == "cc-a", again
    # A rest that began after that enable still holds.
    views["cc-a"] = replace(views["cc-a"], state="exhausted", until=enabled + timedelta(minutes=1))
    later = flow.send(Observation(World(enabled, views), fail("rate_limited", reset_at=enabled + timedelta(minutes=1))))
    views["cc-a"] = replace(views["cc-a"], state="available", until=None)
    assert isinstance(later, WaitUntil)
    assert isinstance(flow.send(Observation(World(enabled + timedelta(seconds=59), views))), WaitUntil)


def test_a_candidate_rate_limited_again_after_each_reset_rests_longer_each_time() -> None:
    """A provider answering every call with a 429 and `retry-after: 1` had a run try once a second, 20 times in
    20 s (each a profile.exhausted and a run.waiting event, each to the hooks), then fail."""

    tried_at: list[datetime] = []

    def one_second(profiles: dict[str, ProfileView], name: str, result: AttemptResult, now: datetime) -> None:
        tried_at.append(now)
        profiles[name] = replace(profiles[name], state="exhausted", until=now + timedelta(seconds=1))

    chain = (ChainStep("openai_compat", ("qwen",)),)
    drive = Drive(Policy(chain), {"qwen": [fail("rate_limited")]}, on_result=one_second)
    finish = drive.run()
    assert finish.status == "failed"
    gaps = [round((b - a).total_seconds()) for a, b in pairwise(tried_at)]
    assert gaps[:6] == [2, 3, 5, 9, 17, 33], gaps  # the reset's 1 s, then at least 2, 4, 8 … s (+1 s an attempt)
    assert gaps == sorted(gaps) and max(gaps) == 901  # to a cap of 15 minutes


def test_a_candidate_resting_longer_than_its_reset_is_waited_for_once_until_its_rest() -> None:
    """Under --on-exhausted wait, a 429 with `retry-after: 1` the second time: the run waited until the profile's reset
    (1 s), then, finding the candidate still resting, waited again until the rest's end: two `run.waiting` events
    (and hook deliveries) for one wait, after every attempt."""

    def one_second(profiles: dict[str, ProfileView], name: str, result: AttemptResult, now: datetime) -> None:
        profiles[name] = replace(profiles[name], state="exhausted", until=now + timedelta(seconds=1))

    chain = (ChainStep("openai_compat", ("qwen",)),)
    drive = Drive(Policy(chain, on_exhausted="wait", max_attempts=5), {"qwen": [fail("rate_limited")]},
                  on_result=one_second)  # fmt: skip
    drive.run()
    kinds = [type(d).__name__ for d in drive.decisions]
    assert kinds == ["Try", "WaitUntil"] * 4 + ["Try", "Finish"], kinds  # one wait between two attempts
    waits = [d for d in drive.decisions if isinstance(d, WaitUntil)]
    assert not any(w.again for w in waits)
    assert len([e for e in drive.router.trail if e["kind"] == "wait"]) == 4


def test_an_attempt_the_budget_left_cannot_pay_for_is_not_started() -> None:
    # A repair round started with $0.18 left of a $1.00 run whose attempts cost about $0.82 on that profile (nothing
    # could stop it on a backend that takes no cost cap): it ended "spent $1.64 of the run's $1.00".
    chain = (ChainStep("openai_compat", ("qwen",)),)
    profiles = {"qwen": replace(PROFILES["qwen"], attempt_cost=0.82)}
    drive = Drive(Policy(chain, max_cost=1.0, repairs=1), {"qwen": [fail("capability", cost=0.82)]}, profiles)
    finish = drive.run()
    assert drive.tried == ["qwen"]
    assert finish.status == "failed" and finish.reason is not None
    assert finish.reason.startswith("budget: $0.18 left of the run's $1.00, and an attempt on qwen costs about $0.82")
    # The first attempt is not judged by it (the budget is passed down where the backend can enforce it).
    assert Drive(Policy(chain, max_cost=0.5), {"qwen": [OK]}, profiles).run().status == "succeeded"


def test_a_rate_limit_under_on_exhausted_wait_does_not_say_it_tries_the_next_candidate() -> None:
    # `runs show` said "p429: rate_limited; trying the next candidate", then waited for the reset: there was none.
    chain = (ChainStep("claude_code", ("cc-a",)),)
    reset = T0 + timedelta(minutes=30)
    drive = Drive(Policy(chain, on_exhausted="wait"), {"cc-a": [fail("rate_limited", reset_at=reset), OK]})
    assert drive.run().status == "succeeded"
    [moved] = [e["detail"] for e in drive.router.trail if e["kind"] == "next"]
    assert moved.startswith("cc-a: rate_limited, resting until ") and "trying the next candidate" not in moved, moved
    assert moved.endswith("; another candidate of its step, else a wait for the first reset (--on-exhausted wait)")


@pytest.mark.parametrize(
    ("chain", "looks", "policy", "answers", "skipped"),
    [
        # The look ahead ended the run at the first candidate it could not pay for, a cheaper one of the step untried.
        ((ChainStep("claude_code", ("cc-a", "cc-b")),),
         {"cc-a": {"attempt_cost": 0.82}, "cc-b": {"attempt_cost": 0.05}}, {"max_cost": 1.0, "retries": 1},
         {"cc-a": [fail("transient", cost=0.30)], "cc-b": [OK]},
         "cc-a: budget: $0.70 left of the run's $1.00, and an attempt on cc-a costs about $0.82"),
        # `--max-tokens 1000` with 183 left after an attempt of 817: the repair ran on the same profile anyway (no CLI
        # is held to a total token budget) and the run used 1,634; a cheaper profile of the chain was never tried.
        ((ChainStep("openai_compat", ("qwen",)), ChainStep("claude_code", ("cc-a",))),
         {"qwen": {"attempt_tokens": 817}, "cc-a": {"attempt_tokens": 100}},
         {"max_tokens": 1000, "repairs": 1}, {"qwen": [fail("capability", tokens=817)], "cc-a": [OK]},
         "qwen: budget: 183 of the run's 1000 tokens left, and an attempt on qwen uses about 817"),
    ],
)  # fmt: skip
def test_a_candidate_the_budget_left_cannot_pay_for_is_passed_over_for_one_it_can(
    chain: tuple[ChainStep, ...], looks: dict[str, dict[str, float]], policy: dict[str, float],
    answers: dict[str, list[AttemptResult]], skipped: str,
) -> None:  # fmt: skip
    profiles = {**PROFILES, **{name: replace(PROFILES[name], **fields) for name, fields in looks.items()}}
    drive = Drive(Policy(chain, **policy), answers, profiles)  # type: ignore[arg-type]
    assert drive.run().status == "succeeded"
    assert drive.tried == list(answers)
    assert [e["detail"] for e in drive.router.trail if e["kind"] == "skip"] == [skipped]


def test_a_candidate_the_budget_left_cannot_pay_for_is_no_reason_to_wait() -> None:
    # Rate limited for 2 h after an attempt that left $0.70 of $1.00, where each costs $0.82: the run waited the 2 h,
    # then failed for its budget (which only shrinks).
    chain = (ChainStep("openai_compat", ("qwen",)),)
    profiles = {"qwen": replace(PROFILES["qwen"], attempt_cost=0.82)}
    limited = fail("rate_limited", cost=0.30, reset_at=T0 + timedelta(hours=2))
    drive = Drive(Policy(chain, max_cost=1.0, on_exhausted="wait"), {"qwen": [limited]}, profiles)
    finish = drive.run()
    assert not [d for d in drive.decisions if isinstance(d, WaitUntil)], drive.decisions
    assert finish.status == "failed" and (finish.reason or "").startswith("budget: $0.70 left of the run's $1.00")
