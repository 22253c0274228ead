"""`ProfileService.world` over a real store and heartbeat: when a profile has no room because of attempts under way,
a run is told to look again soon, not at the hour the window's records leave it (they may end using less)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.heartbeat.limits import parse_limit
from fleetd.heartbeat.service import Heartbeat
from fleetd.profiles.service import PENDING_RECHECK, ProfileService
from fleetd.records.loop import ChainStep
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput, TokenUsage
from fleetd.routing.router import ProfileView, _why_not
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.loops import LoopStore
from fleetd.store.profiles import ProfileStore
from fleetd.store.usage import UsageStore

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _after_one_attempt_of_600(tmp_path: Path, limit: str, under_way: int, fresh: bool = False) -> ProfileView:
    """The profile's view after one attempt used 600 tokens (`fresh`: none yet), with `under_way` more attempts
    reserved."""

    async def go() -> ProfileView:
        tmp_path.mkdir(parents=True, exist_ok=True)
        db = await Database.open(tmp_path / "f.db")
        try:
            store = ProfileStore(db)
            profile = Profile("tok", "claude_code", "subscription", str(tmp_path / "tok"),
                              limits=[parse_limit(limit)], created_at=T0, updated_at=T0)  # fmt: skip
            await store.insert(profile)
            heartbeat = Heartbeat(store, UsageStore(db), EventLog(db), clock=lambda: T0, interval=3600, near_limit=0.9)
            await heartbeat.start()
            service = ProfileService(store, LoopStore(db), None, heartbeat, profiles_dir=tmp_path / "p",  # type: ignore[arg-type]
                                     clock=lambda: T0)  # fmt: skip
            ok = ParsedOutput("succeeded", usage=TokenUsage(input_tokens=600))
            if not fresh:
                await heartbeat.attempt_finished(profile, ok, T0, None)  # one attempt uses about 600
            for _ in range(under_way):
                service.reserve(profile)
            world, _ = await service.world([ChainStep("claude_code", ("tok",))])
            await heartbeat.stop()
            return world.profiles["tok"]
        finally:
            await db.close()

    return asyncio.run(go())


def test_room_taken_by_attempts_under_way_is_looked_at_again_within_a_minute(tmp_path: Path) -> None:
    assert _after_one_attempt_of_600(tmp_path / "a", "1d=1500tok", 0).no_room is None  # 600 + 600 of 1,500
    view = _after_one_attempt_of_600(tmp_path / "b", "1d=1500tok", 1)  # 600 + 600 under way + 600 would pass it
    assert view.no_room == "1d=1500tok: 600 used, 1 attempt(s) under way, one uses about 600"
    # Not at T0 + 1 day, when the 600 leave the window: the one under way may end using less, or nothing.
    assert view.room_at == T0 + PENDING_RECHECK


def test_runs_on_a_fresh_profile_with_a_token_limit_go_one_at_a_time_until_one_has_ended(tmp_path: Path) -> None:
    # What one uses is not known before one has ended: three runs started together on a fresh `1d=900tok` profile
    # took it to 2,451 (272 %). The first goes; the next waits for it (as a gateway call waits), then knows.
    assert _after_one_attempt_of_600(tmp_path / "a", "1d=900tok", 0, fresh=True).no_room is None
    view = _after_one_attempt_of_600(tmp_path / "b", "1d=900tok", 1, fresh=True)
    assert view.no_room == "1d=900tok: 0 used, 1 attempt(s) under way" and view.room_pending
    assert view.room_at == T0 + PENDING_RECHECK  # and looked at again as the one under way ends (`room_freed`)


def test_room_taken_by_what_is_recorded_waits_for_the_window(tmp_path: Path) -> None:
    view = _after_one_attempt_of_600(tmp_path, "1d=1000tok", 0)  # 600 used, and the next about 600: 1,200
    assert view.no_room is not None and view.room_at == T0 + timedelta(days=1)


class _Spent:
    """The profile's recorded cost in the last 24 h, as the attempts store would answer it."""

    def __init__(self, usd: float) -> None:
        self.usd = usd

    async def profile_cost_since(self, profile: str, since: datetime) -> float:
        return self.usd

    async def profile_costs_since(self, profile: str, since: datetime) -> list[tuple[datetime, float]]:
        """All of it in one attempt, 20 h before T0: it leaves the window 4 h after T0."""
        return [(T0 - timedelta(hours=20), self.usd)] if self.usd else []


