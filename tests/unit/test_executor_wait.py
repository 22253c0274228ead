"""A run waiting for a profile's reset sleeps: counted wake-ups on an event loop whose time is virtual.

The loop's clock jumps to the next timer whenever every task is idle, so an hour's wait takes
milliseconds, and a busy wait (polling, or re-planning at once) shows as many wake-ups at one
instant instead of passing unnoticed in a few real seconds.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetd.loops.executor import MAX_WAIT_SLEEP, ActiveRun, Executor
from fleetd.loops.runlog import RunLog
from fleetd.profiles.service import PENDING_RECHECK
from fleetd.records.loop import ChainStep, Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.routing.router import ProfileView, World

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WAIT = timedelta(minutes=95)
WAKE_BUDGET = math.ceil(WAIT.total_seconds() / MAX_WAIT_SLEEP) + 2  # one re-check per MAX_WAIT_SLEEP, plus the ends
RUNAWAY = 1000  # far past any sane count: stop a busy loop instead of spinning forever at one virtual instant


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self.loop.now += timeout  # nothing to do until the next timer: go there at once
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


class Clock:
    """The executor's wall clock, on the loop's virtual time; counts how often it is read."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self.loop = loop
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        if self.reads > RUNAWAY:
            raise AssertionError(f"busy wait: the clock was read {self.reads} times by {self.elapsed()} s")
        return T0 + timedelta(seconds=self.loop.now)

    def elapsed(self) -> float:
        return self.loop.now


def run_virtual(make: Callable[[Clock], Awaitable[Any]]) -> tuple[Any, Clock]:
    loop = VirtualTimeLoop()
    clock = Clock(loop)
    try:
        return loop.run_until_complete(make(clock)), clock  # type: ignore[arg-type]
    finally:
        loop.close()


def executor(clock: Clock, tmp_path: Path, runs: object = None, profiles: object = None) -> Executor:
    return Executor(
        runs,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        profiles,  # type: ignore[arg-type]
        log_path=lambda run_id: tmp_path / f"{run_id}.log",
        tmp_root=tmp_path,
        tag_prefix="test",
        clock=clock,
        local_tz=UTC,
        kill_grace=0.5,
    )


def test_sleep_until_wakes_at_the_reset_and_only_to_recheck(tmp_path: Path) -> None:
    async def go(clock: Clock) -> None:
        await executor(clock, tmp_path)._sleep_until(T0 + WAIT, ActiveRun())

    _, clock = run_virtual(go)
    assert clock.elapsed() == pytest.approx(WAIT.total_seconds())  # not before the reset, and not after it
    assert clock.reads <= WAKE_BUDGET


def test_an_interrupt_ends_the_wait_at_once(tmp_path: Path) -> None:
    async def go(clock: Clock) -> None:
        slot = ActiveRun()
        asyncio.get_running_loop().call_later(100, slot.interrupted.set)
        await executor(clock, tmp_path)._sleep_until(T0 + WAIT, slot)

    _, clock = run_virtual(go)
    assert clock.elapsed() == pytest.approx(100)


class Waits:
    """One profile with no headroom until T0 + WAIT, then disabled (the run ends without a child)."""

    clock: Clock

    def __init__(self) -> None:
        self.plans = 0

    async def world(self, steps: list[ChainStep]) -> tuple[World, dict[str, Profile]]:
        self.plans += 1
        if self.plans > RUNAWAY:
            raise AssertionError(f"busy wait: planned {self.plans} times by {self.clock.elapsed()} s")
        now = self.clock()
        return World(now, {"a": self.view(now)}), {"a": Profile("a", "claude_code", "subscription", str(self.clock))}

    def view(self, now: datetime) -> ProfileView:
        if now < T0 + WAIT:
            return ProfileView("a", "claude_code", "subscription", "exhausted", until=T0 + WAIT)
        return ProfileView("a", "claude_code", "subscription", "disabled", reason="gone")

    async def run_waiting(self, loop: Loop, run_id: int, until: datetime) -> None:
        pass

    async def candidate_skipped(self, loop: Loop, run_id: int, profile: str, why: str) -> None:
        pass


