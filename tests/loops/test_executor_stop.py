"""A stop racing the run's own end: the run is recorded exactly once, as whichever came first.

The run's end is the moment the executor decides its status (the command has exited and what it left
behind is gone); a stop before that makes it `cancelled` (keeping the exit code it had), a stop after it
is refused and the run keeps its own status. A gate on the store's writes, or a leftover that holds the
run, keeps it at each boundary, so the order is fixed by the test, not by timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fleetd.loops.executor import Executor
from fleetd.records.loop import Loop, Schedule
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc


class Gate:
    """Holds a store write until opened; `reached` says a write is waiting at it."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.open = asyncio.Event()

    async def through(self) -> None:
        self.reached.set()
        await asyncio.wait_for(self.open.wait(), 10)


class GatedRuns(RunStore):
    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.gate = Gate()
        self.finishes: list[tuple[str, int | None]] = []

    async def finish(self, run_id: int, **kwargs: Any) -> None:
        self.finishes.append((kwargs["status"], kwargs.get("exit_code")))
        await self.gate.through()
        await super().finish(run_id, **kwargs)


class NoProfiles:
    async def known_secrets(self) -> list[str]:
        return []


@dataclass
class Setup:
    ex: Executor
    runs: GatedRuns
    attempts: AttemptStore
    loop: Loop


@asynccontextmanager
async def _setup(
    tmp_path: Path, command: str, *, timeout_s: float | None = None, kill_grace: float = 5.0
) -> AsyncIterator[Setup]:
    db = await Database.open(tmp_path / "s.db")
    runs, attempts = GatedRuns(db), AttemptStore(db)
    now = now_utc()
    loop = Loop(name="racer", schedule=Schedule("every", "1h", "UTC"), backend="command", command=command,
                workdir=str(tmp_path), timeout_s=timeout_s, created_at=now, updated_at=now)  # fmt: skip
    await LoopStore(db).insert(loop)
    ex = Executor(runs, attempts, NoProfiles(), log_path=lambda i: tmp_path / f"{i}.log",  # type: ignore[arg-type]
                  tmp_root=tmp_path / "tmp", tag_prefix="stop", clock=now_utc, local_tz=ZoneInfo("UTC"),
                  kill_grace=kill_grace)  # fmt: skip
    try:
        yield Setup(ex, runs, attempts, loop)
    finally:
        await ex.wait_idle(10)
        await db.close()


def test_the_runs_own_end_first_then_a_stop_is_refused(tmp_path: Path) -> None:
    async def go() -> tuple[bool, list[Any], str, int | None]:
        async with _setup(tmp_path, "exit 3") as s:
            run = await s.ex.fire(s.loop, "manual", datetime.now(UTC))
            assert run is not None
            await asyncio.wait_for(s.runs.gate.reached.wait(), 10)  # decided `failed`, not yet written
            stopper = asyncio.create_task(s.ex.stop(run.id, reason="stopped by a test"))
            await asyncio.sleep(0)  # the stop has looked at the run
            s.runs.gate.open.set()
            stopped = await stopper
            row = await s.runs.get(run.id)
            return stopped, s.runs.finishes, row.status, row.exit_code

    stopped, finishes, status, exit_code = asyncio.run(go())
    assert stopped is False
    assert finishes == [("failed", 3)]  # written once, as it ended by itself
    assert (status, exit_code) == ("failed", 3)


def test_a_stop_first_then_the_command_exits_by_itself_in_the_grace(tmp_path: Path) -> None:
    """The command ends itself (exit 3 on SIGTERM) inside the grace: still the stop's run."""

    async def go() -> tuple[bool, list[Any], str, str | None]:
        async with _setup(tmp_path, f"trap 'exit 3' TERM; touch {tmp_path}/up; sleep 30 & wait") as s:
            s.runs.gate.open.set()
            run = await s.ex.fire(s.loop, "manual", datetime.now(UTC))
            assert run is not None
            while not (tmp_path / "up").exists():  # the trap is set
                await asyncio.sleep(0.01)
            stopped = await s.ex.stop(run.id, reason="stopped by a test")
            row = await s.runs.get(run.id)
            return stopped, s.runs.finishes, row.status, row.error

    stopped, finishes, status, error = asyncio.run(go())
    assert stopped is True
    assert finishes == [("cancelled", 3)]
    assert (status, error) == ("cancelled", "stopped by a test")


def test_a_stop_after_the_command_exited_but_before_the_run_ended_cancels_it(tmp_path: Path) -> None:
    """The boundary: the command has exited 0, the run's status is not decided yet (a leftover that ignores
    SIGTERM holds the run in its leftover sweep's grace). The stop is first, so the run is `cancelled` (with
    the exit code it had), and its kill ends the wait at once."""

    async def go() -> tuple[bool, list[Any], str]:
        async with _setup(tmp_path, "(trap '' TERM; exec sleep 30) & exit 0") as s:
            s.runs.gate.open.set()
            run = await s.ex.fire(s.loop, "manual", datetime.now(UTC))
            assert run is not None
            slot = s.ex.running(s.loop)
            assert slot is not None
            deadline = asyncio.get_running_loop().time() + 10
            while slot.proc is None or slot.proc.returncode is None:  # the command itself has exited
                assert asyncio.get_running_loop().time() < deadline, "the command never exited"
                await asyncio.sleep(0.01)
            assert not slot.ended
            stopped = await s.ex.stop(run.id, kill=True, reason="stopped by a test")
            return stopped, s.runs.finishes, (await s.runs.get(run.id)).status

    stopped, finishes, status = asyncio.run(go())
    assert stopped is True
    assert finishes == [("cancelled", 0)]
    assert status == "cancelled"


