"""Executing runs: one child per run in its own session, output to a capped log, timeouts and
shutdown kill the whole process tree. A loop never overlaps itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from fleetd.backends.base import ProcessSpec, Task
from fleetd.backends.registry import get_adapter
from fleetd.loops import proctree
from fleetd.loops.model import Loop
from fleetd.loops.runlog import RunLog
from fleetd.store.runs import LoopFire, Run, RunStatus, RunStore
from fleetd.timefmt import format_duration

log = logging.getLogger("fleetd.executor")
TAIL_BYTES = 64 * 1024


@dataclass
class ActiveRun:
    run_id: int | None = None
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    interrupt_reason: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Executor:
    def __init__(
        self,
        runs: RunStore,
        *,
        log_path: Callable[[int], Path],
        tag_prefix: str,
        clock: Callable[[], datetime],
        kill_grace: float,
    ) -> None:
        self.runs = runs
        self.log_path = log_path
        self.tag_prefix = tag_prefix
        self.clock = clock
        self.kill_grace = kill_grace
        self.active: dict[str, ActiveRun] = {}
        self.live_logs: dict[int, RunLog] = {}
        self.accepting = True

    def run_tag(self, run_id: int) -> str:
        return f"{self.tag_prefix}-{run_id}"

    async def fire(
        self, loop: Loop, trigger: str, scheduled_at: datetime, fired: LoopFire | None = None
    ) -> Run:
        now = self.clock()
        current = self.active.get(loop.name)
        if current is not None or not self.accepting:
            reason = (
                "daemon is shutting down"
                if not self.accepting
                else f"previous run {current.run_id or '(starting)'} still running"  # type: ignore[union-attr]
            )
            return await self.runs.insert(
                loop=loop.name, trigger=trigger, status="skipped", scheduled_at=scheduled_at,
                started_at=now, finished_at=now, backend=loop.backend, error=reason, fired=fired,
            )  # fmt: skip
        slot = ActiveRun()
        self.active[loop.name] = slot  # claimed before any await: two fires cannot both start
        try:
            run = await self.runs.insert(
                loop=loop.name, trigger=trigger, status="running", scheduled_at=scheduled_at,
                started_at=now, backend=loop.backend, log_path_for=self.log_path, fired=fired,
            )  # fmt: skip
        except BaseException:
            del self.active[loop.name]
            raise
        slot.run_id = run.id
        slot.task = asyncio.create_task(self._execute(loop, run, slot), name=f"run-{run.id}")
        return run

    async def _execute(self, loop: Loop, run: Run, slot: ActiveRun) -> None:
        runlog = RunLog(Path(run.log_path or self.log_path(run.id)), loop.output_cap)
        self.live_logs[run.id] = runlog
        status: RunStatus = "failed"
        exit_code: int | None = None
        error: str | None = None
        try:
            status, exit_code, error = await self._attempt(loop, run, slot, runlog)
        except Exception as e:  # the record must be finished whatever happened
            log.exception("run %s of loop %s failed to execute", run.id, loop.name)
            status, error = "failed", f"fleetd could not run it: {e}"
            runlog.note(error)
        finally:
            runlog.close()
            await asyncio.shield(
                self.runs.finish(
                    run.id, status=status, finished_at=self.clock(), exit_code=exit_code, error=error
                )
            )
            self.live_logs.pop(run.id, None)
            if self.active.get(loop.name) is slot:
                del self.active[loop.name]
            slot.done.set()
            log.info("run %s of loop %s: %s", run.id, loop.name, status)

    async def _attempt(
        self, loop: Loop, run: Run, slot: ActiveRun, runlog: RunLog
    ) -> tuple[RunStatus, int | None, str | None]:
        adapter = get_adapter(loop.backend)
        try:
            prompt = read_prompt(loop)
        except OSError as e:
            runlog.note(f"cannot read prompt file: {e}")
            return "failed", None, f"cannot read prompt file {loop.prompt_file}: {e.strerror}"
        spec = adapter.build(Task(run_id=run.id, loop=loop, prompt=prompt))
        if spec.cwd and not os.path.isdir(spec.cwd):
            runlog.note(f"working directory not found: {spec.cwd}")
            return "failed", None, f"working directory not found: {spec.cwd}"
        tag = self.run_tag(run.id)
        env = self._child_env(loop, run, spec, tag)
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=spec.cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            runlog.note(f"could not start {spec.argv[0]}: {e}")
            return "failed", None, f"could not start {spec.argv[0]}: {e.strerror or e}"
        slot.proc = proc
        await self.runs.set_process(run.id, proc.pid, _create_time(proc.pid))
        tail = bytearray()
        pump = asyncio.create_task(_pump(proc, runlog, tail))
        feed = asyncio.create_task(_feed(proc, spec.stdin))
        exited = asyncio.ensure_future(proc.wait())
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(exited), loop.timeout_s)
        except TimeoutError:
            timed_out = True
            runlog.note(f"timed out after {format_duration(loop.timeout_s)}: killing the process tree")
            await proctree.kill_tree(proc.pid, tag=tag, grace=self.kill_grace, root_exited=exited)
        exit_code = await exited
        # Whatever the run left behind (background jobs holding the output pipe open) goes too.
        leftovers = await proctree.kill_tree(None, tag=tag, grace=self.kill_grace)
        if leftovers:
            runlog.note(f"killed {leftovers} leftover process(es) of this run")
        feed.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pump, 10)
        if slot.interrupt_reason:
            return "interrupted", exit_code, slot.interrupt_reason
        if timed_out:
            return "timed_out", exit_code, f"timed out after {format_duration(loop.timeout_s)}"
        result = adapter.interpret(exit_code, bytes(tail))
        return ("succeeded" if result.outcome == "succeeded" else "failed"), exit_code, result.error

    def _child_env(self, loop: Loop, run: Run, spec: ProcessSpec, tag: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in spec.unset_env:
            env.pop(name, None)
        env.update(spec.env)
        env.update(loop.env)
        env.update(
            {
                "FLEETD_RUN_ID": str(run.id),
                "FLEETD_LOOP": loop.name,
                "FLEETD_TRIGGER": run.trigger,
                proctree.TAG_VAR: tag,
            }
        )
        return env

    async def interrupt_all(self, reason: str) -> None:
        """Kill every in-flight run's tree; each run then finishes as `interrupted`."""
        slots = list(self.active.values())
        for slot in slots:
            slot.interrupt_reason = reason
        await asyncio.gather(
            *(
                proctree.kill_tree(
                    s.proc.pid, tag=self.run_tag(s.run_id or 0), grace=self.kill_grace,
                    root_exited=asyncio.ensure_future(s.proc.wait()),
                )
                for s in slots
                if s.proc is not None
            ),
            return_exceptions=True,
        )  # fmt: skip
        await self.wait_idle(timeout=self.kill_grace + 15)

    async def wait_idle(self, timeout: float) -> bool:
        slots = list(self.active.values())
        if not slots:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in slots)), timeout)
        except TimeoutError:
            return False
        return True


def read_prompt(loop: Loop) -> str | None:
    if loop.prompt_file:
        return Path(loop.prompt_file).read_text(encoding="utf-8", errors="replace")
    return loop.prompt


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


async def _pump(proc: asyncio.subprocess.Process, runlog: RunLog, tail: bytearray) -> None:
    assert proc.stdout is not None
    while chunk := await proc.stdout.read(65536):
        runlog.write(chunk)
        tail.extend(chunk)
        if len(tail) > TAIL_BYTES:
            del tail[: len(tail) - TAIL_BYTES]


async def _feed(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
    """Prompt on stdin, then EOF, so a command that reads stdin never waits forever."""
    assert proc.stdin is not None
    try:
        if data:
            proc.stdin.write(data)
            await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()
