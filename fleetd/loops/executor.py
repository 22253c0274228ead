"""Executing runs. A run is one or more attempts: each under one profile, in a child of its own
session (or one HTTP call), output to the run's capped log with secrets scrubbed. A rate-limited or
logged-out profile hands the run to the next profile of the pool. Timeouts and shutdown kill the
whole process tree. A loop never overlaps itself."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Protocol, cast

import psutil

from fleetd.backends.base import AttemptContext, HttpAdapter, ProcessAdapter, ProcessOutput, ProcessSpec
from fleetd.backends.registry import get_adapter
from fleetd.backends.result import ParsedOutput
from fleetd.errors import FleetdError
from fleetd.loops import cgroups, proctree
from fleetd.loops.model import Loop
from fleetd.loops.runlog import RunLog
from fleetd.loops.scrub import Scrubber
from fleetd.profiles.model import Profile
from fleetd.routing.policy import after_failure
from fleetd.store.attempts import AttemptStore
from fleetd.store.runs import LoopFire, Run, RunStatus, RunStore
from fleetd.timefmt import format_duration

log = logging.getLogger("fleetd.executor")
STREAM_KEEP = 8 * 1024 * 1024  # per stream, for the parser; the log file has its own cap


MAX_ATTEMPTS = 20  # per run: a bound, not a strategy (each failover needs a newly exhausted profile)
MAX_WAIT_SLEEP = 30.0  # a waiting run re-checks at least this often


class ProfileSource(Protocol):
    async def plan(self, loop: Loop) -> tuple[list[Profile], datetime | None]: ...
    async def secret(self, profile: Profile) -> str | None: ...
    def reserve(self, profile: Profile) -> None: ...
    def release(self, profile: Profile) -> None: ...
    async def attempt_finished(
        self, profile: Profile, parsed: ParsedOutput, finished_at: datetime, cost_usd: float | None
    ) -> None: ...
    async def run_waiting(self, loop: Loop, run_id: int, until: datetime) -> None: ...


@dataclass
class ActiveRun:
    run_id: int | None = None
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    tag: str | None = None
    interrupt_reason: str | None = None
    waiting: bool = False  # sleeping until a profile's reset: nothing to finish
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class AttemptEnd:
    parsed: ParsedOutput
    exit_code: int | None = None
    timed_out: bool = False


class Executor:
    def __init__(
        self,
        runs: RunStore,
        attempts: AttemptStore,
        profiles: ProfileSource,
        *,
        log_path: Callable[[int], Path],
        tmp_root: Path,
        tag_prefix: str,
        clock: Callable[[], datetime],
        local_tz: tzinfo,
        kill_grace: float,
    ) -> None:
        self.runs = runs
        self.attempts = attempts
        self.profiles = profiles
        self.log_path = log_path
        self.tmp_root = tmp_root
        self.tag_prefix = tag_prefix
        self.clock = clock
        self.local_tz = local_tz
        self.kill_grace = kill_grace
        self.active: dict[str, ActiveRun] = {}
        self.live_logs: dict[int, RunLog] = {}
        self.accepting = True

    def run_tag(self, run_id: int) -> str:
        return f"{self.tag_prefix}-{run_id}"

    async def fire(self, loop: Loop, trigger: str, scheduled_at: datetime, fired: LoopFire | None = None) -> Run:
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
        slot.tag = self.run_tag(run.id)
        slot.task = asyncio.create_task(self._execute(loop, run, slot), name=f"run-{run.id}")
        return run

    async def _execute(self, loop: Loop, run: Run, slot: ActiveRun) -> None:
        runlog = RunLog(Path(run.log_path or self.log_path(run.id)), loop.output_cap)
        self.live_logs[run.id] = runlog
        status: RunStatus = "failed"
        exit_code: int | None = None
        error: str | None = None
        try:
            status, exit_code, error = await self._attempts(loop, run, slot, runlog)
        except Exception as e:  # the record must be finished whatever happened
            log.exception("run %s of loop %s failed to execute", run.id, loop.name)
            status, error = "failed", f"fleetd could not run it: {e}"
            runlog.note(error)
        finally:
            runlog.close()
            await asyncio.shield(
                self.runs.finish(run.id, status=status, finished_at=self.clock(), exit_code=exit_code, error=error)
            )
            self.live_logs.pop(run.id, None)
            if self.active.get(loop.name) is slot:
                del self.active[loop.name]
            slot.done.set()
            log.info("run %s of loop %s: %s", run.id, loop.name, status)

    async def _attempts(
        self, loop: Loop, run: Run, slot: ActiveRun, runlog: RunLog
    ) -> tuple[RunStatus, int | None, str | None]:
        adapter = get_adapter(loop.backend)
        try:
            prompt = read_prompt(loop)
        except OSError as e:
            runlog.note(f"cannot read prompt file: {e}")
            return "failed", None, f"cannot read prompt file {loop.prompt_file}: {e.strerror}"
        if not adapter.needs_profile:
            end = await self._attempt(1, loop, run, slot, runlog, None, prompt)
            return self._verdict(loop, slot, end) or ("failed", end.exit_code, _describe(end.parsed))
        end = AttemptEnd(ParsedOutput("unknown"))
        number = 0
        while True:
            ordered, earliest = await self.profiles.plan(loop)
            if not ordered:
                if earliest is None:
                    message = f"no enabled profile with headroom for backend {loop.backend}" + (
                        f" in the pool {','.join(loop.profiles)}" if loop.profiles else ""
                    )
                    runlog.note(message)
                    return (
                        "failed",
                        end.exit_code,
                        message if number == 0 else f"{message}; last: {_describe(end.parsed)}",
                    )
                runlog.note(f"no profile has headroom: waiting until {earliest.isoformat(timespec='seconds')}")
                await self.runs.set_waiting(run.id, earliest)
                await self.profiles.run_waiting(loop, run.id, earliest)
                slot.waiting = True
                try:
                    await self._sleep_until(earliest, slot)
                finally:
                    slot.waiting = False
                await self.runs.set_waiting(run.id, None)
                if slot.interrupt_reason:
                    return "interrupted", end.exit_code, slot.interrupt_reason
                continue
            if number >= MAX_ATTEMPTS:
                return "failed", end.exit_code, f"gave up after {number} attempts: {_describe(end.parsed)}"
            profile = ordered[0]
            number += 1
            self.profiles.reserve(profile)
            try:
                end = await self._attempt(number, loop, run, slot, runlog, profile, prompt)
            finally:
                self.profiles.release(profile)
            verdict = self._verdict(loop, slot, end)
            if verdict is not None:
                return verdict
            if after_failure(end.parsed.error_class, has_next=True) == "stop":
                return "failed", end.exit_code, _describe(end.parsed)
            runlog.note(
                f"attempt {number} on profile {profile.name}: {end.parsed.error_class}; "
                "moving to the next profile with headroom"
            )

    def _verdict(self, loop: Loop, slot: ActiveRun, end: AttemptEnd) -> tuple[RunStatus, int | None, str | None] | None:
        """A final status, or None when another profile could still do it."""
        if slot.interrupt_reason:
            return "interrupted", end.exit_code, slot.interrupt_reason
        if end.timed_out:
            return "timed_out", end.exit_code, f"timed out after {format_duration(loop.timeout_s)}"
        if end.parsed.outcome == "succeeded":
            return "succeeded", end.exit_code, None
        return None

    async def _sleep_until(self, until: datetime, slot: ActiveRun) -> None:
        """Until `until` by the wall clock, or until the run is interrupted: never a tight loop."""
        while not slot.interrupted.is_set():
            delay = (until - self.clock()).total_seconds()
            if delay <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.interrupted.wait(), min(delay, MAX_WAIT_SLEEP))

    async def _attempt(
        self,
        number: int,
        loop: Loop,
        run: Run,
        slot: ActiveRun,
        runlog: RunLog,
        profile: Profile | None,
        prompt: str | None,
    ) -> AttemptEnd:
        adapter = get_adapter(loop.backend)
        secret = await self.profiles.secret(profile) if profile and profile.has_secret else None
        scrubber = Scrubber([secret] if secret else [])
        model = loop.model or (profile.model if profile else None)
        attempt_id = await self.attempts.start(
            run_id=run.id, number=number, backend=loop.backend, profile=profile.name if profile else "",
            model=model, started_at=self.clock(),
        )  # fmt: skip
        self.tmp_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmpdir = tempfile.mkdtemp(prefix=f"run{run.id}-{number}-", dir=self.tmp_root)
        ctx = AttemptContext(run.id, loop, prompt, profile, secret, model, tmpdir)
        try:
            if adapter.kind == "http":
                end = await self._http_attempt(cast(HttpAdapter, adapter), ctx, runlog, scrubber)
            else:
                end = await self._process_attempt(cast(ProcessAdapter, adapter), ctx, slot, runlog, scrubber)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        parsed = end.parsed
        usage = parsed.usage
        cost = parsed.cost_usd
        if cost is None and profile is not None:
            cost = profile.cost(
                usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens
            )
        error = None if parsed.outcome == "succeeded" else scrubber.text(_describe(parsed))
        finished_at = self.clock()
        await self.attempts.finish(
            attempt_id, finished_at=finished_at, exit_code=end.exit_code, parsed=parsed, error=error, cost_usd=cost
        )
        if profile is not None:
            await self.profiles.attempt_finished(profile, parsed, finished_at, cost)
        end.parsed = replace(parsed, message=scrubber.text(parsed.message))
        return end

    async def _http_attempt(
        self, adapter: HttpAdapter, ctx: AttemptContext, runlog: RunLog, scrubber: Scrubber
    ) -> AttemptEnd:
        def sink(data: bytes) -> None:
            runlog.write(scrubber.feed(data))

        try:
            parsed = await asyncio.wait_for(
                adapter.call(ctx, sink, ctx.loop.timeout_s, self.clock(), self.local_tz), ctx.loop.timeout_s
            )
        except TimeoutError:
            runlog.write(scrubber.flush())
            runlog.note(f"timed out after {format_duration(ctx.loop.timeout_s)}")
            return AttemptEnd(ParsedOutput("failed", "transient", message="timed out"), timed_out=True)
        runlog.write(scrubber.flush())
        return AttemptEnd(parsed)

    async def _process_attempt(
        self, adapter: ProcessAdapter, ctx: AttemptContext, slot: ActiveRun, runlog: RunLog, scrubber: Scrubber
    ) -> AttemptEnd:
        loop = ctx.loop
        try:
            spec = adapter.build(ctx)
        except FleetdError as e:
            runlog.note(e.message)
            return AttemptEnd(ParsedOutput("failed", "contract", message=e.message))
        if spec.cwd and not os.path.isdir(spec.cwd):
            runlog.note(f"working directory not found: {spec.cwd}")
            return AttemptEnd(ParsedOutput("failed", "contract", message=f"working directory not found: {spec.cwd}"))
        tag = self.run_tag(ctx.run_id)
        env = self._child_env(loop, ctx, spec, tag)
        # The run's processes are tracked by its cgroup where one can be made (an escapee that leaves
        # the session and clears its environment stays in it), else by session + tag (proctree).
        cgroup = await asyncio.to_thread(cgroups.run_path, self.tag_prefix, ctx.run_id)
        if cgroup is not None and not cgroups.create(cgroup):
            log.warning("run %s: cannot make its cgroup %s; tracking its processes by tag", ctx.run_id, cgroup)
            cgroup = None
        argv = spec.argv
        if cgroup is not None:
            # The child joins through a /bin/sh wrapper that execs the command, where a missing
            # command would be the wrapper's exit 127: find that out first, as the spawn would.
            if (problem := _cannot_exec(spec.argv[0], env, spec.cwd)) is not None:
                _drop_cgroup(ctx.run_id, cgroup)
                return _not_started(runlog, spec.argv[0], problem)
            argv = cgroups.join_argv(cgroup, spec.argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=spec.cwd,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            _drop_cgroup(ctx.run_id, cgroup)
            return _not_started(runlog, spec.argv[0], "")
        except OSError as e:
            _drop_cgroup(ctx.run_id, cgroup)
            return _not_started(runlog, spec.argv[0], str(e.strerror or e))
        if cgroup is not None and not cgroups.join(cgroup, proc.pid):
            # Neither the wrapper nor we could move it: the tag sweep stands in (it misses escapees
            # that clear their environment).
            log.warning("run %s: cannot move pid %s into %s; tracking it by tag", ctx.run_id, proc.pid, cgroup)
            _drop_cgroup(ctx.run_id, cgroup)
            cgroup = None
        slot.proc = proc
        await self.runs.set_process(ctx.run_id, proc.pid, _create_time(proc.pid))
        rate_limited = asyncio.Event()
        watch = adapter.is_rate_limit_line if adapter.end_on_rate_limit_line else None
        stdout, stderr = _Capture(), _Capture()
        pumps = [
            asyncio.create_task(_pump(proc.stdout, stdout, runlog, scrubber, watch, rate_limited)),
            asyncio.create_task(_pump(proc.stderr, stderr, runlog, scrubber, watch, rate_limited)),
        ]
        feed = asyncio.create_task(_feed(proc, spec.stdin))
        exited = asyncio.ensure_future(_exit_status(proc))
        stopper = asyncio.ensure_future(rate_limited.wait())
        done, _ = await asyncio.wait({exited, stopper}, timeout=loop.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        timed_out = not done
        if timed_out:
            runlog.note(f"timed out after {format_duration(loop.timeout_s)}: killing the process tree")
        elif exited not in done:
            runlog.note("rate limit in the live output: ending the attempt instead of waiting out the CLI's retries")
        if exited not in done:
            await proctree.kill_tree(proc.pid, tag=tag, grace=self.kill_grace, root_exited=exited, cgroup=cgroup)
        exit_code = await exited
        # Whatever the attempt left behind (background jobs holding the output pipes open) goes too.
        leftovers = await proctree.kill_tree(None, tag=tag, grace=self.kill_grace, cgroup=cgroup)
        if leftovers:
            runlog.note(f"killed {leftovers} leftover process(es) of this run")
        # Not in a `finally`: a cgroup an exception leaves behind is reused by the run's next
        # attempt and reaped by the next daemon start (proctree.reap_cgroups).
        _drop_cgroup(ctx.run_id, cgroup)
        feed.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*pumps), 10)
        runlog.write(scrubber.flush())
        slot.proc = None
        out = ProcessOutput(exit_code, stdout.text(), stderr.text())
        parsed = adapter.interpret(ctx, out, self.clock(), self.local_tz)
        if rate_limited.is_set() and parsed.outcome != "succeeded":
            parsed = replace(parsed, outcome="failed", error_class="rate_limited")
        return AttemptEnd(parsed, exit_code, timed_out)

    def _child_env(self, loop: Loop, ctx: AttemptContext, spec: ProcessSpec, tag: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in spec.unset_env:
            env.pop(name, None)
        env.update(spec.env)
        env.update(loop.env)
        env.update(
            {
                "FLEETD_RUN_ID": str(ctx.run_id),
                "FLEETD_LOOP": loop.name,
                "FLEETD_PROFILE": ctx.profile.name if ctx.profile else "",
                proctree.TAG_VAR: tag,
                # The CLIs litter TMPDIR; each attempt gets its own, removed afterwards.
                "TMPDIR": ctx.tmpdir,
                "TMP": ctx.tmpdir,
                "TEMP": ctx.tmpdir,
            }
        )
        return env

    def interrupt_waiting(self, reason: str) -> None:
        """Runs that only wait for a reset have nothing to finish: they end at once on shutdown."""
        for slot in self.active.values():
            if slot.waiting:
                slot.interrupt_reason = reason
                slot.interrupted.set()

    async def interrupt_all(self, reason: str) -> None:
        """Kill every in-flight run's tree; each run then finishes as `interrupted`."""
        slots = list(self.active.values())
        for slot in slots:
            slot.interrupt_reason = reason
            slot.interrupted.set()
        await asyncio.gather(
            *(
                proctree.kill_tree(
                    s.proc.pid, tag=s.tag, grace=self.kill_grace, root_exited=asyncio.ensure_future(s.proc.wait())
                )
                for s in slots
                if s.proc is not None
            ),
            return_exceptions=True,
        )
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


