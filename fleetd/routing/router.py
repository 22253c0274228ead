"""The router: the one place that decides which worker does a task next, and what a failure means.

It is a generator the caller drives (httpx's auth flow is the pattern): it yields a decision — try
this candidate, back off, wait until a reset, finish — and is sent what happened (the attempt's
result, and the world as it stands now). It does no I/O and reads no clock of its own, so every
path through it is a table-driven test. The executor (loops) is one driver; the gateway will be
another.

Each decision and every candidate passed over is written to `Router.trail`, the run's route.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from fleetd.records.loop import ChainStep
from fleetd.records.money import usd
from fleetd.timefmt import local_text

# What each failure class means for the run (the table of ../shared/ARCHITECTURE.md).
Action = Literal["retry", "next_candidate", "next_step", "stop"]
ACTIONS: Mapping[str, Action] = {
    "rate_limited": "next_candidate",  # the profile is exhausted until its reset; another may have headroom
    "transient": "retry",  # the same candidate after a backoff, a few times; then the next one
    "quota": "next_candidate",  # the profile is parked (billing), not coming back in minutes
    "auth": "next_candidate",  # the profile is disabled
    "unavailable": "next_candidate",  # this candidate cannot run at all here
    "capability": "next_step",  # the work was rejected: a stronger step may do it
    "contract": "stop",  # a costlier worker would get the same bad question
    "unknown": "stop",  # nothing says another worker would do better
}
TIER_ORDER = {"local": 0, "subscription": 1, "metered": 2}
# How a candidate passed over for its daily cost is named: spent, or the next attempt would pass it.
OVER_COST = "over its daily cost: "
NO_COST_ROOM = "no room in its daily cost: "
NO_ROOM = "no room for another attempt: "  # one of its limits, beside the attempts under way
USABLE_STATES = ("available", "near_limit")
RATE_LIMIT_REST_CAP_S = 900.0  # the longest a candidate rate limited again and again rests in one run


@dataclass(frozen=True)
class ProfileView:
    """One profile as the router sees it at one moment."""

    name: str
    backend: str
    tier: str
    state: str = "available"  # available | near_limit | exhausted | parked | disabled
    until: datetime | None = None  # when an exhausted (or parked) profile comes back, if known
    reason: str = ""
    headroom: float = 1.0
    active: bool = False  # the backend's active profile (the heartbeat's choice)
    circuit: str = "closed"  # closed | open | half_open
    circuit_until: datetime | None = None
    probe_taken: bool = False  # half-open, and its one probe is already in flight
    unavailable: str | None = None  # why it cannot run here at all (its CLI is missing, ...)
    over_daily_cost: str | None = None  # why its daily cost leaves no room (`over its daily cost: …`, `no room in …`)
    cost_room_at: datetime | None = None  # when that spend has left the 24 h window enough for one more attempt
    # Why one of its limits has no room for one more attempt (beside those under way); room again at `room_at`.
    no_room: str | None = None
    room_at: datetime | None = None
    # Its room is taken by attempts under way (they may end using less): `room_at` is only a bound, and an attempt's
    # end is the moment to look again (`Executor.room_freed`).
    room_pending: bool = False
    # What one of its attempts costs, going by its recent ones, where its backend cannot be held to what a run's
    # --max-cost has left (None: not known yet, or its CLI stops itself at the budget it is given).
    attempt_cost: float | None = None
    attempt_tokens: float | None = None  # and the tokens one uses (None: not known yet), for a run's --max-tokens
    enabled_at: datetime | None = None  # when `profile enable` last brought it back by hand (since the daemon started)


@dataclass(frozen=True)
class World:
    now: datetime
    profiles: Mapping[str, ProfileView]


@dataclass(frozen=True)
class Policy:
    chain: tuple[ChainStep, ...]
    tiers: frozenset[str] = frozenset({"local", "subscription"})
    max_cost: float | None = None  # USD per run, every attempt included
    max_tokens: int | None = None  # per run
    on_exhausted: str = "escalate"  # or "wait": wait for the step's reset instead of going up the chain
    retries: int = 2  # per candidate, for transient failures
    backoff_base: float = 2.0
    backoff_cap: float = 60.0
    max_attempts: int = 20  # a bound, not a strategy
    repairs: int = 0  # after a rejection, this many more attempts on the same worker, with the findings


@dataclass(frozen=True)
class Candidate:
    step: int
    profile: str
    backend: str
    model: str | None
    tier: str


@dataclass(frozen=True)
class AttemptResult:
    outcome: str  # succeeded | failed | unknown
    error_class: str | None = None
    message: str = ""
    cost_usd: float = 0.0
    tokens: int = 0
    reset_at: datetime | None = None


@dataclass(frozen=True)
class Observation:
    world: World
    result: AttemptResult | None = None  # after a Try


# -- decisions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Try:
    candidate: Candidate
    number: int  # the run's attempt number, from 1
    cost_left: float | None  # what the run's budget still allows, for backends that can enforce it
    tokens_left: int | None
    findings: str | None = None  # what the acceptance gate found wrong with earlier work: the prompt carries it
    repair: bool = False  # a repair round on the worker whose work was rejected (continue its session if it can)


@dataclass(frozen=True)
class Backoff:
    seconds: float  # then the same candidate again


@dataclass(frozen=True)
class WaitUntil:
    until: datetime  # nothing allowed has headroom: the run waits for the earliest reset
    # The same wait as the last decision's, looked at again (nothing tried since, the same reset, or still only room
    # that attempts under way take): not told again.
    again: bool = False
    # The profiles whose room attempts under way take: the wait ends early when one of theirs ends. `until` is then a
    # bound if no other reset comes first (`pending`).
    waiting_on: frozenset[str] = frozenset()
    pending: bool = False


@dataclass(frozen=True)
class Finish:
    status: Literal["succeeded", "failed"]
    reason: str | None = None  # why it failed: "budget: …", "contract: …", "no candidate: …"
    error_class: str | None = None
    # Nothing was tried because every candidate is over its daily cost: spend leaves the 24 h window by itself (the
    # gateway answers 429, not 502 as for a failing upstream).
    over_cost: bool = False
    # Every candidate passed over comes back by itself, the first at this time (a gateway's retry-after).
    back_at: datetime | None = None


Decision = Try | Backoff | WaitUntil | Finish


@dataclass(frozen=True)
class Passed:
    """A candidate the router could not use, and when it may come back (for waiting)."""

    step: int
    profile: str
    why: str
    until: datetime | None = None  # only for reasons that end by themselves (a rate limit's reset)
    pending: bool = False  # no room beside attempts under way: `until` is a bound, their end the moment to look
    # When it comes back by itself, for telling a caller: `until`, or an open circuit's end (not waited for: a run
    # fails rather than sit out a provider's outage, but a gateway client can be told when to try again).
    back_at: datetime | None = None


def expand(
    step_index: int, step: ChainStep, world: World, tiers: frozenset[str]
) -> tuple[list[Candidate], list[Passed]]:
    """A chain step's usable candidates in the order to try, and the ones passed over with why.

    Order: in a backend step the backend's active profile first (so the runs, `usage`'s active mark
    and the switch events tell one story); then tier (local → subscription → metered), available
    before near its limit, more headroom, then the configured order (a named pool's own order)."""
    if step.profiles:
        views = [(i, world.profiles.get(name), name) for i, name in enumerate(step.profiles)]
    else:
        named = sorted((v for v in world.profiles.values() if v.backend == step.backend), key=lambda v: v.name)
        views = [(i, v, v.name) for i, v in enumerate(named)]
    usable: list[tuple[tuple[Any, ...], Candidate]] = []
    passed: list[Passed] = []
    for position, view, name in views:
        if view is None:
            passed.append(Passed(step_index, name, "no such profile"))
            continue
        why, until, back_at = _why_not(view, world.now, explicit=step.explicit, tiers=tiers)
        if why is not None:
            pending = view.room_pending and why.startswith(NO_ROOM)
            passed.append(Passed(step_index, name, why, until, pending, back_at))
            continue
        active_first = view.active and not step.explicit
        key = (not active_first, TIER_ORDER.get(view.tier, 9), view.state != "available", -view.headroom, position)
        usable.append((key, Candidate(step_index, name, view.backend, step.model, view.tier)))
    return [c for _, c in sorted(usable, key=lambda kc: kc[0])], passed


def _why_not(
    view: ProfileView, now: datetime, *, explicit: bool, tiers: frozenset[str]
) -> tuple[str | None, datetime | None, datetime | None]:
    """Why `view` is passed over now (None: usable), when a run may wait for it, and when it comes back by itself
    (`Passed.back_at`)."""
    if not explicit and view.tier not in tiers:
        return (
            f"tier {view.tier} not allowed (--tiers {','.join(sorted(tiers, key=TIER_ORDER.__getitem__))})",
            None,
            None,
        )
    if view.unavailable:
        return f"unavailable: {view.unavailable}", None, None
    if view.state == "disabled":
        return f"disabled{': ' + view.reason if view.reason else ''}", None, None
    if view.state == "parked":
        return f"parked (quota){': ' + view.reason if view.reason else ''}", None, None
    if view.state == "exhausted":
        if view.until is not None and view.until <= now:
            pass  # its reset has passed: usable again (the heartbeat confirms on its next beat)
        else:
            when = f" until {local_text(view.until)}" if view.until else ""
            return f"exhausted{when}", view.until, view.until
    if view.over_daily_cost:  # a run with nowhere else to go waits for the spend to leave the window, as for a limit
        return view.over_daily_cost, view.cost_room_at, view.cost_room_at
    if view.no_room:
        return f"{NO_ROOM}{view.no_room}", view.room_at, view.room_at
    if view.circuit == "open" and (view.circuit_until is None or view.circuit_until > now):
        when = f" until {local_text(view.circuit_until)}" if view.circuit_until else ""
        return f"circuit open{when}", None, view.circuit_until
    if view.circuit in ("open", "half_open") and view.probe_taken:
        return "circuit half-open: its one probe is in flight", None, None
    return None, None, None


Resolved = tuple[ChainStep, list["Candidate"], list["Passed"]]  # a step, its candidates now, who is out and why


def _half_opens(passed: list[Passed], out: dict[tuple[int, str], str]) -> list[tuple[datetime, bool, int]]:
    """When the open circuits among `passed` half-open (those the run is not done with), as resets to wake for."""
    return [(p.back_at, False, p.step) for p in passed
            if p.until is None and p.back_at is not None and (p.step, p.profile) not in out]  # fmt: skip


def resolve(policy: Policy, world: World) -> list[Resolved]:
    """The chain as it resolves now: each step's candidates in order and who is out, and why."""
    return [(step, *expand(i, step, world, policy.tiers)) for i, step in enumerate(policy.chain)]


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return rng.uniform(0, min(cap, base * 2 ** (attempt - 1)))


@dataclass
class Router:
    policy: Policy
    rng: random.Random = field(default_factory=random.Random)
    trail: list[dict[str, Any]] = field(default_factory=list)
    spent_cost: float = 0.0
    spent_tokens: int = 0
    _unaffordable_seen: str | None = None  # the last choice passed one over for what the budget left (`_choose`)
    role: str = "work"  # what its attempts do: `review` for the reviewer agent's own router
    # The run's attempt numbers, shared by its worker's router and its reviewers': a Try's number, and the route's,
    # is then the attempt's in the run's list (each router counting its own gave a review "review 1" beside attempt 2).
    numbers: Iterator[int] | None = None

    def note(self, now: datetime, kind: str, detail: str, candidate: Candidate | None = None, **data: Any) -> None:
        """One entry of the route; steps are numbered from 1 there, as users count them."""
        entry: dict[str, Any] = {"at": now, "kind": kind, "detail": detail}
        if self.role != "work":
            entry["role"] = self.role
        if candidate is not None:
            entry.update(step=candidate.step + 1, profile=candidate.profile, backend=candidate.backend,
                         model=candidate.model)  # fmt: skip
        entry.update(data)
        self.trail.append(entry)

    def route(self, world: World) -> Generator[Decision, Observation, None]:
        policy = self.policy
        number = 0
        retries: dict[tuple[int, str], int] = {}
        out: dict[tuple[int, str], str] = {}  # candidates this run is done with, and why
        resting: dict[tuple[int, str], datetime] = {}  # rate-limited here: not before this time
        rested_at: dict[tuple[int, str], datetime] = {}  # when that rest began
        rejected_steps: set[int] = set()  # capability shortfalls: the next step gets the task
        again: tuple[int, str] | None = None  # retry this one first (transient backoff, repair round)
        repairing: tuple[tuple[int, str], int] | None = None  # the next try repairs this candidate's attempt N
        repairs: dict[tuple[int, str], int] = {}
        # Rate limits per candidate: a provider whose every answer is a 429 with `retry-after: 1` had a run try it
        # once a second until max_attempts (each try an exhausted and a waiting event); from the second, it rests
        # at least 2, 4, 8 … s, to RATE_LIMIT_REST_CAP_S.
        limited: dict[tuple[int, str], int] = {}
        findings: str | None = None  # the acceptance gate's last findings, carried to every later attempt
        told: set[tuple[int, str, str]] = set()  # passed-over notes already in the trail
        waited: WaitUntil | None = None  # the last decision, if it was a wait (a look that finds no room continues it)
        last: AttemptResult | None = None
        while True:
            now = world.now
            for key, why in list(out.items()):
                view = world.profiles.get(key[1])
                if why in ("quota", "auth") and view is not None and view.state in USABLE_STATES:
                    del out[key]  # enabled again by hand (or its parking ended) since it failed: usable again
            for key, began in list(rested_at.items()):
                view = world.profiles.get(key[1])
                if view is not None and view.enabled_at is not None and view.enabled_at > began:
                    # Enabled by hand since its rate limit: the user's word ends this run's rest too (it waited on
                    # while `usage` said available and a new run used it).
                    del resting[key], rested_at[key]
                    limited.pop(key, None)
            over = self._over_budget()
            if over:
                if last is not None:  # what the last attempt came to (rejected, say) is as much the run's end
                    over = f"{over}; last: {_describe(last)}"
                self.note(now, "stop", over)
                yield Finish("failed", over, last.error_class if last else None)
                return
            if number >= policy.max_attempts:
                reason = f"gave up after {number} attempts" + (f": {_describe(last)}" if last else "")
                self.note(now, "stop", reason)
                yield Finish("failed", reason, last.error_class if last else None)
                return
            chosen, resets, passed_all = self._choose(world, out, resting, rejected_steps, again, told, waited)
            again = None
            if chosen is None:
                if resets:
                    until, pending, step = min(resets)
                    waiting_on = frozenset(p.profile for p in passed_all if p.pending)
                    same = waited is not None and (until == waited.until or (pending and waited.pending))
                    if not same:
                        self.note(
                            now,
                            "wait",
                            (
                                f"step {step + 1} has no headroom (--on-exhausted wait)"
                                if policy.on_exhausted == "wait"
                                else "nothing allowed has headroom"
                            )
                            + f": waiting until {local_text(until)}"
                            + (" at the latest, or until an attempt under way ends" if pending else ""),
                        )
                    waited = WaitUntil(until, same, waiting_on, pending)
                    world = (yield waited).world
                    continue
                if self._unaffordable_seen is not None:  # only what the budget left could not pay for was left
                    reason = self._unaffordable_seen + (f"; last: {_describe(last)}" if last is not None else "")
                elif last is not None and last.error_class == "capability":
                    reason = f"rejected: {last.message}" if last.message else "rejected"
                else:
                    reason = _nothing_left(passed_all, out, last)
                self.note(now, "stop", reason)
                costs = (OVER_COST, NO_COST_ROOM)
                over_cost = bool(passed_all) and all(p.why.startswith(costs) for p in passed_all) and not out
                backs = [p.back_at for p in passed_all if p.back_at is not None]
                back_at = min(backs) if backs and len(backs) == len(passed_all) and not out else None
                yield Finish("failed", reason, last.error_class if last else None, over_cost, back_at)
                return
            waited = None
            number += 1
            attempt = next(self.numbers) if self.numbers is not None else number
            cost_left = None if policy.max_cost is None else max(0.0, policy.max_cost - self.spent_cost)
            tokens_left = None if policy.max_tokens is None else max(0, policy.max_tokens - self.spent_tokens)
            repaired = repairing[1] if repairing and repairing[0] == (chosen.step, chosen.profile) else None
            repair = repaired is not None
            repairing = None
            what = "review" if self.role == "review" else "attempt"
            what = f"{what} {attempt} (repair of attempt {repaired})" if repair else f"{what} {attempt}"
            self.note(now, "try", f"{what}: {chosen.profile} (step {chosen.step + 1}: "
                      f"{policy.chain[chosen.step].describe()})", chosen, number=attempt)  # fmt: skip
            observed = yield Try(chosen, attempt, cost_left, tokens_left, findings, repair)
            world, result = observed.world, observed.result
            assert result is not None
            last = result
            self.spent_cost += result.cost_usd
            self.spent_tokens += result.tokens
            key = (chosen.step, chosen.profile)
            if result.outcome == "succeeded":
                self.note(world.now, "outcome", "succeeded", chosen, number=attempt)
                if over := self._over_budget():  # still a success, but the run's record says what it cost
                    self.note(world.now, "budget", f"{over.removeprefix('budget: ')}: its last attempt used it up")
                yield Finish("succeeded")
                return
            error_class = result.error_class or "unknown"
            action = ACTIONS.get(error_class, "stop")
            self.note(world.now, "outcome", _describe(result), chosen, number=attempt, error_class=error_class)
            view = world.profiles.get(chosen.profile)
            if action == "retry" and view is not None and view.circuit == "open":
                # Its circuit opened with this failure (a failed probe, or the threshold reached): a retry would
                # sleep its backoff only to find the candidate passed over.
                out[key] = f"{error_class}; circuit open"
                self.note(world.now, "next", f"{chosen.profile}: {error_class}; its circuit is open: trying the "
                          "next candidate", chosen)  # fmt: skip
            elif action == "retry":
                retries[key] = retries.get(key, 0) + 1
                if retries[key] <= policy.retries and not self._over_budget():
                    delay = backoff_delay(retries[key], policy.backoff_base, policy.backoff_cap, self.rng)
                    self.note(world.now, "retry", f"{error_class}: retry {chosen.profile} in {delay:.1f}s "
                              f"({retries[key]} of {policy.retries})", chosen)  # fmt: skip
                    world = (yield Backoff(delay)).world
                    again = key
                    continue
                out[key] = f"{error_class} {retries[key]} time(s)"
                self.note(world.now, "next", f"{chosen.profile}: {out[key]}; trying the next candidate", chosen)
            elif action == "next_candidate":
                if error_class == "rate_limited":
                    until = view.until if view is not None and view.state == "exhausted" and view.until else None
                    rest = until or result.reset_at or world.now + timedelta(seconds=60)
                    limited[key] = limited.get(key, 0) + 1
                    if limited[key] > 1:  # limited again right after its reset: each time it rests longer
                        floor = min(RATE_LIMIT_REST_CAP_S, 2.0 ** (limited[key] - 1))
                        rest = max(rest, world.now + timedelta(seconds=floor))
                    resting[key], rested_at[key] = rest, world.now
                    onward = ("another candidate of its step, else a wait for the first reset (--on-exhausted wait)"
                              if policy.on_exhausted == "wait" else "trying the next candidate")  # fmt: skip
                    self.note(world.now, "next", f"{chosen.profile}: {error_class}, resting until "
                              f"{local_text(rest)}; {onward}", chosen)  # fmt: skip
                else:
                    out[key] = error_class
                    self.note(world.now, "next", f"{chosen.profile}: {error_class}; trying the next candidate", chosen)
            elif action == "next_step":
                findings = result.message or findings
                repairs[key] = repairs.get(key, 0) + 1
                if repairs[key] <= policy.repairs:
                    self.note(world.now, "repair", f"{chosen.profile}'s work was rejected: repair round "
                              f"{repairs[key]} of {policy.repairs} with the findings", chosen)  # fmt: skip
                    again, repairing = key, (key, attempt)
                    continue
                rejected_steps.add(chosen.step)
                left = set(range(len(policy.chain))) - rejected_steps
                onward = (
                    "escalating to the next step" if any(step > chosen.step for step in left)
                    else "back to an earlier step, once it has room" if left
                    else "no step left"
                )  # fmt: skip
                self.note(world.now, "next", f"step {chosen.step + 1} rejected: {onward}", chosen)
            elif self._over_budget():  # a CLI stopped at the budget it was given: the budget ends the run (above)
                continue
            else:
                reason = f"{error_class}: {result.message}" if result.message else error_class
                self.note(world.now, "stop", f"{reason} (not escalated: another worker would get the same task)")
                yield Finish("failed", reason, error_class)
                return

    def _choose(
        self,
        world: World,
        out: dict[tuple[int, str], str],
        resting: dict[tuple[int, str], datetime],
        rejected_steps: set[int],
        again: tuple[int, str] | None,
        told: set[tuple[int, str, str]],
        waited: WaitUntil | None,
    ) -> tuple[Candidate | None, list[tuple[datetime, bool, int]], list[Passed]]:
        """The first usable candidate, scanning the chain from its first step (cheaper steps come
        back after a reset); else the resets worth waiting for (each: when, whether only a bound on room that
        attempts under way take, and the step's index). `waited`: the run is looking again while it waits."""
        resets: list[tuple[datetime, bool, int]] = []
        passed_all: list[Passed] = []
        self._unaffordable_seen = None
        for index, step in enumerate(self.policy.chain):
            if index in rejected_steps:
                continue
            ordered, passed = expand(index, step, world, self.policy.tiers)
            for p in passed:
                # While it waits on attempts under way, their figures change at each look: told once.
                said = NO_ROOM if p.pending and waited is not None else p.why
                if (p.step, p.profile, said) not in told:
                    told.add((p.step, p.profile, said))
                    if p.pending:  # told in these figures: the wait's later looks need not tell others
                        told.add((p.step, p.profile, NO_ROOM))
                    self.note(world.now, "skip", f"{p.profile}: {p.why}", step=p.step + 1, profile=p.profile)
            passed_all.extend(passed)
            # A candidate this run is done with is no reason to wait, whenever its reset comes; nor one the budget left
            # cannot pay for (the budget only shrinks).
            # Back at its reset, or at the end of this run's rest for it if later: a wait for the reset alone found it
            # still resting, and waited again (two `run.waiting` events for one wait).
            step_resets = [
                (rest, False, index) if (rest := resting.get((p.step, p.profile), p.until)) > p.until
                else (p.until, p.pending, index) for p in passed
                if p.until is not None and (p.step, p.profile) not in out
                and not self._over_what_is_left(world, p, told)
            ]  # fmt: skip
            usable = []
            for c in ordered:
                key = (c.step, c.profile)
                if key in out or self._over_what_is_left(world, c, told):  # passed over: a cheaper one may fit
                    continue
                if key in resting and resting[key] > world.now:
                    step_resets.append((resting[key], False, index))
                    continue
                usable.append(c)
            if again is not None:
                usable.sort(key=lambda c: (c.step, c.profile) != again)
            if usable:
                return usable[0], [], passed_all
            resets.extend(step_resets)
            if step_resets and self.policy.on_exhausted == "wait":
                return None, step_resets + _half_opens(passed_all, out), passed_all  # it waits for its step
        # Waiting anyway: an open circuit of a step scanned that half-opens sooner is worth its probe (not waited for
        # alone: a provider's outage fails the run, saying when it comes back).
        return None, resets + _half_opens(passed_all, out) if resets else [], passed_all

    def _over_what_is_left(self, world: World, c: Candidate | Passed, told: set[tuple[int, str, str]]) -> bool:
        """Whether the budget left cannot pay for an attempt on `c` (`_unaffordable`): then said once in its route, as
        every reason a candidate is passed over (`told`)."""
        unaffordable = self._unaffordable(world, c)
        if unaffordable is None:
            return False
        if (c.step, c.profile, unaffordable) not in told:
            told.add((c.step, c.profile, unaffordable))
            self.note(world.now, "skip", f"{c.profile}: {unaffordable}", step=c.step + 1, profile=c.profile)
        self._unaffordable_seen = self._unaffordable_seen or unaffordable
        return True

    def _unaffordable(self, world: World, chosen: Candidate | Passed) -> str | None:
        """`budget: …` when what the run has left of its --max-cost (or --max-tokens) would not pay for an attempt on
        `chosen` at what its attempts cost (`ProfileView.attempt_cost`: known, and its backend cannot be held to the
        budget) or use (`attempt_tokens`): a repair round started with $0.18 left where each cost $0.82. Not for a run's
        first attempt: that is what the budget is for."""
        p = self.policy
        view = world.profiles.get(chosen.profile)
        if view is None:
            return None
        cost, tokens = view.attempt_cost, view.attempt_tokens
        if p.max_cost is not None and self.spent_cost and cost is not None:
            left = p.max_cost - self.spent_cost
            if cost > left * (1 + 1e-9):
                return (f"budget: {usd(max(0.0, left))} left of the run's {usd(p.max_cost)}, and an attempt on "
                        f"{chosen.profile} costs about {usd(cost)}")  # fmt: skip
        if p.max_tokens is not None and self.spent_tokens and tokens is not None:
            left_tokens = p.max_tokens - self.spent_tokens
            if tokens > left_tokens:
                return (f"budget: {max(0, left_tokens)} of the run's {p.max_tokens} tokens left, and an attempt on "
                        f"{chosen.profile} uses about {round(tokens)}")  # fmt: skip
        return None

    def _over_budget(self) -> str | None:
        p = self.policy
        if p.max_cost is not None and self.spent_cost >= p.max_cost:
            return f"budget: spent {usd(self.spent_cost)} of the run's {usd(p.max_cost)}"
        if p.max_tokens is not None and self.spent_tokens >= p.max_tokens:
            return f"budget: used {self.spent_tokens} of the run's {p.max_tokens} tokens"
        return None


def _describe(result: AttemptResult | None) -> str:
    if result is None:
        return "no attempt"
    message = result.message or result.outcome
    return f"{result.error_class}: {message}" if result.error_class else message


def _nothing_left(passed: list[Passed], out: dict[tuple[int, str], str], last: AttemptResult | None) -> str:
    # Each candidate once: as the last world saw it, else why the run was done with it.
    seen = {p.profile for p in passed}
    reasons = [f"{p.profile}: {p.why}" for p in passed] + [
        f"{name}: {why}" for (_, name), why in out.items() if name not in seen
    ]
    text = "no usable candidate" + (f" ({'; '.join(dict.fromkeys(reasons))})" if reasons else " in the chain")
    return f"{text}; last: {_describe(last)}" if last else text
