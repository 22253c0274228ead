"""The heartbeat service on a real SQLite file with an injected clock: windows of hours pass in
milliseconds; concurrent starts are spread by reservations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.backends.result import ParsedOutput, TokenUsage
from fleetd.heartbeat.limits import parse_limit
from fleetd.heartbeat.service import Heartbeat
from fleetd.profiles.model import Profile
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.profiles import ProfileStore
from fleetd.store.usage import NewUsage, UsageStore

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def run(tmp_path: Path, body: Callable[[Heartbeat, Clock, UsageStore, list[Profile]], Awaitable[None]]) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "hb.db")
        clock = Clock()
        store, usage = ProfileStore(db), UsageStore(db)
        profiles = []
        for name in ("a", "b"):
            p = Profile(name, "claude_code", "subscription", str(tmp_path / name), limits=[parse_limit("5h=1000tok")],
                        created_at=T0, updated_at=T0)  # fmt: skip
            await store.insert(p)
            profiles.append(p)
        hb = Heartbeat(store, usage, EventLog(db), clock=clock, interval=3600)
        await hb.start()
        try:
            await body(hb, clock, usage, profiles)
        finally:
            await hb.stop()
            await db.close()

    asyncio.run(go())


def ok(tokens: int) -> ParsedOutput:
    return ParsedOutput("succeeded", usage=TokenUsage(input_tokens=tokens))


def test_a_five_hour_window_fills_and_empties_with_the_clock(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        await hb.attempt_finished(a, ok(600), clock.now, None)
        clock.now += timedelta(hours=1)
        await hb.attempt_finished(a, ok(450), clock.now, None)
        assert hb.states["a"].status.state == "exhausted"
        # Back under the limit when the first 600 roll out, 5 h after they were used.
        assert hb.states["a"].status.exhausted_until == T0 + timedelta(hours=5)
        assert hb.active["claude_code"] == ("b", False)
        clock.now = T0 + timedelta(hours=5, seconds=1)
        await hb.beat()
        assert hb.states["a"].status.state == "available" and hb.states["a"].status.unconfirmed
        await hb.attempt_finished(a, ok(10), clock.now, None)
        assert not hb.states["a"].status.unconfirmed

    run(tmp_path, body)


def test_rate_limit_reset_from_the_cli_wins_and_restart_keeps_it(tmp_path: Path) -> None:
    reset = T0 + timedelta(hours=3, minutes=17)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        limited = ParsedOutput("failed", "rate_limited", reset_at=reset, message="You've hit your limit")
        await hb.attempt_finished(profiles[0], limited, clock.now, None)
        assert hb.states["a"].status.exhausted_until == reset
        reloaded = await usage.load_states()
        assert reloaded["a"].status.exhausted_until == reset and reloaded["a"].status.state == "exhausted"
        ordered, earliest = await hb.plan(profiles)
        assert [p.name for p in ordered] == ["b"] and earliest == reset
        clock.now = reset + timedelta(seconds=1)
        ordered, _ = await hb.plan(profiles)
        assert {p.name for p in ordered} == {"a", "b"}

    run(tmp_path, body)


def test_concurrent_starts_are_spread_by_reservations(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        await usage.add([NewUsage("a", clock.now, "agent", 300), NewUsage("b", clock.now, "agent", 320)])
        await hb.beat()
        first, _ = await hb.plan(profiles)
        assert first[0].name == "a"  # 70 % headroom against 68 %
        hb.reserve("a")  # the first run took it
        second, _ = await hb.plan(profiles)
        assert second[0].name == "b"
        hb.release("a")
        assert (await hb.plan(profiles))[0][0].name == "a"

    run(tmp_path, body)


def test_agent_records_of_fleetds_own_sessions_are_not_counted_twice(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        own = ParsedOutput("succeeded", usage=TokenUsage(input_tokens=100), session_id="s-1")
        await hb.attempt_finished(profiles[0], own, clock.now, None)
        assert await usage.attempt_sessions("a", T0 - timedelta(days=1)) == {"s-1"}
        added = await usage.add([NewUsage("a", clock.now, "agent", 5, dedupe_key="m1:r1")])
        again = await usage.add([NewUsage("a", clock.now, "agent", 5, dedupe_key="m1:r1")])
        assert (added, again) == (1, 0)

    run(tmp_path, body)


def test_the_near_limit_threshold_is_the_daemons_setting(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        await usage.add([NewUsage("a", clock.now, "agent", 920)])
        await hb.beat()
        assert hb.states["a"].status.state == "near_limit"  # 92 % ≥ the default 90 %
        hb.near_limit = 0.95
        await hb.beat()
        assert hb.states["a"].status.state == "available"

    run(tmp_path, body)


def test_stop_is_bounded_when_a_watch_event_lands_in_the_same_instant(tmp_path: Path) -> None:
    # The watcher's only effect is to wake the beat loop. Waking it in the same loop iteration as
    # stop() cancels it let Python 3.11's wait_for return the wake-up and drop the cancellation:
    # the beat loop ran on and stop() awaited it forever (a daemon that ignored SIGTERM).
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        for _ in range(5):
            await asyncio.sleep(0)  # the beat loop is now waiting for its next wake-up
        loop = asyncio.get_running_loop()
        began = loop.time()
        hb._wake.set()  # what a change in a watched directory does
        stopping = asyncio.ensure_future(hb.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        assert done, "heartbeat.stop() did not return"
        assert loop.time() - began < 2
        assert [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("heartbeat")] == []

    run(tmp_path, body)
