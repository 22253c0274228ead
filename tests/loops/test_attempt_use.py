"""An attempt under a profile is, at every moment, either open in the store (crash recovery then counts it as a
request of its profile) or closed with its use counted: its end and its use are one transaction. Its end used to
be written first, and its use only once the heartbeat's lock was free (a beat reading transcripts holds it for
seconds): a kill -9 between the two left it closed and never counted, and a `1d=1req` profile ran twice."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from fleetd.loops.executor import Executor
from fleetd.records.loop import Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc
from tests.harness import STANDIN_BIN, capture_folder, captures_dir
from tests.loops.executors import OneProfile


class SlowToCount(OneProfile):
    """Counting an attempt's use waits until `counting` is let go, then writes its end with it."""

    def __init__(self, profile: Profile, db: Database) -> None:
        super().__init__(profile, db)
        self.arrived = asyncio.Event()
        self.counting = asyncio.Event()

    async def attempt_finished(
        self, profile: Profile, parsed: ParsedOutput, at: datetime, cost: float | None, settle: object = None,
        end: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:  # fmt: skip
        self.arrived.set()
        await self.counting.wait()
        await super().attempt_finished(profile, parsed, at, cost, settle, end)


def test_an_attempt_stays_open_until_its_use_is_counted(tmp_path: Path) -> None:
    capture_folder("codex_ok_codex-prof-quiet")  # a missing fixture fails, never skips

    async def go() -> None:
        db = await Database.open(tmp_path / "x.db")
        try:
            now = now_utc()
            env = {"PATH": f"{STANDIN_BIN}:{os.environ['PATH']}", "STANDIN_SCENARIO": "ok",
                   "STANDIN_CAPTURES": str(captures_dir())}  # fmt: skip
            loop = Loop(name="cx", schedule=Schedule("every", "1h", "UTC"), backend="codex", prompt="hi", env=env,
                        timeout_s=60, created_at=now, updated_at=now)  # fmt: skip
            await LoopStore(db).insert(loop)
            profiles = SlowToCount(Profile("cx", "codex", "subscription", str(tmp_path / "codex-home")), db)
            attempts = AttemptStore(db)
            ex = Executor(RunStore(db), attempts, profiles, log_path=lambda i: tmp_path / f"{i}.log",  # type: ignore[arg-type]
                          tmp_root=tmp_path / "tmp", tag_prefix=f"use{os.getpid()}", clock=now_utc,
                          local_tz=ZoneInfo("UTC"), kill_grace=0.5)  # fmt: skip
            run = await ex.fire(loop, "manual", now)
            assert run is not None
            await asyncio.wait_for(profiles.arrived.wait(), 30)
            [attempt] = await attempts.for_run(run.id)
            assert attempt.finished_at is None  # not counted yet: still open, as recovery would count it
            profiles.counting.set()
            assert await ex.wait_idle(30)
            [attempt] = await attempts.for_run(run.id)
            assert attempt.finished_at is not None and attempt.outcome == "succeeded"
        finally:
            await db.close()

    asyncio.run(go())
