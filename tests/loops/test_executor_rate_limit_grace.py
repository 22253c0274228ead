"""An attempt ended at its first rate-limit line (Codex, Aider) gets a short grace to exit by itself:
Codex prints its final error line ~0.2 s before it exits 1, and that exit code is what is recorded,
not the -15 of fleetd's kill. A CLI that goes on (reconnecting, sitting out a retry-after) is still
killed right after the grace."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from zoneinfo import ZoneInfo

from fleetd.loops.executor import RATE_LIMIT_EXIT_GRACE, Executor
from fleetd.records.loop import Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.records.run import Attempt
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc
from tests.harness import STANDIN_BIN, capture_folder, captures_dir
from tests.loops.executors import OneProfile

KILL_GRACE = 0.5


def codex_attempt(tmp_path: Path, scenario: str) -> Attempt:
    capture_folder("codex_429")  # a missing fixture fails, never skips

    async def go() -> Attempt:
        db = await Database.open(tmp_path / "x.db")
        try:
            now = now_utc()
            env = {"PATH": f"{STANDIN_BIN}:{os.environ['PATH']}", "STANDIN_SCENARIO": scenario,
                   "STANDIN_CAPTURES": str(captures_dir())}  # fmt: skip
            loop = Loop(name="cx", schedule=Schedule("every", "1h", "UTC"), backend="codex", prompt="hi", env=env,
                        timeout_s=60, created_at=now, updated_at=now)  # fmt: skip
            await LoopStore(db).insert(loop)
            profile = Profile("cx", "codex", "subscription", str(tmp_path / "codex-home"))
            attempts = AttemptStore(db)
            ex = Executor(RunStore(db), attempts, OneProfile(profile, db), log_path=lambda i: tmp_path / f"{i}.log",  # type: ignore[arg-type]
                          tmp_root=tmp_path / "tmp", tag_prefix=f"grace{os.getpid()}", clock=now_utc,
                          local_tz=ZoneInfo("UTC"), kill_grace=KILL_GRACE)  # fmt: skip
            run = await ex.fire(loop, "manual", now)
            assert run is not None
            assert await ex.wait_idle(30)
            [attempt] = await attempts.for_run(run.id)
            return attempt
        finally:
            await db.close()

    return asyncio.run(go())


def took(attempt: Attempt) -> float:
    assert attempt.finished_at is not None
    return (attempt.finished_at - attempt.started_at).total_seconds()


def test_codex_exiting_just_after_its_rate_limit_line_keeps_its_own_exit_code(tmp_path: Path) -> None:
    attempt = codex_attempt(tmp_path, "429_then_exit")
    assert attempt.error_class == "rate_limited"
    assert attempt.exit_code == 1  # not -15: it exited by itself 0.2 s after the line
    assert took(attempt) < 1.5


def test_a_cli_going_on_after_its_rate_limit_line_is_killed_after_the_grace(tmp_path: Path) -> None:
    attempt = codex_attempt(tmp_path, "429_reconnecting")  # reconnects every 3 s
    assert attempt.error_class == "rate_limited"
    assert attempt.exit_code is not None and attempt.exit_code < 0
    assert took(attempt) < RATE_LIMIT_EXIT_GRACE + KILL_GRACE + 1.5
