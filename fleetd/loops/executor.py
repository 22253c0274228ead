"""Executing runs. A run is one or more attempts: each under one profile, in a child of its own
session (or one HTTP call), output to the run's capped log with secrets scrubbed. A rate-limited or
logged-out profile hands the run to the next profile of the pool. Timeouts and shutdown kill the
whole process tree. A loop never overlaps itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Protocol, cast

import psutil

from fleetd.backends.base import AttemptContext, HttpAdapter, ProcessAdapter, ProcessOutput, ProcessSpec
from fleetd.backends.registry import get_adapter
from fleetd.backends.result import ParsedOutput
from fleetd.errors import FleetdError
from fleetd.loops import proctree
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
FINISH_RETRY_FIRST, FINISH_RETRY_MAX = 0.5, 30.0  # backoff for a run end the store refused


class ProfileSource(Protocol):
    async def plan(self, loop: Loop) -> tuple[list[Profile], datetime | None]: ...
    async def secret(self, profile: Profile) -> str | None: ...
    # Every profile's key: an attempt's output is scrubbed of all of them, not only of its own.
    async def known_secrets(self) -> Collection[str]: ...
    def reserve(self, profile: Profile) -> None: ...
    def release(self, profile: Profile) -> None: ...
    async def attempt_finished(
        self, profile: Profile, parsed: ParsedOutput, finished_at: datetime, cost_usd: float | None
    ) -> None: ...
    async def run_waiting(self, loop: Loop, run_id: int, until: datetime) -> None: ...


@dataclass(eq=False)  # identity: slots live in sets
class ActiveRun:
    run_id: int | None = None
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    tag: str | None = None
    interrupt_reason: str | None = None
    waiting: bool = False  # sleeping until a profile's reset: nothing to finish
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class RunFinish:
    """A run's end, kept until it is written."""

    run_id: int
    loop: str
    status: RunStatus
    finished_at: datetime
    exit_code: int | None
    error: str | None


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
        self.inflight: set[ActiveRun] = set()  # every slot until its run's end was written (or tried)
        self.unrecorded: dict[int, RunFinish] = {}  # run ends the store refused, by run id
        self._retrier: asyncio.Task[None] | None = None

    def run_tag(self, run_id: int) -> str:
        return f"{self.tag_prefix}-{run_id}"

    async def fire(self, loop: Loop, trigger: str, scheduled_at: datetime, fired: LoopFire | None = None) -> Run | None:
        """Record the fire and start its run; None when `fired` was already recorded."""
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
        self.inflight.add(slot)
        try:
            run = await self.runs.insert(
                loop=loop.name, trigger=trigger, status="running", scheduled_at=scheduled_at,
                started_at=now, backend=loop.backend, log_path_for=self.log_path, fired=fired,
            )  # fmt: skip
        except BaseException:
            del self.active[loop.name]
            self.inflight.discard(slot)
            raise
        if run is None:
            del self.active[loop.name]
            self.inflight.discard(slot)
            return None
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
            # The slot goes first: a run whose end cannot be written (disk full) must not block its
            # loop's later fires; its record is retried in the background until it is written.
            self.live_logs.pop(run.id, None)
            if self.active.get(loop.name) is slot:
                del self.active[loop.name]
            finish = RunFinish(run.id, loop.name, status, self.clock(), exit_code, error)
            try:
                await asyncio.shield(self._record_finish(finish))
            finally:
                self.inflight.discard(slot)
                slot.done.set()
            log.info("run %s of loop %s: %s", run.id, loop.name, status)

    async def _record_finish(self, finish: RunFinish) -> bool:
        """Write a run's end; on failure keep it for `_retry_finishes` and say so once, loudly."""
        try:
            await self.runs.finish(
                finish.run_id,
                status=finish.status,
                finished_at=finish.finished_at,
                exit_code=finish.exit_code,
                error=finish.error,
            )
        except Exception as e:
            if finish.run_id not in self.unrecorded:
                log.error(
                    "run %s of loop %s ended %s but its record cannot be written (%s); retrying",
                    finish.run_id, finish.loop, finish.status, e,
                )  # fmt: skip
                self.unrecorded[finish.run_id] = finish
            if self._retrier is None or self._retrier.done():
                self._retrier = asyncio.create_task(self._retry_finishes(), name="retry-finishes")
            return False
        if self.unrecorded.pop(finish.run_id, None) is not None:
            log.warning("run %s of loop %s: its end is recorded now (%s)", finish.run_id, finish.loop, finish.status)
        return True

    async def _retry_finishes(self) -> None:
        delay = FINISH_RETRY_FIRST
        while self.unrecorded:
            await asyncio.sleep(delay)
            delay = min(delay * 2, FINISH_RETRY_MAX)
            for finish in list(self.unrecorded.values()):
                if not await self._record_finish(finish):
                    break

    async def flush_unrecorded(self) -> int:
        """One last try at shutdown; returns how many run ends are still unwritten (the next start
        marks those runs interrupted)."""
        if self._retrier is not None:
            self._retrier.cancel()
        for finish in list(self.unrecorded.values()):
            await self._record_finish(finish)
        if self._retrier is not None:
            self._retrier.cancel()
        for finish in self.unrecorded.values():
            log.error("run %s of loop %s ended %s but could not be recorded", finish.run_id, finish.loop, finish.status)
        return len(self.unrecorded)

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
        """A final status, or None when another profile could still do it. Work that finished
        successfully counts even when a stop was requested meanwhile (it exited 0 in the grace)."""
        if end.timed_out:
            return "timed_out", end.exit_code, f"timed out after {format_duration(loop.timeout_s)}"
        if end.parsed.outcome == "succeeded":
            return "succeeded", end.exit_code, None
        if slot.interrupt_reason:
            return "interrupted", end.exit_code, slot.interrupt_reason
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
        scrubber = Scrubber([*(await self.profiles.known_secrets()), *([secret] if secret else [])])
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
        # The boundary: the streams were scrubbed before parsing; this catches what the parser decoded into
        # a key (a JSON escape) and the messages fleetd wrote itself. Nothing below sees the raw values.
        end.parsed = parsed = scrubber.record(end.parsed)
        usage = parsed.usage
        cost = parsed.cost_usd
        if cost is None and profile is not None:
            cost = profile.cost(
                usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens
            )
        error = None if parsed.outcome == "succeeded" else _describe(parsed)
        finished_at = self.clock()
        try:
            await self.attempts.finish(
                attempt_id, finished_at=finished_at, exit_code=end.exit_code, parsed=parsed, error=error, cost_usd=cost
            )
        except Exception as e:  # the run's own end still gets recorded (and retried)
            log.error("run %s: cannot record the end of attempt %s (%s)", run.id, number, e)
        if profile is not None:
            await self.profiles.attempt_finished(profile, parsed, finished_at, cost)
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
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=spec.cwd,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            message = f"{spec.argv[0]} not found on PATH (install it, or set PATH in the daemon's environment)"
            runlog.note(message)
            return AttemptEnd(ParsedOutput("failed", "unavailable", message=message))
        except OSError as e:
            message = f"could not start {spec.argv[0]}: {e.strerror or e}"
            runlog.note(message)
            return AttemptEnd(ParsedOutput("failed", "unavailable", message=message))
        slot.proc = proc
        try:
            await self.runs.set_process(ctx.run_id, proc.pid, _create_time(proc.pid))
        except Exception as e:  # only crash recovery needs it; the child is ours either way
            log.error("run %s: cannot record its process %s (%s)", ctx.run_id, proc.pid, e)
        rate_limited = asyncio.Event()
        watch = adapter.is_rate_limit_line if adapter.end_on_rate_limit_line else None
        # Each stream is scrubbed once, as it is read: the run log and the parser get the same clean bytes.
        stdout, stderr = _Capture(scrubber.fresh()), _Capture(scrubber.fresh())
        pumps = [
            asyncio.create_task(_pump(proc.stdout, stdout, runlog, watch, rate_limited)),
            asyncio.create_task(_pump(proc.stderr, stderr, runlog, watch, rate_limited)),
        ]
        feed = asyncio.create_task(_feed(proc, spec.stdin))
        exited = asyncio.ensure_future(proc.wait())
        stopper = asyncio.ensure_future(rate_limited.wait())
        done, _ = await asyncio.wait({exited, stopper}, timeout=loop.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        timed_out = not done
        if timed_out:
            runlog.note(f"timed out after {format_duration(loop.timeout_s)}: killing the process tree")
        elif exited not in done:
            runlog.note("rate limit in the live output: ending the attempt instead of waiting out the CLI's retries")
        if exited not in done:
            await proctree.kill_tree(proc.pid, tag=tag, grace=self.kill_grace, root_exited=exited)
        exit_code = await exited
        # Whatever the attempt left behind (background jobs holding the output pipes open) goes too.
        leftovers = await proctree.kill_tree(None, tag=tag, grace=self.kill_grace)
        if leftovers:
            runlog.note(f"killed {leftovers} leftover process(es) of this run")
        feed.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*pumps), 10)
        for capture in (stdout, stderr):
            runlog.write(capture.flush())
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
        slots = list(self.inflight)
        if not slots:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in slots)), timeout)
        except TimeoutError:
            return False
        return True


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
    """One stream's output for the parser, scrubbed: all of it up to STREAM_KEEP, then the tail."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        self.data = bytearray()
        self.partial = b""

    def add(self, chunk: bytes) -> bytes:
        """The scrubbed part of `chunk` that is safe to release (kept here, and for the run log)."""
        clean = self.scrubber.feed(chunk)
        self._keep(clean)
        return clean

    def flush(self) -> bytes:
        """The held-back tail, once the stream has ended."""
        clean = self.scrubber.flush()
        self._keep(clean)
        return clean

    def _keep(self, clean: bytes) -> None:
        self.data.extend(clean)
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
    watch: Callable[[str], bool] | None,
    rate_limited: asyncio.Event,
) -> None:
    assert stream is not None
    while chunk := await stream.read(65536):
        runlog.write(capture.add(chunk))
        # The watch sees the raw lines, as early as possible; it only ever answers yes or no.
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
