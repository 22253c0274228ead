"""An Executor over a real store, for the command backend (no profile needed), and a loop in that store, as the
executor tests build them; a pool of one profile for those of an agent backend."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fleetd.loops.executor import Executor
from fleetd.records.loop import ChainStep, Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput
from fleetd.routing.router import ProfileView, World
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc


class OneProfile:
    """The pool is one profile, tried once: after its attempt nothing has headroom. Each attempt's end is written
    with its use, as the heartbeat does (`finished`: what each said)."""

    def __init__(self, profile: Profile, db: Database) -> None:
        self.profile, self.db = profile, db
        self.planned = 0
        self.finished: list[ParsedOutput] = []

    async def world(self, steps: list[ChainStep]) -> tuple[World, dict[str, Profile]]:
        self.planned += 1
        p = self.profile
        state = "available" if self.planned == 1 else "disabled"
        return World(now_utc(), {p.name: ProfileView(p.name, p.backend, p.tier, state)}), {p.name: p}

    def claim_probe(self, profile: Profile) -> bool:
        return True

    async def candidate_skipped(self, loop: Loop, run_id: int, profile: str, why: str) -> None:
        pass

    async def secret(self, profile: Profile) -> str | None:
        return None

    async def known_secrets(self) -> Collection[str]:
        return []

    def reserve(self, profile: Profile) -> None:
        pass

    def release(self, profile: Profile, probe: bool = False) -> None:
        pass

    def free_probe(self, profile: Profile) -> None:
        pass

    async def attempt_finished(
        self, profile: Profile, parsed: ParsedOutput, at: datetime, cost: float | None, settle: object = None,
        end: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:  # fmt: skip
        self.finished.append(parsed)
        if end is not None:
            await self.db.write(end)

    async def run_waiting(self, loop: Loop, run_id: int, until: datetime) -> None:
        raise AssertionError("nothing to wait for")


class NoProfiles:
    async def known_secrets(self) -> list[str]:
        return []


def command_executor(
    db: Database, tmp_path: Path, tag: str, clock: Callable[[], datetime] = now_utc, events: EventLog | None = None
) -> Executor:  # fmt: skip
    """Run logs and TMPDIRs under `tmp_path`, processes tagged `tag`, a short kill grace; runs' events into `events`."""
    return Executor(RunStore(db, events), AttemptStore(db), NoProfiles(), log_path=lambda i: tmp_path / f"{i}.log",  # type: ignore[arg-type]
                    tmp_root=tmp_path / "tmp", tag_prefix=tag, clock=clock, local_tz=ZoneInfo("UTC"),
                    kill_grace=0.5)  # fmt: skip


async def added_loop(
    db: Database, name: str, now: datetime, *, every: str = "1h", backend: str = "command", **fields: Any
) -> Loop:
    """A loop firing every `every`, defined at `now`, stored."""
    loop = Loop(name=name, schedule=Schedule("every", every, "UTC"), backend=backend, created_at=now, updated_at=now,
                **fields)  # fmt: skip
    await LoopStore(db).insert(loop)
    return loop