async def _exit_status(proc: asyncio.subprocess.Process) -> int:
    """The child's exit status as soon as it has exited. Not `proc.wait()` alone: that also waits
    for the output pipes to close, which a background process that inherited them holds open as
    long as it lives, and the sweep that kills such leftovers runs only after this returns."""
    waiter = asyncio.ensure_future(proc.wait())
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):  # pidfd: Linux >= 5.3; elsewhere poll
        pidfd = os.pidfd_open(proc.pid)
        loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
    try:
        while proc.returncode is None and not waiter.done():
            # Once the pidfd says it exited, asyncio's child watcher sets returncode moments later.
            if pidfd is None or gone.done():
                await asyncio.wait({waiter}, timeout=0.05)
            else:
                await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if pidfd is not None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        if not waiter.done():
            waiter.cancel()
    return proc.returncode if proc.returncode is not None else waiter.result()


def _cannot_exec(argv0: str, env: dict[str, str], cwd: str | None) -> str | None:
    """Why exec'ing `argv0` would fail ("" = not found), looked up as the spawn would (PATH from the
    child's environment; a name with a slash relative to its cwd), or None when it would not."""
    if "/" in argv0:
        path = os.path.join(cwd or os.getcwd(), argv0)
        if not os.path.exists(path):
            return ""
        return None if os.access(path, os.X_OK) and not os.path.isdir(path) else os.strerror(errno.EACCES)
    return None if shutil.which(argv0, path=os.pathsep.join(os.get_exec_path(env))) else ""


