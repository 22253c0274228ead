"""What a run's log holds of its command's output."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fleetd.store.db import Database
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc, to_iso
from tests.loops.executors import added_loop, command_executor


async def _run_command(tmp_path: Path, command: str) -> tuple[str, bytes]:
    db = await Database.open(tmp_path / "f.db")
    try:
        now = now_utc()
        loop = await added_loop(db, "out", now, command=command)
        ex = command_executor(db, tmp_path, "out")
        run = await ex.fire(loop, "manual", now)
        assert run is not None
        assert await ex.wait_idle(10)
        return (await RunStore(db).get(run.id)).status, (tmp_path / f"{run.id}.log").read_bytes()
    finally:
        await db.close()


def test_a_commands_stdout_and_stderr_are_logged_in_the_order_it_wrote_them(tmp_path: Path) -> None:
    """The command backend reads neither stream apart: they share one pipe, so the log is the terminal's view."""
    lines = [f"{stream} {i}" for i in range(20) for stream in ("out", "err")]
    script = "; ".join(f"echo '{line}'" + (" >&2" if line.startswith("err") else "") for line in lines)
    status, log = asyncio.run(_run_command(tmp_path, script))
    assert status == "succeeded"
    assert log.decode().splitlines() == lines


def test_output_that_its_parser_fails_on_ends_the_attempt_failed(tmp_path: Path, monkeypatch: Any) -> None:
    """A parser raising on output it did not expect failed the run but left its attempt `running` for ever; the
    child is gone by then, so the attempt ends, failed, saying why."""
    from fleetd.backends.command import CommandAdapter
    from fleetd.store.attempts import AttemptStore

    def broken(*args: object) -> None:
        raise ValueError("unexpected output")

    monkeypatch.setattr(CommandAdapter, "interpret", broken)

    async def go() -> tuple[str, str | None, list[tuple[str | None, str | None]]]:
        db = await Database.open(tmp_path / "f.db")
        try:
            now = now_utc()
            loop = await added_loop(db, "garbled", now, command="echo hi")
            ex = command_executor(db, tmp_path, "garbled")
            run = await ex.fire(loop, "manual", now)
            assert run is not None and await ex.wait_idle(10)
            ended = await RunStore(db).get(run.id)
            attempts = [(a.outcome, to_iso(a.finished_at)) for a in await AttemptStore(db).for_run(run.id)]
            return ended.status, ended.error, attempts
        finally:
            await db.close()

    status, error, attempts = asyncio.run(go())
    assert status == "failed" and error == "fleetd could not read its output: ValueError: unexpected output", error
    ((outcome, finished_at),) = attempts
    assert outcome == "failed" and finished_at is not None
