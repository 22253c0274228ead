"""What a run's log holds of its command's output."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fleetd.records.run import Attempt, Run
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc
from tests.loops.executors import added_loop, command_executor


async def _run_to_end(tmp_path: Path, command: str) -> tuple[Run, list[Attempt], bytes]:
    """A command loop's manual run, to its recorded end: the run, its attempts, its log."""
    db = await Database.open(tmp_path / "f.db")
    try:
        now = now_utc()
        loop = await added_loop(db, "out", now, command=command)
        ex = command_executor(db, tmp_path, "out")
        run = await ex.fire(loop, "manual", now)
        assert run is not None
        assert await ex.wait_idle(10)
        attempts = await AttemptStore(db).for_run(run.id)
        return await RunStore(db).get(run.id), attempts, (tmp_path / f"{run.id}.log").read_bytes()
    finally:
        await db.close()


async def _run_command(tmp_path: Path, command: str) -> tuple[str, bytes]:
    run, _, text = await _run_to_end(tmp_path, command)
    return run.status, text


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

    def broken(*args: object) -> None:
        raise ValueError("unexpected output")

    monkeypatch.setattr(CommandAdapter, "interpret", broken)

    run, attempts, _ = asyncio.run(_run_to_end(tmp_path, "echo hi"))
    assert run.status == "failed" and run.error == "fleetd could not read its output: ValueError: unexpected output"
    (attempt,) = attempts
    assert attempt.outcome == "failed" and attempt.finished_at is not None


def test_a_run_log_that_cannot_be_written_for_a_while_loses_that_output_not_the_run(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Disk full (or EIO, a quota) under a live run: the write's OSError failed the run ('fleetd could not run it')
    though its command went on to exit 0, and left its attempt `running` for ever. The output meanwhile is lost,
    the log says how much, and the run keeps its own end."""
    import errno

    from fleetd.loops import runlog

    real = runlog._write_at
    failing = {"left": 1}

    def full_once(fd: int, data: bytes, offset: int) -> None:
        if failing["left"] and data == b"first\n":
            failing["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(runlog, "_write_at", full_once)

    run, attempts, text = asyncio.run(_run_to_end(tmp_path, "echo first; sleep 0.3; echo second"))
    assert (run.status, run.exit_code) == ("succeeded", 0), text
    assert len(attempts) == 1 and attempts[0].finished_at is not None
    assert text == b"[fleetd] 6 bytes of output lost: cannot write the run log: No space left on device\nsecond\n"