def test_a_stop_in_the_kill_grace_of_a_timeout_is_refused_and_only_hurries_the_kill(tmp_path: Path) -> None:
    """The run's --timeout has decided its end (`timed_out`: its kill under way, a command that ignores SIGTERM
    holding it in the grace). A stop then is refused, as after any end, and the run stays `timed_out` (it
    was recorded `cancelled`, with no `run.timed_out` event for a hook to see); `--kill` still ends the
    grace at once rather than leave the command to the end of its 30 s."""

    async def go() -> tuple[bool, list[Any], str, float]:
        command = f"trap '' TERM; touch {tmp_path}/up; sleep 60"
        async with _setup(tmp_path, command, timeout_s=0.5, kill_grace=30.0) as s:
            s.runs.gate.open.set()
            run = await s.ex.fire(s.loop, "manual", datetime.now(UTC))
            assert run is not None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            log = tmp_path / f"{run.id}.log"
            while not (log.exists() and "timed out after" in log.read_text()):  # its kill's grace has begun
                assert loop.time() < deadline, "the run never timed out"
                await asyncio.sleep(0.01)
            started = loop.time()
            stopped = await s.ex.stop(run.id, kill=True, reason="stopped by a test")
            row = await s.runs.get(run.id)
            return stopped, s.runs.finishes, row.status, loop.time() - started

    stopped, finishes, status, took = asyncio.run(go())
    assert stopped is False
    assert [status for status, _ in finishes] == ["timed_out"]
    assert status == "timed_out"
    assert took < 10  # not the 30 s grace


def test_every_run_slot_signals_its_end_however_its_task_ends(tmp_path: Path) -> None:
    """A stop waits for every run in flight to signal its end. A run whose task ended outside its own
    handling (its log could not be created; cancelled before its first step) never did: the daemon's stop
    sat out the stop grace and the kill grace with nothing left running, the loop never fired again (each
    fire an `overlap`), and the row stayed `running`. Here beside runs that a stop interrupts."""

    async def go() -> tuple[bool, float, dict[str, tuple[str, str | None]], list[str]]:
        db = await Database.open(tmp_path / "e.db")
        (tmp_path / "not-a-dir").write_text("")
        broken = {"log": False}

        def log_path(run_id: int) -> Path:
            return tmp_path / ("not-a-dir" if broken["log"] else "logs") / f"{run_id}.log"

        runs = RunStore(db)
        ex = Executor(runs, AttemptStore(db), NoProfiles(), log_path=log_path,  # type: ignore[arg-type]
                      tmp_root=tmp_path / "tmp", tag_prefix="ends", clock=now_utc, local_tz=ZoneInfo("UTC"),
                      kill_grace=5.0)  # fmt: skip
        now = now_utc()

        async def loop(name: str, command: str) -> Loop:
            made = Loop(name=name, schedule=Schedule("every", "1h", "UTC"), backend="command", command=command,
                        workdir=str(tmp_path), created_at=now, updated_at=now)  # fmt: skip
            return await LoopStore(db).insert(made)

        try:
            busy = [await loop(f"busy{i}", "sleep 30") for i in range(12)]
            unlogged, unstarted = await loop("unlogged", "true"), await loop("unstarted", "true")
            ids = {}
            for each in busy:
                fired = await ex.fire(each, "schedule", now)
                assert fired is not None
                ids[fired.id] = each.name
            broken["log"] = True
            fired = await ex.fire(unlogged, "schedule", now)
            assert fired is not None
            ids[fired.id] = "unlogged"
            broken["log"] = False
            fired = await ex.fire(unstarted, "schedule", now)
            assert fired is not None
            ids[fired.id] = "unstarted"
            slot = ex.running(unstarted)
            assert slot is not None and slot.task is not None
            slot.task.cancel()  # before its first step: its body (and its `finally`) never runs
            started = asyncio.get_running_loop().time()
            await ex.interrupt_all("daemon stopped before the run finished", grace=0)
            idle = await ex.wait_idle(3)
            took = asyncio.get_running_loop().time() - started
            rows = {ids[r.id]: (r.status, r.error) for r in await runs.list(limit=100) if r.id in ids}
            free = [name for name in ("unlogged", "unstarted") if ex.running(await LoopStore(db).get(name)) is None]
            return idle, took, rows, free
        finally:
            await ex.wait_idle(10)
            await db.close()

    idle, took, rows, free = asyncio.run(go())
    assert idle and took < 10
    assert free == ["unlogged", "unstarted"]
    assert {status for name, (status, _) in rows.items() if name.startswith("busy")} == {"interrupted"}
    assert rows["unlogged"][0] == "failed" and "not-a-dir" in (rows["unlogged"][1] or "")
    assert rows["unstarted"][0] == "interrupted"
