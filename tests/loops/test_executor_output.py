"""What a run's log holds of its command's output."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleetd.store.db import Database
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc
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