def _capped_view(tmp_path: Path, spent: float, under_way: int = 0, fresh: bool = False) -> ProfileView:
    """The view of a profile capped at $1.00 a day that has spent `spent`, its attempts costing about $0.33 each
    (`fresh`: none has ended yet), with `under_way` attempts reserved."""

    async def go() -> ProfileView:
        tmp_path.mkdir(parents=True)
        db = await Database.open(tmp_path / "f.db")
        try:
            store = ProfileStore(db)
            profile = Profile("dear", "claude_code", "subscription", str(tmp_path / "dear"), daily_cost=1.0,
                              created_at=T0, updated_at=T0)  # fmt: skip
            await store.insert(profile)
            heartbeat = Heartbeat(store, UsageStore(db), EventLog(db), clock=lambda: T0, interval=3600, near_limit=0.9)
            await heartbeat.start()
            service = ProfileService(store, LoopStore(db), None, heartbeat, profiles_dir=tmp_path / "p",  # type: ignore[arg-type]
                                     clock=lambda: T0, attempts=_Spent(spent))  # type: ignore[arg-type]  # fmt: skip
            ok = ParsedOutput("succeeded", usage=TokenUsage(input_tokens=600), cost_usd=0.33)
            if not fresh:
                await heartbeat.attempt_finished(profile, ok, T0, 0.33)
            for _ in range(under_way):
                service.reserve(profile)
            world, _ = await service.world([ChainStep("claude_code", ("dear",))])
            await heartbeat.stop()
            return replace(world.profiles["dear"], unavailable=None)  # no `claude` on this host: beside the point
        finally:
            await db.close()

    return asyncio.run(go())


def _daily_cost_reason(tmp_path: Path, spent: float) -> str | None:
    """Why the router passes over that profile (None: it is not passed over)."""
    return _why_not(_capped_view(tmp_path, spent), T0, explicit=True, tiers=frozenset())[0]


def test_a_daily_cost_the_next_attempt_would_pass_is_not_said_to_be_passed_already(tmp_path: Path) -> None:
    assert _daily_cost_reason(tmp_path / "a", 0.50) is None  # $0.50 + $0.33 fits in $1.00
    # $0.70 + $0.33 would pass it: the candidate is passed over, saying so, not "over its daily cost" at $0.70 of $1.
    assert _daily_cost_reason(tmp_path / "b", 0.70) == (
        "no room in its daily cost: $0.70 of $1.00 spent in the last 24 h, and one costs about $0.33"
    )
    assert _daily_cost_reason(tmp_path / "c", 1.00) == "over its daily cost: $1.00 of $1.00 in the last 24 h"


def test_the_gateways_second_look_refuses_a_profile_exhausted_since_its_world_was_read(tmp_path: Path) -> None:
    # The gateway routes by a world up to a quarter of a second old, then asks again just before it calls
    # (`room_taken`): that said "room" for a profile exhausted meanwhile, as it judged only usable ones.
    async def go() -> tuple[str, datetime | None] | None:
        db = await Database.open(tmp_path / "f.db")
        try:
            store = ProfileStore(db)
            profile = Profile("one", "openai_compat", "metered", str(tmp_path / "one"), limits=[parse_limit("1d=1req")],
                              created_at=T0, updated_at=T0)  # fmt: skip
            await store.insert(profile)
            heartbeat = Heartbeat(store, UsageStore(db), EventLog(db), clock=lambda: T0, interval=3600, near_limit=0.9)
            await heartbeat.start()
            service = ProfileService(store, LoopStore(db), None, heartbeat, profiles_dir=tmp_path / "p",  # type: ignore[arg-type]
                                     clock=lambda: T0)  # fmt: skip
            await heartbeat.attempt_finished(profile, ParsedOutput("succeeded", usage=TokenUsage(10)), T0, None)
            assert heartbeat.status("one").state == "exhausted"  # by its own count: 1 of 1
            taken = service.room_taken(profile)
            await heartbeat.stop()
            return taken
        finally:
            await db.close()

    taken = asyncio.run(go())
    assert taken is not None and taken[1] == T0 + timedelta(days=1), taken
    assert "exhausted" in taken[0]


def test_a_daily_cost_only_attempts_under_way_take_is_a_wait_not_a_refusal(tmp_path: Path) -> None:
    # With room for one more once those under way end (they may cost less), a run with `--on-exhausted wait` failed
    # at once ("no usable candidate"), where a `--limit 1d=…usd` of the same room made it wait.
    pending = _capped_view(tmp_path / "a", 0.50, 1)  # $0.50 + $0.33 under way + $0.33 passes $1; without it, fits
    assert pending.over_daily_cost is None and pending.room_pending and pending.room_at == T0 + PENDING_RECHECK
    assert (
        pending.no_room == "daily cost $0.50 of $1.00 spent in the last 24 h, 1 attempt(s) under way, and one "
        "costs about $0.33"
    )
    spent = _capped_view(tmp_path / "b", 0.70)  # what is spent leaves no room by itself: a refusal until it leaves
    assert spent.over_daily_cost is not None and not spent.room_pending


