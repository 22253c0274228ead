"""`ProfileService.world` over a real store and heartbeat: when a profile has no room because of attempts under way,
a run is told to look again soon, not at the hour the window's records leave it (they may end using less)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.heartbeat.limits import parse_limit
from fleetd.heartbeat.service import Heartbeat
from fleetd.profiles.service import PENDING_RECHECK, ProfileService
from fleetd.records.loop import ChainStep
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput, TokenUsage
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.loops import LoopStore
from fleetd.store.profiles import ProfileStore
from fleetd.store.usage import UsageStore

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_room_taken_by_attempts_under_way_is_looked_at_again_within_a_minute(tmp_path: Path) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "f.db")
        try:
            store = ProfileStore(db)
            profile = Profile("tok", "claude_code", "subscription", str(tmp_path / "tok"),
                              limits=[parse_limit("1d=1500tok")], created_at=T0, updated_at=T0)  # fmt: skip
            await store.insert(profile)
            heartbeat = Heartbeat(store, UsageStore(db), EventLog(db), clock=lambda: T0, interval=3600, near_limit=0.9)
            await heartbeat.start()
            service = ProfileService(store, LoopStore(db), None, heartbeat, profiles_dir=tmp_path / "p",  # type: ignore[arg-type]
                                     clock=lambda: T0)  # fmt: skip
            ok = ParsedOutput("succeeded", usage=TokenUsage(input_tokens=600))
            await heartbeat.attempt_finished(profile, ok, T0, None)  # 600 used: one attempt uses about 600
            steps = [ChainStep("claude_code", ("tok",))]
            world, _ = await service.world(steps)
            assert world.profiles["tok"].no_room is None  # 600 + 600 of 1,500
            service.reserve(profile)  # one under way: 600 + 600 + 600 would pass 1,500
            world, _ = await service.world(steps)
            view = world.profiles["tok"]
            assert view.no_room == "1d=1500tok: 600 used, 1 attempt(s) under way, one uses about 600"
            # Not at T0 + 1 day, when the 600 leave the window: the one under way may end using less, or nothing.
            assert view.room_at == T0 + PENDING_RECHECK
            await heartbeat.stop()
        finally:
            await db.close()

    asyncio.run(go())


def test_room_taken_by_what_is_recorded_waits_for_the_window(tmp_path: Path) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "f.db")
        try:
            store = ProfileStore(db)
            profile = Profile("tok", "claude_code", "subscription", str(tmp_path / "tok"),
                              limits=[parse_limit("1d=1000tok")], created_at=T0, updated_at=T0)  # fmt: skip
            await store.insert(profile)
            heartbeat = Heartbeat(store, UsageStore(db), EventLog(db), clock=lambda: T0, interval=3600, near_limit=0.9)
            await heartbeat.start()
            service = ProfileService(store, LoopStore(db), None, heartbeat, profiles_dir=tmp_path / "p",  # type: ignore[arg-type]
                                     clock=lambda: T0)  # fmt: skip
            ok = ParsedOutput("succeeded", usage=TokenUsage(input_tokens=600))
            await heartbeat.attempt_finished(profile, ok, T0, None)  # 600 used, and the next about 600: 1,200
            world, _ = await service.world([ChainStep("claude_code", ("tok",))])
            assert world.profiles["tok"].room_at == T0 + timedelta(days=1)
            await heartbeat.stop()
        finally:
            await db.close()

    asyncio.run(go())
