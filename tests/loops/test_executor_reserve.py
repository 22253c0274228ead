"""A run reserves the profile it tries before any await since it read the world: two runs starting together
cannot both see the last room of a limit (or both take a half-open circuit's one probe). Telling a skipped
candidate's event is an await; it used to come first, and the other run read the world meanwhile."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from fleetd.loops.executor import Executor
from fleetd.records.loop import ChainStep, Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput
from fleetd.routing.router import ProfileView, World
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc
from tests.harness import STANDIN_BIN, captures_dir

NAMES = ("gone", "one-left", "spare")  # tried in this order: gone is unavailable, one-left has room for one


class LastRoom:
    """`one-left` has room for one attempt: with one under way, no room is left (as the heartbeat judges)."""

    def __init__(self, tmp_path: Path) -> None:
        self.profiles = {n: Profile(n, "codex", "subscription", str(tmp_path / n)) for n in NAMES}
        self.under_way: dict[str, int] = {}
        self.stop: Callable[[int], Awaitable[object]] | None = None  # called as a skip is told
        self.stops: list[asyncio.Future[object]] = []

    async def world(self, steps: list[ChainStep]) -> tuple[World, dict[str, Profile]]:
        views = {n: ProfileView(n, "codex", "subscription") for n in NAMES}
        views["gone"] = ProfileView("gone", "codex", "subscription", unavailable="codex not on PATH")
        if self.under_way.get("one-left"):
            views["one-left"] = ProfileView("one-left", "codex", "subscription", no_room="1d=1req: 0 used, 1 "
                                            "attempt(s) under way", room_at=now_utc())  # fmt: skip
        return World(now_utc(), views), dict(self.profiles)

    def claim_probe(self, profile: Profile) -> bool:
        return False

    async def candidate_skipped(self, loop: Loop, run_id: int, profile: str, why: str) -> None:
        for _ in range(5):  # an event written: the other run's task gets its turns meanwhile
            await asyncio.sleep(0)
        if self.stop is not None:  # the stop comes while this run tells its skip (it waits for the run's end)
            stopping = asyncio.ensure_future(self.stop(run_id))
            for _ in range(5):
                await asyncio.sleep(0)
            self.stops.append(stopping)

    async def secret(self, profile: Profile) -> str | None:
        return None

    async def known_secrets(self) -> Collection[str]:
        return []

    def reserve(self, profile: Profile) -> None:
        self.under_way[profile.name] = self.under_way.get(profile.name, 0) + 1

    def release(self, profile: Profile, probe: bool = False) -> None:
        self.under_way[profile.name] -= 1

    def free_probe(self, profile: Profile) -> None:
        pass

    async def attempt_finished(
        self, profile: Profile, parsed: ParsedOutput, at: datetime, cost: float | None, settle: object = None,
        end: object = None,
    ) -> None:  # fmt: skip
        pass


def test_two_runs_starting_together_cannot_both_take_the_last_room(tmp_path: Path) -> None:
    async def go() -> list[str]:
        db = await Database.open(tmp_path / "x.db")
        try:
            now = now_utc()
            env = {"PATH": f"{STANDIN_BIN}:{os.environ['PATH']}", "STANDIN_SCENARIO": "ok",
                   "STANDIN_CAPTURES": str(captures_dir())}  # fmt: skip
            loops = [Loop(name=f"l{i}", schedule=Schedule("every", "1h", "UTC"), backend="codex", prompt="hi",
                          env=env, chain=[ChainStep("codex", NAMES)], timeout_s=60, created_at=now, updated_at=now)
                     for i in (1, 2)]  # fmt: skip
            for loop in loops:
                await LoopStore(db).insert(loop)
            runs = RunStore(db)
            ex = Executor(runs, AttemptStore(db), LastRoom(tmp_path), log_path=lambda i: tmp_path / f"{i}.log",  # type: ignore[arg-type]
                          tmp_root=tmp_path / "tmp", tag_prefix=f"reserve{os.getpid()}", clock=now_utc,
                          local_tz=ZoneInfo("UTC"), kill_grace=0.5)  # fmt: skip
            fired = await asyncio.gather(*(ex.fire(loop, "manual", now) for loop in loops))
            assert await ex.wait_idle(30)
            return [(await runs.get(run.id)).profile for run in fired if run is not None]
        finally:
            await db.close()

    assert sorted(asyncio.run(go())) == ["one-left", "spare"]


def test_a_run_stopped_while_it_tells_a_skip_gives_its_reservation_back(tmp_path: Path) -> None:
    # It returned `interrupted` with its profile still reserved: a `1d=1req` profile never had room again.
    async def go() -> dict[str, int]:
        db = await Database.open(tmp_path / "x.db")
        try:
            now = now_utc()
            loop = Loop(name="l1", schedule=Schedule("every", "1h", "UTC"), backend="codex", prompt="hi",
                        env={"PATH": f"{STANDIN_BIN}:{os.environ['PATH']}"}, chain=[ChainStep("codex", NAMES)],
                        timeout_s=60, created_at=now, updated_at=now)  # fmt: skip
            await LoopStore(db).insert(loop)
            profiles = LastRoom(tmp_path)
            ex = Executor(RunStore(db), AttemptStore(db), profiles, log_path=lambda i: tmp_path / f"{i}.log",  # type: ignore[arg-type]
                          tmp_root=tmp_path / "tmp", tag_prefix=f"reserve{os.getpid()}", clock=now_utc,
                          local_tz=ZoneInfo("UTC"), kill_grace=0.5)  # fmt: skip
            profiles.stop = lambda run_id: ex.stop(run_id, reason="stopped by hand")
            run = await ex.fire(loop, "manual", now)
            assert run is not None
            assert await ex.wait_idle(30)
            await asyncio.gather(*profiles.stops)
            assert (await RunStore(db).get(run.id)).status == "cancelled"
            return profiles.under_way
        finally:
            await db.close()

    assert asyncio.run(go()) == {"one-left": 0}