def test_a_profile_over_its_daily_cost_says_when_a_run_may_wait_for_it(tmp_path: Path) -> None:
    """A run with nowhere else to go failed at once ("no usable candidate"), where the same cap as a `--limit 1d=…usd`
    made it wait: the router knew no time to wait for."""
    view = _capped_view(tmp_path / "over", 0.70)  # $0.70 spent 20 h ago, and one costs about $0.33: room once it leaves
    assert view.cost_room_at == T0 + timedelta(hours=4)
    assert _why_not(view, T0, explicit=True, tiers=frozenset())[1:] == (view.cost_room_at, view.cost_room_at)
    assert _capped_view(tmp_path / "room", 0.50).cost_room_at is None  # room now


def test_runs_on_a_fresh_profile_with_a_daily_cost_go_one_at_a_time_until_one_has_ended(tmp_path: Path) -> None:
    # What one costs is not known before one has ended: runs started together on a fresh profile were all let in (a
    # gateway key's calls, and a token limit's runs, already went one at a time), and passed its cap together.
    alone = _capped_view(tmp_path / "a", 0.0, 0, fresh=True)
    assert alone.over_daily_cost is None and alone.no_room is None
    second = _capped_view(tmp_path / "b", 0.0, 1, fresh=True)  # the first is under way: the next waits for it
    assert second.over_daily_cost is None and second.room_pending and second.room_at == T0 + PENDING_RECHECK
    assert second.no_room == (
        "$0.00 of its $1.00 daily cost spent, 1 attempt(s) under way, what one costs not known yet"
    )


def test_a_run_looks_ahead_only_where_the_cli_cannot_be_held_to_its_budget(tmp_path: Path) -> None:
    # Claude Code is given what the run has left (`--max-budget-usd`) and stops itself there: a repair that resumes a
    # session costs less than the profile's median attempt, and the look ahead would have refused it.
    assert _capped_view(tmp_path / "cc", 0.10).attempt_cost is None


class _Costs:
    """The profile's costs in the last 24 h, as the attempts store would answer them (settable)."""

    def __init__(self, costs: list[tuple[datetime, float]]) -> None:
        self.costs = costs

    async def profile_cost_since(self, profile: str, since: datetime) -> float:
        return sum(cost for _, cost in self.costs)

    async def profile_costs_since(self, profile: str, since: datetime) -> list[tuple[datetime, float]]:
        return list(self.costs)


def test_when_a_profile_has_room_again_is_found_again_once_that_time_has_come(tmp_path: Path) -> None:
    # One cost leaving the window and another of the same amount coming kept the spend as it was: the room time,
    # cached by the spend, stayed in the past, and a waiting run looked again and again without a pause.
    async def go() -> tuple[ProfileView, ProfileView]:
        db = await Database.open(tmp_path / "f.db")
        now = [T0]
        try:
            store = ProfileStore(db)
            profile = Profile("dear", "openai_compat", "metered", str(tmp_path / "dear"), base_url="http://127.0.0.1:9/v1",
                              daily_cost=1.0, created_at=T0 - timedelta(days=2), updated_at=T0)  # fmt: skip
            await store.insert(profile)
            heartbeat = Heartbeat(store, UsageStore(db), EventLog(db), clock=lambda: now[0], interval=3600,
                                  near_limit=0.9)  # fmt: skip
            await heartbeat.start()
            costs = _Costs([(T0 - timedelta(hours=20), 0.70)])
            service = ProfileService(store, LoopStore(db), None, heartbeat, profiles_dir=tmp_path / "p",  # type: ignore[arg-type]
                                     clock=lambda: now[0], attempts=costs)  # type: ignore[arg-type]  # fmt: skip
            ok = ParsedOutput("succeeded", usage=TokenUsage(input_tokens=600), cost_usd=0.33)
            await heartbeat.attempt_finished(profile, ok, T0 - timedelta(hours=20), 0.33)
            steps = [ChainStep("openai_compat", ("dear",))]
            first = (await service.world(steps))[0].profiles["dear"]
            now[0] = T0 + timedelta(hours=5)  # it left at T0 + 4 h; another of $0.70 came at T0 + 4 h 30
            costs.costs = [(T0 + timedelta(hours=4, minutes=30), 0.70)]
            second = (await service.world(steps))[0].profiles["dear"]
            await heartbeat.stop()
            return first, second
        finally:
            await db.close()

    first, second = asyncio.run(go())
    assert first.cost_room_at == T0 + timedelta(hours=4)
    assert second.cost_room_at == T0 + timedelta(hours=28, minutes=30)
    # A backend the run's budget is not passed down to: the look ahead has its figure.
    assert (first.attempt_cost, first.attempt_tokens) == (0.33, 600)