def _not_started(runlog: RunLog, argv0: str, problem: str) -> AttemptEnd:
    if problem:
        message = f"could not start {argv0}: {problem}"
    else:
        message = f"{argv0} not found on PATH (install it, or set PATH in the daemon's environment)"
    runlog.note(message)
    return AttemptEnd(ParsedOutput("failed", "contract", message=message))


def _drop_cgroup(run_id: int, cgroup: Path | None) -> None:
    if cgroup is not None and not cgroups.remove(cgroup):
        log.warning("run %s: its cgroup %s still holds processes; left for the next start to reap", run_id, cgroup)


def _describe(parsed: ParsedOutput) -> str:
    message = parsed.message or parsed.outcome
    return f"{parsed.error_class}: {message}" if parsed.error_class else message


def read_prompt(loop: Loop) -> str | None:
    if loop.prompt_file:
        return Path(loop.prompt_file).read_text(encoding="utf-8", errors="replace")
    return loop.prompt


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class _Capture:
    """One stream's output for the parser: all of it up to STREAM_KEEP, then the tail."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.partial = b""

    def add(self, chunk: bytes) -> None:
        self.data.extend(chunk)
        if len(self.data) > STREAM_KEEP:
            del self.data[: len(self.data) - STREAM_KEEP]

    def lines(self, chunk: bytes) -> list[str]:
        buf = self.partial + chunk
        *complete, self.partial = buf.split(b"\n")
        return [line.decode(errors="replace") for line in complete]

    def text(self) -> str:
        return self.data.decode(errors="replace")


async def _pump(
    stream: asyncio.StreamReader | None,
    capture: _Capture,
    runlog: RunLog,
    scrubber: Scrubber,
    watch: Callable[[str], bool] | None,
    rate_limited: asyncio.Event,
) -> None:
    assert stream is not None
    while chunk := await stream.read(65536):
        runlog.write(scrubber.feed(chunk))
        capture.add(chunk)
        if watch is not None and not rate_limited.is_set() and any(watch(line) for line in capture.lines(chunk)):
            rate_limited.set()


async def _feed(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
    """Prompt on stdin, then EOF: some CLIs (codex) wait for stdin to close."""
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
