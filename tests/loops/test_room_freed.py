"""A run waiting on room that attempts under way take looks again as they end (`Executor.room_freed`), at most once
a `ROOM_LOOK_INTERVAL`: a busy gateway ends calls many times a second, and each look reads the store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from zoneinfo import ZoneInfo

from fleetd.loops.executor import ROOM_LOOK_INTERVAL, ActiveRun, Executor
from fleetd.timefmt import now_utc


def _executor(tmp_path: Path) -> Executor:
    return Executor(None, None, None, log_path=lambda i: tmp_path / f"{i}.log", tmp_root=tmp_path / "tmp",  # type: ignore[arg-type]
                    tag_prefix="room", clock=now_utc, local_tz=ZoneInfo("UTC"), kill_grace=0.5)  # fmt: skip


def _waiting(ex: Executor, on: set[str], looked_at: float) -> ActiveRun:
    slot = ActiveRun(waiting=True, waiting_on=frozenset(on), looked_at=looked_at)
    ex._waiting.add(slot)
    return slot


def test_an_attempts_end_wakes_only_the_runs_that_could_use_its_profile(tmp_path: Path) -> None:
    async def go() -> tuple[bool, bool]:
        ex = _executor(tmp_path)
        past = asyncio.get_running_loop().time() - ROOM_LOOK_INTERVAL
        mine, other = _waiting(ex, {"p", "q"}, past), _waiting(ex, {"r"}, past)
        ex.room_freed("p")
        await asyncio.wait_for(mine.look_again.wait(), 5)
        return mine.look_again.is_set(), other.look_again.is_set()

    assert asyncio.run(go()) == (True, False)


def test_many_ends_in_a_moment_wake_a_waiting_run_once_at_its_pace(tmp_path: Path) -> None:
    async def go() -> tuple[bool, bool, float]:
        ex = _executor(tmp_path)
        loop = asyncio.get_running_loop()
        began = loop.time()
        slot = _waiting(ex, {"p"}, began)  # it has just looked
        ex.room_freed("p")
        timer = slot.look_timer
        for _ in range(99):
            ex.room_freed("p")
        early = slot.look_again.is_set()
        await asyncio.wait_for(slot.look_again.wait(), 5)
        return early, slot.look_timer is timer, loop.time() - began

    early, one_timer, waited = asyncio.run(go())
    assert not early and one_timer  # one look, at its pace, not a hundred
    assert waited >= ROOM_LOOK_INTERVAL * 0.99


def test_a_wait_that_ends_takes_its_pending_look_with_it(tmp_path: Path) -> None:
    # A look timer left behind woke the run's next wait early.
    async def go() -> bool:
        ex = _executor(tmp_path)
        slot = _waiting(ex, {"p"}, asyncio.get_running_loop().time())
        ex.room_freed("p")
        ex._end_wait(slot)
        await asyncio.sleep(ROOM_LOOK_INTERVAL * 1.5)  # past when the look was due: nothing may set it now
        return slot.look_again.is_set() or slot in ex._waiting

    assert asyncio.run(go()) is False