class Runs:
    def __init__(self) -> None:
        self.waiting: list[datetime | None] = []
        self.announced: list[bool] = []

    async def set_waiting(
        self, run_id: int, until: datetime | None, announce: bool = True, route: list[dict[str, Any]] | None = None
    ) -> None:
        self.waiting.append(until)
        self.announced.append(announce and until is not None)

    async def set_route(self, run_id: int, route: list[dict[str, Any]]) -> None:
        pass


def test_a_waiting_run_plans_again_only_after_the_reset(tmp_path: Path) -> None:
    loop = Loop("waits", Schedule("every", "1h", "UTC"), "claude_code", prompt="hi")
    runs, profiles = Runs(), Waits()

    async def go(clock: Clock) -> tuple[str, int | None, str | None]:
        profiles.clock = clock
        run = type("R", (), {"id": 7})()
        runlog = RunLog(tmp_path / "7.log", 1 << 20)
        try:
            return await executor(clock, tmp_path, runs, profiles)._attempts(loop, run, ActiveRun(), runlog)  # type: ignore[arg-type]
        finally:
            runlog.close()

    (status, _, error), clock = run_virtual(go)
    assert status == "failed" and error is not None and error.startswith("no usable candidate (a: disabled")
    assert runs.waiting == [T0 + WAIT, None]  # waited once, for the reset, then back to running
    assert clock.elapsed() == pytest.approx(WAIT.total_seconds())
    assert profiles.plans <= 2 + WAIT.total_seconds() / MAX_WAIT_SLEEP
    assert clock.reads <= 2 * WAKE_BUDGET


class BusyThenGone(Waits):
    """One profile whose room attempts under way take for three looks (one of theirs ends 10 s after each), then
    disabled (the run ends without a child)."""

    executor: Executor

    def view(self, now: datetime) -> ProfileView:
        if self.plans > 3:
            return ProfileView("a", "claude_code", "subscription", "disabled", reason="gone")
        asyncio.get_running_loop().call_later(10, self.executor.room_freed, "a")
        busy = f"1d=9req: {self.plans} used, 1 attempt(s) under way"
        return ProfileView("a", "claude_code", "subscription", no_room=busy, room_at=now + PENDING_RECHECK,
                           room_pending=True)  # fmt: skip


def test_a_run_waiting_on_attempts_under_way_looks_again_as_they_end_and_tells_its_wait_once(tmp_path: Path) -> None:
    # It looked again only at the bound it was told (a minute then); each look that still found no room was told as
    # a new wait: a `run.waiting` event each time (hooks get them), and the store's status flipped back and forth.
    loop = Loop("waits", Schedule("every", "1h", "UTC"), "claude_code", prompt="hi", on_exhausted="wait")
    runs, profiles = Runs(), BusyThenGone()

    async def go(clock: Clock) -> tuple[str | None, set[ActiveRun]]:
        profiles.clock = clock
        ex = profiles.executor = executor(clock, tmp_path, runs, profiles)
        run = type("R", (), {"id": 7})()
        runlog = RunLog(tmp_path / "7.log", 1 << 20)
        try:
            _, _, error = await ex._attempts(loop, run, ActiveRun(), runlog)  # type: ignore[arg-type]
            return error, ex._waiting
        finally:
            runlog.close()

    (error, waiting), clock = run_virtual(go)
    assert error is not None and error.startswith("no usable candidate (a: disabled")
    assert clock.elapsed() == pytest.approx(3 * 10)  # each look as an attempt ended, not at the 5 min bound
    # Waiting once (its bound moved at each look, told without an event), then running again: never back and forth.
    assert runs.waiting[-1] is None and None not in runs.waiting[:-1] and len(runs.waiting) == 4, runs.waiting
    assert runs.announced == [True, False, False, False]
    assert not waiting  # nothing left to wake
