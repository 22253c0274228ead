"""Executing runs. A run is one or more attempts: each under one profile, in a child of its own
session (or one HTTP call), output to the run's capped log with secrets scrubbed. Which attempt
comes next, and what a failure means, is the router's decision (`fleetd.routing.router`): this
module performs it. Timeouts and shutdown kill the whole process tree. A loop never overlaps itself."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import logging
import os
import shutil
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Protocol, cast

from fleetd.backends.base import AttemptContext, HttpAdapter, ProcessAdapter, ProcessOutput, ProcessSpec
from fleetd.backends.registry import get_adapter
from fleetd.errors import FleetdError, InvalidArgument
from fleetd.loops import cgroups, changes, child, proctree
from fleetd.loops.model import read_prompt, unreadable_prompt
from fleetd.loops.runlog import RunLog
from fleetd.loops.scrub import Scrubber
from fleetd.loops.tmpdirs import TmpDirs
from fleetd.loops.workers import Workers
from fleetd.records.fire import SkipReason, daily_cost_text, skip_text
from fleetd.records.loop import ChainStep, Loop
from fleetd.records.money import day_since
from fleetd.records.profile import Profile
from fleetd.records.result import ErrorClass, ParsedOutput, TokenUsage
from fleetd.records.run import LoopFire, Run, RunStatus
from fleetd.records.task import Task
from fleetd.routing.policy import loop_policy
from fleetd.routing.router import (
    AttemptResult,
    Backoff,
    Candidate,
    Decision,
    Finish,
    Observation,
    Policy,
    Router,
    Try,
    WaitUntil,
    World,
)
from fleetd.store.attempts import AttemptStore, finish_write
from fleetd.store.db import finish_first
from fleetd.store.events import EventLog
from fleetd.store.runs import RunStore
from fleetd.timefmt import format_duration

log = logging.getLogger("fleetd.executor")
STREAM_KEEP = 8 * 1024 * 1024  # per stream, for the parser; the log file has its own cap
VERIFY_TAIL = 4096  # of the verify command's output, kept as the findings
REVIEW_DIFF_CAP = 64 * 1024  # of what changed, in the reviewer's prompt
NO_VERDICT = "the reviewer's answer holds no verdict"


# After the line that ends an attempt early, a CLI about to exit by itself may (Codex's final error
# line comes ~0.2 s before its exit 1): its own exit code is recorded then, not fleetd's -15.
RATE_LIMIT_EXIT_GRACE = 1.0
ROOM_LOOK_INTERVAL = 1.0  # seconds: a run waiting on room looks again at most this often as attempts end
MAX_WAIT_SLEEP = 30.0  # a waiting run re-checks at least this often
FINISH_RETRY_FIRST, FINISH_RETRY_MAX = 0.5, 30.0  # backoff for a run end the store refused


class ProfileSource(Protocol):
    async def world(self, steps: list[ChainStep]) -> tuple[World, dict[str, Profile]]: ...
    def claim_probe(self, profile: Profile) -> bool: ...
    async def candidate_skipped(self, loop: Loop, run_id: int, profile: str, why: str) -> None: ...
    async def secret(self, profile: Profile) -> str | None: ...
    # Why a profile that has a key cannot run with it: the key is not in the secret store.
    def key_missing(self, profile: Profile) -> str: ...
    # Every profile's key: an attempt's output is scrubbed of all of them, not only of its own.
    async def known_secrets(self) -> Collection[str]: ...
    def reserve(self, profile: Profile) -> None: ...
    def release(self, profile: Profile, probe: bool = False) -> None: ...
    def free_probe(self, profile: Profile) -> None: ...
    # `end`: the attempt's end in the store, written with its use in one transaction.
    async def attempt_finished(
        self, profile: Profile, parsed: ParsedOutput, finished_at: datetime, cost_usd: float | None,
        settle: Callable[[], None] | None = None, end: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None: ...  # fmt: skip


@dataclass(eq=False)  # identity: slots live in sets
class ActiveRun:
    run_id: int | None = None
    task: asyncio.Task[None] | None = None
    proc: child.Child | None = None  # the running attempt's (or verify command's) process
    tag: str | None = None
    cgroup: Path | None = None  # the running attempt's cgroup, where there is one
    trigger: str = "manual"  # schedule, manual or catch-up: FLEETD_TRIGGER
    note: str | None = None  # the run log's first line, where the fire has something to say (a run it runs again)
    interrupt_reason: str | None = None
    # Invariant: at most one of these wins, decided without an await (`stop`, `_execute`): a stop that
    # finds `ended` unset makes the run `cancelled` with `cancel_reason`; once `ended`, it is refused.
    cancel_reason: str | None = None  # who stopped it (`fleetd runs stop`, `loop stop`, `loop rm --force`)
    ended: bool = False  # the run's status is decided
    # The attempt under way is cut at the loop's --attempt-timeout, before the run's own deadline: its timeout is
    # then a transient failure of that attempt, and the run goes on.
    attempt_cut: float | None = None
    kill_grace: float | None = None  # a stop's own grace (0: SIGKILL at once), for a child that starts later
    waiting: bool = False  # waiting for headroom (a reset, or room): nothing to finish
    wait_until: datetime | None = None  # that reset, while waiting (`loop list`: "waiting until T")
    waited: bool = False  # it waited for a reset before its first attempt: its start stays the fire's
    # The `skipped` row fires that found this run in progress went into: (reason, run id, fires), so
    # the next fire skipped for the same reason adds to it instead of writing one more row.
    skipped: tuple[SkipReason, int, int] | None = None
    attempt_end: Callable[[sqlite3.Connection], object] | None = None  # written with the run's end (`_attempt`)
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    look_again: asyncio.Event = field(default_factory=asyncio.Event)  # a waiting run reads the world again now
    waiting_on: frozenset[str] = frozenset()  # while waiting: the profiles it could use (`room_freed`)
    looked_at: float = 0.0  # the event loop's time of its last look while waiting (`room_freed` paces its looks)
    look_timer: asyncio.TimerHandle | None = None  # `room_freed` has woken it, or will
    route: list[dict[str, Any]] | None = None  # its router's trail so far (stored at each attempt, wait and end)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Judgement:
    """What the acceptance gate made of a successful attempt."""

    rejected: tuple[str, str] | None = None  # (error class, findings): `capability`, or `contract` for a broken gate
    cost_usd: float = 0.0  # what judging cost (the reviewer's attempts): it counts toward the run's budget
    tokens: int = 0


Judge = Callable[[Try, Profile, "AttemptEnd", "changes.Snapshot | None"], Awaitable[Judgement]]


@dataclass(frozen=True)
class RunFinish:
    """A run's end, kept until it is written."""

    run_id: int
    loop: str
    status: RunStatus
    finished_at: datetime
    exit_code: int | None
    error: str | None
    attempt_end: Callable[[sqlite3.Connection], object] | None = None  # its last attempt's, written with it


@dataclass(frozen=True)
class _Launch:
    """What `Executor._launch` did: a started child (with its cgroup, when it has one), or why not."""

    cgroup: Path | None
    problem: str | None  # `_not_started`'s: "" not found, else why it could not start
    started: child.Started | None
    spawned_at: datetime
    create_time: float | None


@dataclass
class AttemptEnd:
    parsed: ParsedOutput
    exit_code: int | None = None
    timed_out: bool = False
    cost_usd: float | None = None
    attempt_id: int | None = None
    number: int = 0  # the attempt's number in its run (workers and reviewers share one count)


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
        events: EventLog | None = None,
        backoff_base: float = 2.0,
        work_dir: Callable[[str], Path] | None = None,
    ) -> None:
        self.backoff_base = backoff_base
        self.work_dir = work_dir  # where a loop without --dir runs (by its name); None: the daemon's cwd
        self._workdirs: dict[str, str] = {}  # their paths by loop name, built once (pathlib's cost showed per run)
        self.runs = runs
        self.events = events
        self.attempts = attempts
        self.profiles = profiles
        self.log_path = log_path
        self.tmp_root = tmp_root
        self._tmp_root = os.fspath(tmp_root)  # once: os.path.join of a Path costs a conversion per attempt
        self._tmpdirs = TmpDirs(self._tmp_root)
        self.tag_prefix = tag_prefix
        self.clock = clock
        self.local_tz = local_tz
        self.kill_grace = kill_grace
        # Keyed by the loop's instance, not its name: a loop removed while it runs and added again is free at
        # once, while the old run ends under the definition it started with.
        self.active: dict[tuple[str, datetime | None], ActiveRun] = {}
        self.live_logs: dict[int, RunLog] = {}
        self.accepting = True
        self._background: set[asyncio.Future[Any]] = set()  # fire-and-forget work, kept referenced
        self.ready = asyncio.Event()  # cleared while the daemon recovers from a crash: fires wait for it
        self.ready.set()
        self.inflight: set[ActiveRun] = set()  # every slot until its run's end was written (or tried)
        self.unrecorded: dict[int, RunFinish] = {}  # run ends the store refused, by run id
        self._waiting: set[ActiveRun] = set()  # the slots waiting for room or a reset now
        self._retrier: asyncio.Task[None] | None = None

    def run_tag(self, run_id: int) -> str:
        return f"{self.tag_prefix}-{run_id}"

    async def fire(
        self, loop: Loop, trigger: str, scheduled_at: datetime, fired: LoopFire | None = None, missed: int = 0,
        missed_reason: SkipReason = "daemon_down", note: str | None = None,
    ) -> Run | None:  # fmt: skip
        """Record the fire and start its run; None when `fired` was already recorded. A catch-up fire
        says how many fires were `missed` (and why) for its `loop.fire_missed` event. `note` opens the run's log."""
        await self.ready.wait()  # not while the daemon still cleans up after a crash
        now = self.clock()
        current = self.active.get(loop.instance)
        code: SkipReason | None = None
        reason: str | None = None
        run: Run | None = None
        if not self.accepting:
            code = "shutting_down"
        elif current is not None:
            code = "waiting" if current.wait_until else "overlap"
        if code is None:
            slot = ActiveRun(trigger=trigger, note=note)
            self.active[loop.instance] = slot  # claimed before any await: two fires cannot both start
            self.inflight.add(slot)
            try:
                reason = await self._over_daily_cost(loop, now)
                if reason is None:
                    # Awaited directly, not through finish_first (its own task and waits: three turns of a busy
                    # event loop on every fire's way to its spawn): the write is the only suspension of the
                    # insert, and Database.write alone keeps the promise that a run it wrote starts. A stop
                    # cancelling this before the writer took it writes nothing; after, the row is returned
                    # (the cancellation comes at the next await) and nothing awaits until the run's task exists.
                    run = await self.runs.insert(
                        loop=loop.name, trigger=trigger, status="running", scheduled_at=scheduled_at,
                        started_at=now, backend=loop.backend, log_path_for=self.log_path, fired=fired,
                        missed=missed, missed_reason=missed_reason,
                    )  # fmt: skip
                else:
                    code = "over_daily_cost"
            except BaseException:
                self._release(loop, slot)
                raise
            if run is None:
                self._release(loop, slot)
                if reason is None:
                    return None  # `fired` was recorded already
        if run is None:
            assert code is not None
            return await self._skip(loop, trigger, scheduled_at, code, reason, fired, current, missed)
        slot.run_id = run.id
        slot.tag = self.run_tag(run.id)
        slot.task = asyncio.create_task(self._execute(loop, run, slot), name=f"run-{run.id}")
        slot.task.add_done_callback(lambda task: self._run_task_ended(loop, run, slot, task))
        return run

    async def record_missed(
        self, loop: Loop, scheduled_at: datetime, missed: int, why: SkipReason, fired: LoopFire | None
    ) -> Run | None:
        """Fires that fell while fleetd could not fire them, which `--catch-up skip` does not run: one
        `skipped` row for all of them (and its `loop.fire_missed` event)."""
        return await self._skip(loop, "catch-up", scheduled_at, why, None, fired, None, missed)

    async def _skip(
        self, loop: Loop, trigger: str, scheduled_at: datetime, code: SkipReason, reason: str | None,
        fired: LoopFire | None, blocker: ActiveRun | None, missed: int = 0,
    ) -> Run | None:  # fmt: skip
        """A fire that starts no run is a `skipped` row with the reason. Fires that find the same run in
        progress for the same reason share one row (its `skipped_count`): a run that waits hours for a
        reset under an `--every 1m` loop leaves one row, not hundreds."""
        now = self.clock()
        blocking_id = blocker.run_id if blocker else None
        until = blocker.wait_until.astimezone(self.local_tz) if blocker and blocker.wait_until else None
        kept = blocker.skipped if blocker else None
        if blocker is not None and kept is not None and kept[0] == code:
            # A late fire stands for the slots its timer passed over (`missed`): skipped, so are they.
            count = kept[2] + (missed or 1)
            grown = await finish_first(
                self.runs.add_skip(kept[1], count, skip_text(code, count, blocking_id, until), fired)
            )
            if grown is not None:
                blocker.skipped = (code, grown.id, count)
                return grown
            # Not added: a new row, unless `fired` was recorded already (then the insert writes nothing too).
        text = reason or skip_text(code, missed or 1, blocking_id, until)
        skipped = await finish_first(self.runs.insert(
            loop=loop.name, trigger=trigger, status="skipped", scheduled_at=scheduled_at, started_at=now,
            finished_at=now, backend=loop.backend, error=text, fired=fired, skip_reason=code, missed=missed,
        ))  # fmt: skip
        if skipped is not None and blocker is not None:
            blocker.skipped = (code, skipped.id, skipped.skipped_count)
        if code == "over_daily_cost" and skipped is not None and self.events is not None:
            await self.events.emit(now, "budget.exceeded", f"loop {loop.name}: run {skipped.id} skipped, {text}",
                                   backend=loop.backend, loop=loop.name, run_id=skipped.id)  # fmt: skip
        return skipped

    def running_runs(self) -> int:
        """Runs in flight now (waiting ones too)."""
        return len(self.active)

    def running(self, loop: Loop) -> ActiveRun | None:
        """The slot of this loop's run in flight (of this instance of it: see `Loop.instance`), if any."""
        return self.active.get(loop.instance)

    def _run_task_ended(self, loop: Loop, run: Run, slot: ActiveRun, task: asyncio.Task[None]) -> None:
        """Invariant: a run's slot is released once its task has ended, however it ended. `_execute` releases
        it itself; a task that ended outside that (cancelled before its first step, or failed before its
        `try`, e.g. its log could not be created) would leave the loop `overlap` forever and every stop
        waiting out both graces: its end is recorded here, then the slot released."""
        if slot not in self.inflight:
            return
        if task.cancelled():
            status: RunStatus = "interrupted"
            error = slot.interrupt_reason or "the run was stopped before it started"
        else:
            status, error = "failed", f"fleetd could not run it: {task.exception()}"
            log.error("run %s of loop %s failed to execute", run.id, loop.name, exc_info=task.exception())
        if slot.cancel_reason is not None:
            status, error = "cancelled", slot.cancel_reason
        slot.ended = True
        if (runlog := self.live_logs.pop(run.id, None)) is not None:
            with contextlib.suppress(OSError):  # its file could not be made: the error above says why
                runlog.close()  # its descriptor is not left open
        self._free_loop(loop, slot)
        finish = RunFinish(run.id, loop.name, status, self.clock(), None, error, slot.attempt_end)

        async def record() -> None:
            try:
                await self._record_finish(finish)
            finally:
                self._release(loop, slot)

        recording = asyncio.ensure_future(record())
        self._background.add(recording)
        recording.add_done_callback(self._background.discard)

    def _free_loop(self, loop: Loop, slot: ActiveRun) -> None:
        """The loop's later fires may start (its run's end may still be being recorded)."""
        if self.active.get(loop.instance) is slot:
            del self.active[loop.instance]

    def _release(self, loop: Loop, slot: ActiveRun) -> None:
        """The loop is free again and the slot done (shutdown stops waiting for it)."""
        self._free_loop(loop, slot)
        self.inflight.discard(slot)
        slot.done.set()

    async def _over_daily_cost(self, loop: Loop, now: datetime) -> str | None:
        """`budget: …` when the loop has spent its --daily-cost in the last 24 h, or a run at what its latest one cost
        would pass it."""
        if loop.daily_cost is None:
            return None
        since = day_since(now, loop.created_at)
        spent = await self.attempts.loop_cost_since(loop.name, since)
        return daily_cost_text(spent, loop.daily_cost, await self.attempts.loop_last_run_cost(loop.name, since))

    async def _execute(self, loop: Loop, run: Run, slot: ActiveRun) -> None:
        # Its file is made by the first attempt's launch thread (off the event loop), else by its first note.
        runlog = RunLog(Path(run.log_path or self.log_path(run.id)), loop.output_cap)
        self.live_logs[run.id] = runlog
        status: RunStatus = "failed"
        exit_code: int | None = None
        error: str | None = None
        try:
            if slot.note is not None:
                runlog.note(slot.note)
            loop = await self._in_workdir(loop)
            status, exit_code, error = await self._attempts(loop, run, slot, runlog)
        except Exception as e:  # the record must be finished whatever happened
            log.exception("run %s of loop %s failed to execute", run.id, loop.name)
            status, error = "failed", f"fleetd could not run it: {e}"
            with contextlib.suppress(OSError):  # the log itself may be what could not be made
                runlog.note(error)
        finally:
            # The run's end, decided here with no await since `_attempts` returned: a stop that came
            # first wins (even over a command that then exited 0 in its grace); a later one is refused.
            slot.ended = True
            if slot.cancel_reason is not None:
                status, error = "cancelled", slot.cancel_reason
                with contextlib.suppress(OSError):
                    runlog.note(f"cancelled: {slot.cancel_reason}")
            try:
                runlog.close()
            except OSError as e:  # nothing made its file before: a run without its log failed, saying why
                status, error = "failed", f"fleetd could not run it: {e}"
            # The slot goes first: a run whose end cannot be written (disk full) must not block its
            # loop's later fires; its record is retried in the background until it is written.
            self.live_logs.pop(run.id, None)
            self._free_loop(loop, slot)
            finish = RunFinish(run.id, loop.name, status, self.clock(), exit_code, error, slot.attempt_end)
            try:
                # The store writes the run's end and its `run.<status>` event in one transaction.
                await asyncio.shield(self._record_finish(finish))
            finally:
                self._release(loop, slot)
            log.info("run %s of loop %s: %s", run.id, loop.name, status)

    async def _in_workdir(self, loop: Loop) -> Loop:
        """The loop as its run sees it: without --dir, in its own directory under the home (not
        wherever the daemon was started), created 0700."""
        if loop.workdir is not None or self.work_dir is None:
            return loop
        known = self._workdirs.get(loop.name)
        if known is None:
            known = self._workdirs[loop.name] = str(self.work_dir(loop.name))
        if not os.path.isdir(known):  # one stat when it exists (every run but the first, or one deleted since)
            await asyncio.to_thread(_private_dirs, Path(known))
        return replace(loop, workdir=known)

    async def stop(self, run_id: int, *, kill: bool = False, reason: str) -> bool:
        """Stop run `run_id` and its whole process tree: SIGTERM, the kill grace, SIGKILL (`kill`: SIGKILL
        at once); a run waiting for a reset, or between attempts, just ends. It ends `cancelled`, its
        error `reason`. Returns False when no run of that id is in flight here, or its end was decided
        first (it is recorded as it ended). Returns once the run's end is written (or kept in
        `unrecorded`), or after the kill grace and 15 s more."""
        slot = self._slot_of(run_id)
        if slot is None:
            return False
        stopping = not slot.ended
        if not stopping and kill and slot.proc is not None and slot.kill_grace != 0:
            slot.kill_grace = 0.0  # its end is decided (a timeout's kill under way): --kill only ends the grace now
            self._kill_slot(slot, 0.0)
        if stopping:
            grace = 0.0 if kill else self.kill_grace
            if slot.cancel_reason is None:
                slot.cancel_reason = reason
                slot.interrupt_reason = slot.interrupt_reason or reason
            if slot.kill_grace is None or grace < slot.kill_grace:  # a second stop may hurry the first
                slot.kill_grace = grace
                slot.interrupted.set()
                if slot.proc is not None:
                    self._kill_slot(slot, grace)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slot.done.wait(), self.kill_grace + 15)
        return stopping

    def _kill_slot(self, slot: ActiveRun, grace: float) -> None:
        """Kill the slot's current child tree in the background (the run's own task sees it exit)."""
        assert slot.proc is not None
        killer = asyncio.ensure_future(
            proctree.kill_tree(slot.proc.pid, tag=slot.tag, grace=grace, root_exited=slot.proc.exited,
                               cgroup=slot.cgroup)
        )  # fmt: skip
        self._background.add(killer)
        killer.add_done_callback(self._background.discard)

    def _slot_of(self, run_id: int) -> ActiveRun | None:
        return next((s for s in self.inflight if s.run_id == run_id), None)

    def live_route(self, run_id: int) -> list[dict[str, Any]] | None:
        """The route of a run under way as it stands now (a waiting run's says what it waits for), or None."""
        slot = self._slot_of(run_id)
        return _route_so_far(slot) if slot is not None else None

    def in_flight(self, run_id: int) -> bool:
        """Whether run `run_id` is this daemon's and its end is not written (or tried) yet."""
        return self._slot_of(run_id) is not None

    async def wait_recorded(self, run_id: int, timeout: float) -> None:
        """Until run `run_id`'s end is written (or tried), if it is in flight here."""
        slot = self._slot_of(run_id)
        if slot is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.done.wait(), timeout)

    async def _record_finish(self, finish: RunFinish) -> bool:
        """Write a run's end; on failure keep it for `_retry_finishes` and say so once, loudly."""
        try:
            await self.runs.finish(
                finish.run_id,
                status=finish.status,
                finished_at=finish.finished_at,
                exit_code=finish.exit_code,
                error=finish.error,
                attempt_end=finish.attempt_end,
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
            assert loop.prompt_file is not None  # an inline prompt is read from no file
            why = unreadable_prompt(loop.prompt_file, e)
            runlog.note(why)
            return "failed", None, why
        except InvalidArgument as e:  # grown too big to pass since the loop was saved
            runlog.note(e.message)
            return "failed", None, e.message
        deadline = run.started_at + timedelta(seconds=loop.timeout_s) if loop.timeout_s else None
        if not adapter.needs_profile:
            alone = Try(Candidate(0, "", loop.backend, None, "local"), 1, None, None)  # no profile, no routing
            end = await self._attempt(1, loop, run, slot, runlog, None, prompt, alone, deadline, last=True)
            return self._verdict(loop, slot, end) or ("failed", end.exit_code, _describe(end.parsed))
        numbers = itertools.count(1)  # attempt numbers of the run, workers and reviewers alike
        router = Router(replace(loop_policy(loop), backoff_base=self.backoff_base), numbers=numbers)
        slot.route = router.trail

        async def judge(decision: Try, profile: Profile, end: AttemptEnd, before: changes.Snapshot | None) -> Judgement:
            """The acceptance gate: the verify command, then the reviewer agent."""
            if loop.verify:
                gate = await self._verify(loop, run, slot, runlog, decision, profile, end, deadline)
                if gate is not None or slot.interrupt_reason:
                    return Judgement(gate)
            if loop.review:
                judged = await self._review(loop, run, slot, runlog, prompt, end, before, deadline, numbers, router)
                if end.attempt_id is not None:
                    with contextlib.suppress(Exception):  # a record of the verdict, not a reason to fail the run
                        await self.attempts.set_accepted(
                            end.attempt_id, accepted=judged.rejected is None,
                            findings=judged.rejected[1] if judged.rejected else None,
                        )  # fmt: skip
                return judged
            return Judgement()

        try:
            ended = await self._drive(router, loop, run, slot, runlog, prompt, deadline, judge=judge)
            return _route_ended(router, runlog, ended, self.clock())
        finally:
            self._end_wait(slot)  # it ended while waiting (a stop, its deadline): nothing may wake it now
            with contextlib.suppress(Exception):  # the route is a record, not a reason to fail the run
                await self.runs.set_route(run.id, _route_so_far(slot) or [])

    async def _drive(
        self,
        router: Router,
        loop: Loop,
        run: Run,
        slot: ActiveRun,
        runlog: RunLog,
        prompt: str | None,
        deadline: datetime | None,
        *,
        judge: Judge,
        role: str = "work",
    ) -> tuple[RunStatus, int | None, str | None]:
        """Perform the router's decisions; it alone decides (`fleetd.routing.router`). `judge` is asked
        about every successful attempt (the acceptance gate); its rejection is the attempt's outcome."""
        steps = list(router.policy.chain)
        world, profiles = await self.profiles.world(steps)
        flow = router.route(world)
        decision = next(flow)
        end = AttemptEnd(ParsedOutput("unknown"))
        noted = 0
        sessions: dict[tuple[int, str], str] = {}  # the CLI session each worker's last attempt left, for repairs
        while True:
            noted, skips = self._note_route(runlog, router.trail, noted, role)
            reserved, probe = None, False
            if isinstance(decision, Try) and self._ended(loop, decision, slot, deadline, end) is None:
                # No await since the world was read: the room and the probe the router saw free are still free, and
                # taken now, before the skips are told (an await), so a run reading the world meanwhile sees them taken.
                reserved = profiles[decision.candidate.profile]
                probe = self.profiles.claim_probe(reserved)
                self.profiles.reserve(reserved)
            try:
                await self._tell_skips(loop, run, skips)
                if slot.waiting and not isinstance(decision, WaitUntil):
                    self._end_wait(slot)  # `running` again (or the run's end, written next)
                    await self.runs.set_waiting(run.id, None, route=_route_so_far(slot))
            except BaseException:
                if reserved is not None:
                    self.profiles.release(reserved, probe)
                raise
            ended = self._ended(loop, decision, slot, deadline, end)  # a stop or the deadline may have come meanwhile
            if ended is not None:
                if reserved is not None:
                    self.profiles.release(reserved, probe)
                return ended
            if isinstance(decision, Try):  # its profile reserved above
                profile = profiles[decision.candidate.profile]
                key = (decision.candidate.step, profile.name)
                settle = _Settle(self.profiles, profile)
                try:
                    before = await asyncio.to_thread(changes.snapshot, loop.workdir) if loop.review else None
                    end = await self._attempt(
                        decision.number, loop, run, slot, runlog, profile, prompt, decision, deadline,
                        resume=sessions.get(key) if decision.repair else None, role=role, settle=settle,
                    )  # fmt: skip
                finally:
                    settle()
                    if probe:  # only now: its circuit has stepped
                        self.profiles.free_probe(profile)
                if end.parsed.session_id:
                    sessions[key] = end.parsed.session_id
                verdict = self._verdict(loop, slot, end)
                if verdict is not None and verdict[0] != "succeeded":
                    return verdict  # timed out, or interrupted: nothing for the router to decide
                result = AttemptResult(
                    end.parsed.outcome,
                    end.parsed.error_class,
                    end.parsed.message or "",
                    end.cost_usd or 0.0,
                    end.parsed.usage.total,
                    end.parsed.reset_at,
                )
                if end.parsed.outcome == "succeeded":
                    judged = await judge(decision, profile, end, before)
                    if slot.interrupt_reason:
                        return "interrupted", end.exit_code, slot.interrupt_reason
                    result = replace(result, cost_usd=result.cost_usd + judged.cost_usd,
                                     tokens=result.tokens + judged.tokens)  # fmt: skip
                    if judged.rejected is not None:  # a capability shortfall, or a gate that cannot run
                        result = replace(result, outcome="failed", error_class=judged.rejected[0],
                                         message=judged.rejected[1])  # fmt: skip
                world, profiles = await self.profiles.world(steps)
                decision = flow.send(Observation(world, result))
            elif isinstance(decision, Backoff):
                until = self.clock() + timedelta(seconds=decision.seconds)
                await self._sleep_until(min(until, deadline) if deadline else until, slot)
                if slot.interrupt_reason:  # between attempts: no process to have an exit code (as in crash recovery)
                    return "interrupted", None, slot.interrupt_reason
                world, profiles = await self.profiles.world(steps)
                decision = flow.send(Observation(world))
            else:
                assert isinstance(decision, WaitUntil)
                # Waiting from here on, through the looks that find no room yet, until the next decision is not a
                # wait (`_end_wait`, at the loop's top): a change by hand or a stop meanwhile finds it waiting.
                told = slot.wait_until
                slot.waiting, slot.wait_until, slot.waited = True, decision.until, True
                slot.waiting_on = decision.waiting_on
                slot.looked_at = asyncio.get_running_loop().time()
                self._waiting.add(slot)
                if told != decision.until:  # its run.waiting event only as the wait begins or really changes
                    await self.runs.set_waiting(
                        run.id, decision.until, announce=not decision.again, route=_route_so_far(slot)
                    )
                await self._sleep_until(min(decision.until, deadline) if deadline else decision.until, slot,
                                        slot.look_again)  # fmt: skip
                slot.look_again.clear()  # this look answers it; one set from here on is for the next
                _drop_look(slot)
                if slot.interrupt_reason:  # waiting: no process to have an exit code (as in crash recovery)
                    return "interrupted", None, slot.interrupt_reason
                world, profiles = await self.profiles.world(steps)
                decision = flow.send(Observation(world))

    async def _verify(
        self,
        loop: Loop,
        run: Run,
        slot: ActiveRun,
        runlog: RunLog,
        decision: Try,
        profile: Profile,
        end: AttemptEnd,
        deadline: datetime | None,
    ) -> tuple[str, str] | None:
        """The acceptance gate's command, in the loop's directory after a successful attempt. None: exit 0,
        accepted. Else (`capability`, findings: the output's tail) for a rejection, or (`contract`, why) for a
        gate that cannot run at all (not found, 126/127, its own timeout): escalating would not help."""
        assert loop.verify is not None
        # The attempt's own number, as recorded: the router's count leaves out reviewers' attempts.
        number, candidate = end.number, decision.candidate
        # Its output becomes the attempt's findings, the run's error and the repair prompt: scrubbed as an attempt's is,
        # and so is the command where they quote it (a key typed into it).
        scrubber = Scrubber(await self.profiles.known_secrets())
        command = scrubber.text(loop.verify)
        runlog.note(f"verify (attempt {number}, {profile.name}): {command}")
        env = self._run_env(os.environ, run.id, loop.name, loop.env, slot.trigger, profile.name)
        env.update({"FLEETD_ATTEMPT": str(number), "FLEETD_BACKEND": candidate.backend})
        if loop.workdir:
            env["PWD"] = loop.workdir
        timeout = loop.verify_timeout_s
        if deadline is not None:
            timeout = max(0.0, min(timeout, (deadline - self.clock()).total_seconds()))
        started = self.clock()
        tail = bytearray()

        def take(chunk: bytes) -> None:
            clean = scrubber.feed(chunk)
            runlog.write(clean)
            tail.extend(clean)
            del tail[: max(0, len(tail) - VERIFY_TAIL)]

        try:
            launched = await _launches.call(
                functools.partial(child.start, ["/bin/sh", "-c", loop.verify], env=env, cwd=loop.workdir, stdin=False,
                                  merge_stderr=True, cgroup=None)
            )  # fmt: skip
            proc = child.Child(launched, b"", take, None)
        except OSError as e:
            runlog.note(f"verify could not start: {e.strerror or e}")
            return "contract", f"the verify command could not start: {e.strerror or e}"
        slot.proc = proc
        exited = proc.exited
        with contextlib.suppress(Exception):  # a record for crash recovery, not a reason to fail the gate
            await self.runs.set_pid(run.id, proc.pid, proctree.create_time(proc.pid))
        done, _ = await asyncio.wait({exited}, timeout=timeout)
        if not done:
            await proctree.kill_tree(proc.pid, tag=None, grace=self.kill_grace, root_exited=exited)
            await asyncio.wait({exited})
        code = exited.result()
        if not proc.output_closed.done():
            await asyncio.wait({proc.output_closed}, timeout=5)
        proc.close()
        slot.proc = None
        take(scrubber.flush())
        took_ms = round((self.clock() - started).total_seconds() * 1000)  # the log and the record say the same
        text = tail.decode(errors="replace").strip()
        runlog.note(f"verify exit {code} after {format_duration(took_ms / 1000)}")
        if not done:
            gate: tuple[str, str] | None = (
                "contract",
                f"the verify command timed out after {format_duration(timeout)}",
            )
        elif code == 0:
            gate = None
        elif code in (126, 127):
            gate = (
                "contract",
                f"the verify command could not run (exit {code}): {text.splitlines()[-1] if text else ''}",
            )
        else:
            gate = ("capability", f"verify `{command}` exited {code}:\n{text}" if text else f"verify exited {code}")
        if end.attempt_id is not None:
            with contextlib.suppress(Exception):  # a record of the gate, not a reason to fail the run
                await self.attempts.set_gate(
                    end.attempt_id, verify_exit=code, verify_ms=took_ms,
                    accepted=gate is None, findings=None if gate is None else gate[1],
                )  # fmt: skip
        return gate

    async def _review(
        self,
        loop: Loop,
        run: Run,
        slot: ActiveRun,
        runlog: RunLog,
        prompt: str | None,
        end: AttemptEnd,
        before: changes.Snapshot | None,
        deadline: datetime | None,
        numbers: Iterator[int],
        work: Router,
    ) -> Judgement:
        """The cheap reviewer agent: the task, what the worker said it did, and what changed, to a model
        that must answer `{"verdict": "accept"|"reject", "missing": [...], "reason": "..."}`. It is routed
        like any work (its own step, the loop's tiers, breakers, the run's remaining budget); an answer
        without a verdict is asked once more, then the run fails: a broken reviewer never accepts."""
        from fleetd.backends.parsers.verdict import extract_verdict

        assert loop.review is not None
        diff = await asyncio.to_thread(changes.changes_since, before, REVIEW_DIFF_CAP) if before else "(unknown)"
        question = review_prompt(prompt, end.parsed.final_text, diff)
        left = None if loop.max_cost is None else max(0.0, loop.max_cost - work.spent_cost - (end.cost_usd or 0.0))
        policy = Policy(chain=(loop.review,), tiers=frozenset(loop.tiers), max_cost=left, retries=1,
                        backoff_base=self.backoff_base, max_attempts=6)  # fmt: skip
        reviewer = Router(policy, role="review", numbers=numbers)
        verdicts: list[Any] = []

        async def read_verdict(
            decision: Try, profile: Profile, answer: AttemptEnd, _: changes.Snapshot | None
        ) -> Judgement:
            verdict = extract_verdict(answer.parsed.final_text or "")
            if verdict is None:
                return Judgement(("transient", NO_VERDICT))
            verdicts.append(verdict)
            return Judgement()

        runlog.note(f"review by {loop.review.describe()}")
        ended = await self._drive(reviewer, loop, run, slot, runlog, question, deadline, judge=read_verdict,
                                  role="review")  # fmt: skip
        status, _, reason = _route_ended(reviewer, runlog, ended, self.clock())
        work.trail.extend(reviewer.trail)  # its entries carry "role": "review"
        spent = Judgement(None, reviewer.spent_cost, reviewer.spent_tokens)
        if status != "succeeded" or not verdicts:
            why = (
                "the reviewer gave no verdict"
                if NO_VERDICT in (reason or "")
                else f"the reviewer could not run: {reason}"
            )
            runlog.note(why)
            return replace(spent, rejected=("contract", why))
        verdict = verdicts[-1]
        runlog.note(f"review: {verdict.verdict}" + (f" ({verdict.reason})" if verdict.reason else ""))
        if verdict.verdict == "accept":
            return spent
        missing = "".join(f"\n- {item}" for item in verdict.missing)
        return replace(spent, rejected=("capability", f"the reviewer rejected it: {verdict.reason}{missing}"))

    @staticmethod
    def _note_route(
        runlog: RunLog, trail: list[dict[str, Any]], noted: int, role: str = "work"
    ) -> tuple[int, list[dict[str, Any]]]:
        """The route's new entries into the run log (never inside a CLI's line: each note is its own line), and
        the candidates among them skipped as unavailable, for `_tell_skips`. A reviewer's entries join the work's
        trail after its own drive noted them: they are not noted twice."""
        skips = []
        for entry in trail[noted:]:
            if entry.get("role", "work") != role:
                continue
            if entry["kind"] != "outcome":
                runlog.note(f"route: {entry['detail']}")
            if entry["kind"] == "skip" and ": unavailable: " in entry["detail"]:
                skips.append(entry)
        return len(trail), skips

    async def _tell_skips(self, loop: Loop, run: Run, skips: list[dict[str, Any]]) -> None:
        """An event for each candidate skipped as unavailable."""
        for entry in skips:
            await self.profiles.candidate_skipped(loop, run.id, entry["profile"], entry["detail"])

    def _past(self, deadline: datetime | None) -> bool:
        return deadline is not None and self.clock() >= deadline

    def _ended(
        self, loop: Loop, decision: Decision, slot: ActiveRun, deadline: datetime | None, end: AttemptEnd
    ) -> tuple[RunStatus, int | None, str | None] | None:
        """How the drive ends before `decision` is carried out (a stop, the router's finish, the deadline), or None."""
        if slot.interrupt_reason:  # a stop: no new attempt, no retry, and a success in its kill grace is not one
            return "interrupted", end.exit_code, slot.interrupt_reason
        if isinstance(decision, Finish):
            if decision.status == "succeeded":
                return "succeeded", end.exit_code, None
            return "failed", end.exit_code, decision.reason
        if self._past(deadline):
            return "timed_out", end.exit_code, f"timed out after {format_duration(loop.timeout_s)}"
        return None

    def _verdict(self, loop: Loop, slot: ActiveRun, end: AttemptEnd) -> tuple[RunStatus, int | None, str | None] | None:
        """A final status, or None when another profile could still do it. A run the daemon's shutdown stopped is
        `interrupted` even when it then exits 0 in the kill grace (a clean shutdown, not its task done), as a
        timeout's is `timed_out`; a user's stop that came first makes it `cancelled` (`_execute`)."""
        if end.timed_out:
            return "timed_out", end.exit_code, f"timed out after {format_duration(loop.timeout_s)}"
        if slot.interrupt_reason:
            return "interrupted", end.exit_code, slot.interrupt_reason
        if end.parsed.outcome == "succeeded":
            return "succeeded", end.exit_code, None
        return None

    async def _sleep_until(self, until: datetime, slot: ActiveRun, wake: asyncio.Event | None = None) -> None:
        """Until `until` by the wall clock, or until the run is interrupted (or `wake` is set): never a tight loop."""
        events = [slot.interrupted, *([wake] if wake is not None else [])]
        while not any(event.is_set() for event in events):
            delay = (until - self.clock()).total_seconds()
            if delay <= 0:
                return
            waiters = [asyncio.ensure_future(event.wait()) for event in events]
            try:
                await asyncio.wait(waiters, timeout=min(delay, MAX_WAIT_SLEEP), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    def _end_wait(self, slot: ActiveRun) -> None:
        """The run waits no more (it goes on, or ends however it ends)."""
        slot.waiting, slot.wait_until, slot.waiting_on = False, None, frozenset()
        self._waiting.discard(slot)
        _drop_look(slot)

    def room_freed(self, profile: str) -> None:
        """An attempt under way on `profile` ended: runs waiting for room it may have held read the world again now,
        not at the recheck they were told (`PENDING_RECHECK`, while attempts may take far less). At most one look a
        `ROOM_LOOK_INTERVAL` each: a busy gateway ends calls many times a second, and each look reads the store."""
        loop = asyncio.get_running_loop()
        for slot in self._waiting:  # not every run in flight: this is on every gateway call's path
            if profile in slot.waiting_on and slot.look_timer is None:
                slot.look_timer = loop.call_at(slot.looked_at + ROOM_LOOK_INTERVAL, slot.look_again.set)

    def look_again(self) -> None:
        """A profile was changed by hand (its limits, enabled again, its circuit closed): runs waiting for a reset
        read the world again now rather than at the reset they were told (one waited a day after its limit was
        raised)."""
        for slot in self.active.values():
            if slot.waiting:
                slot.look_again.set()

    async def _attempt(
        self,
        number: int,
        loop: Loop,
        run: Run,
        slot: ActiveRun,
        runlog: RunLog,
        profile: Profile | None,
        prompt: str | None,
        decision: Try,
        deadline: datetime | None,
        resume: str | None = None,
        role: str = "work",
        last: bool = False,
        settle: Callable[[], None] | None = None,
    ) -> AttemptEnd:
        """One attempt, recorded. `last`: the run ends with it whatever it says (no routing, no profile), so
        its end is written with the run's (`ActiveRun.attempt_end`), one transaction instead of two. `settle`:
        ends its profile's reservation as its use joins the profile's windows (`attempt_finished`)."""
        candidate = decision.candidate
        adapter = get_adapter(candidate.backend)
        secret = await self.profiles.secret(profile) if profile and profile.has_secret else None
        # Without its key an attempt would run as no one (or as a key in the daemon's environment): an auth failure.
        key_missing = self.profiles.key_missing(profile) if profile and profile.has_secret and not secret else None
        scrubber = Scrubber([*(await self.profiles.known_secrets()), *([secret] if secret else [])])
        model = candidate.model or (profile.model if profile else None)
        attempt_id: int | None = None

        async def begin(pid: int | None = None, create_time: float | None = None, at: datetime | None = None) -> None:
            """The attempt's row, once it really starts (a child's pid with it: one write, not two)."""
            nonlocal attempt_id
            attempt_id = await self.attempts.start(
                run_id=run.id, number=number, backend=candidate.backend, profile=profile.name if profile else "",
                model=model, started_at=at or self.clock(), step=candidate.step + 1, role=role, pid=pid,
                pid_create_time=create_time, run_start=number == 1 and not slot.waited, route=_route_so_far(slot),
            )  # fmt: skip

        # A process's TMPDIR is made with its child, in its launch thread (`_launch`); `build` only names
        # paths in it.
        tmpdir = f"{self._tmp_root}/run{run.id}-{number}"
        if adapter.kind == "http":
            await asyncio.to_thread(self._tmpdirs.make, tmpdir)
        # --agent-arg is for the loop's own backend's CLI
        task = Task.of(loop, agent_args=candidate.backend == loop.backend)
        timeout = max(0.0, (deadline - self.clock()).total_seconds()) if deadline else None
        # A routed attempt's own bound, where it comes before the run's (a provider that hangs is a transient failure).
        own = loop.attempt_timeout_s if profile is not None else None
        # Within a second of the run's deadline the run's own timeout decides (the cut would land past it, counted
        # against the provider, where the run is over).
        slot.attempt_cut = own if own is not None and (timeout is None or own + 1.0 < timeout) else None
        timeout = slot.attempt_cut or timeout
        if decision.findings:
            prompt = with_findings(prompt, decision.findings)
        ctx = AttemptContext(run.id, task, prompt, profile, secret, model, tmpdir, timeout_s=timeout,
                             cost_left=decision.cost_left, tokens_left=decision.tokens_left,
                             resume_session=resume, role=role)  # fmt: skip
        try:
            if key_missing is not None:
                runlog.note(key_missing)
                end = AttemptEnd(ParsedOutput("failed", "auth", message=key_missing))
            elif adapter.kind == "http":
                await begin()
                end = await self._http_call(cast(HttpAdapter, adapter), ctx, slot, runlog, scrubber)
            else:
                end = await self._process_attempt(cast(ProcessAdapter, adapter), ctx, slot, runlog, scrubber, begin)
            if attempt_id is None:  # no child was started (bad workdir, not found): recorded all the same
                await begin()
        except Exception as e:
            if attempt_id is not None:  # fleetd failed inside it: the run fails, and its attempt ends, not `running`
                await self._end_abandoned(attempt_id, run.id, scrubber, e)
            raise
        finally:
            _removals.put(self._tmpdirs.release, tmpdir)
            runlog.end_line()  # the next attempt's notes and output start on a line of their own
        assert attempt_id is not None
        finished_at = self.clock()
        # Cut by the run's own end (its --timeout, a stop), not failed by its provider: its record said "transient:
        # exited -15 without output" (the kill's doing), blaming the provider.
        cut = bool(end.timed_out or slot.interrupt_reason) and end.parsed.outcome != "succeeded"
        if cut:
            said = f"cut by the run's --timeout ({format_duration(loop.timeout_s)})" if end.timed_out else (
                f"cut by the run's end: {slot.interrupt_reason}")  # fmt: skip
            end = replace(end, parsed=replace(end.parsed, outcome="failed", error_class=None, message=said))
        try:
            ending, cost = _written_up(end, attempt_id, finished_at, scrubber, profile)
        except Exception as e:  # a bug in the write-up: the run fails, and its attempt ends, not `running`
            await self._end_abandoned(attempt_id, run.id, scrubber, e, end.parsed, profile)
            raise
        parsed = end.parsed
        if last:  # nothing reads it before the run's end, which writes it
            slot.attempt_end = ending
        elif profile is None:
            try:
                await self.attempts.write_end(ending)
            except Exception as e:  # the run's own end still gets recorded (and retried)
                log.error("run %s: cannot record the end of attempt %s (%s)", run.id, number, e)
        if profile is not None:
            # An attempt fleetd itself cut short (its --timeout, a stop) says nothing about the provider:
            # its usage counts, but it moves neither the profile's state nor its circuit breaker.
            told = replace(parsed, outcome="unknown", error_class=None) if cut else parsed
            # Its end goes with its use, in one transaction: closed, it is counted (crash recovery counts it while
            # it is open). Should the count fail before that write, its end is written alone.
            try:
                await self.profiles.attempt_finished(profile, told, finished_at, cost, settle, ending)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.attempts.write_end(ending))
                raise
        end.cost_usd, end.attempt_id, end.number = cost, attempt_id, number
        return end

    async def _end_abandoned(
        self, attempt_id: int, run_id: int, scrubber: Scrubber, error: Exception, read: ParsedOutput | None = None,
        profile: Profile | None = None,
    ) -> None:  # fmt: skip
        """A started attempt that fleetd itself failed in ends `failed`, saying why (best effort: the run's own
        failure is what its caller records), with what its output said it used (`read`), where that was read."""
        usage = read.usage if read is not None else TokenUsage()
        try:
            parsed = scrubber.record(ParsedOutput("failed", message=_own_failure(error), usage=usage))
        except Exception:  # the scrubber is what failed: its words cannot be written unscrubbed
            parsed = ParsedOutput("failed", message="fleetd could not run it", usage=usage)
        cost = _attempt_cost(read, profile) if read is not None else None
        ending = finish_write(attempt_id, finished_at=self.clock(), exit_code=None, parsed=parsed,
                              error=parsed.message, cost_usd=cost)  # fmt: skip
        try:
            await asyncio.shield(self.attempts.write_end(ending))
        except Exception as e:
            log.error("run %s: cannot record the end of its attempt %s (%s)", run_id, attempt_id, e)

    async def _http_call(
        self, adapter: HttpAdapter, ctx: AttemptContext, slot: ActiveRun, runlog: RunLog, scrubber: Scrubber
    ) -> AttemptEnd:
        """The call, ended whatever happens: its row is written, and fleetd's own failure in it (no process to
        clean up after) ends it failed, saying why, instead of leaving it `running`."""
        try:
            return await self._http_attempt(adapter, ctx, slot, runlog, scrubber)
        except Exception as e:
            log.exception("run %s: the call to %s failed in fleetd", ctx.run_id, adapter.name)
            message = _own_failure(e)
            runlog.write(scrubber.flush())
            runlog.note(message)
            return AttemptEnd(ParsedOutput("failed", message=message))

    async def _http_attempt(
        self, adapter: HttpAdapter, ctx: AttemptContext, slot: ActiveRun, runlog: RunLog, scrubber: Scrubber
    ) -> AttemptEnd:
        def sink(data: bytes) -> None:
            runlog.write(scrubber.feed(data))

        call = asyncio.ensure_future(
            asyncio.wait_for(adapter.call(ctx, sink, ctx.timeout_s, self.clock(), self.local_tz), ctx.timeout_s)
        )
        stopped = asyncio.ensure_future(slot.interrupted.wait())  # a stop ends the call: there is no process
        await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not call.done():
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            runlog.write(scrubber.flush())
            runlog.note(f"the call was abandoned: {slot.interrupt_reason}")
            return AttemptEnd(ParsedOutput("failed", message=f"abandoned: {slot.interrupt_reason}"))
        try:
            parsed = call.result()
        except TimeoutError:
            runlog.write(scrubber.flush())
            if slot.attempt_cut is not None:
                return _attempt_cut(runlog, slot.attempt_cut, ParsedOutput("failed"))
            runlog.note(f"timed out after {format_duration(ctx.task.timeout_s)}")
            return AttemptEnd(ParsedOutput("failed", "transient", message="timed out"), timed_out=True)
        runlog.write(scrubber.flush())
        return AttemptEnd(parsed)

    async def _process_attempt(
        self,
        adapter: ProcessAdapter,
        ctx: AttemptContext,
        slot: ActiveRun,
        runlog: RunLog,
        scrubber: Scrubber,
        begin: Callable[[int, float | None, datetime], Awaitable[None]],
    ) -> AttemptEnd:
        """`begin(pid, create_time, started_at)` records the attempt once its child exists."""
        try:
            spec = adapter.build(ctx)
        except FleetdError as e:
            runlog.note(e.message)
            return AttemptEnd(ParsedOutput("failed", "contract", message=e.message))
        if spec.cwd and not os.path.isdir(spec.cwd):
            runlog.note(f"working directory not found: {spec.cwd}")
            return AttemptEnd(ParsedOutput("failed", "contract", message=f"working directory not found: {spec.cwd}"))
        tag = self.run_tag(ctx.run_id)
        env = self._child_env(ctx, spec, slot.trigger)
        ended_early = _LiveFailure()
        watch = adapter.live_failure if adapter.end_on_live_failure else None
        launch = await _launches.call(self._launch, ctx, spec, env, not adapter.stderr_apart, runlog)
        if launch.problem is not None:
            return _not_started(runlog, spec.argv[0], launch.problem)
        assert launch.started is not None
        cgroup = launch.cgroup
        # Each stream is scrubbed once, as it is read: the run log and the parser get the same clean bytes.
        stdout = _Capture(scrubber.fresh())
        stderr = _Capture(scrubber.fresh()) if adapter.stderr_apart else None
        try:
            proc = child.Child(launch.started, spec.stdin or b"", _sink(stdout, runlog, watch, ended_early),
                               _sink(stderr, runlog, watch, ended_early) if stderr else None)  # fmt: skip
        except Exception:  # nothing would watch or stop it: it is recorded (the caller ends it failed) and killed
            await self._orphan_killed(ctx.run_id, launch, tag, begin)
            raise
        slot.proc, slot.cgroup = proc, cgroup
        if slot.interrupted.is_set():  # the stop came while it was starting: interrupt_all did not see it
            self._kill_slot(slot, self.kill_grace if slot.kill_grace is None else slot.kill_grace)
        try:
            await begin(proc.pid, launch.create_time, launch.spawned_at)
        except Exception as e:  # only crash recovery needs the pid; the child is ours either way
            log.error("run %s: cannot record its process %s (%s)", ctx.run_id, proc.pid, e)
        try:
            # Checked only now: by then the child has (almost always) joined itself, and reading the list is cheap
            # where a write (a cgroup migration, even a no-op one) costs milliseconds of a kernel-wide lock. A
            # child that has exited already counts as joined (`cgroups.join`): nothing to read.
            if cgroup is not None and not proc.exited.done() and not cgroups.member_or_join(cgroup, proc.pid):
                # Neither the wrapper nor we could move it: the tag sweep stands in (it misses escapees
                # that clear their environment).
                log.warning("run %s: cannot move pid %s into %s; tracking it by tag", ctx.run_id, proc.pid, cgroup)
                _drop_cgroup(ctx.run_id, cgroup)
                cgroup = slot.cgroup = None
            exited = proc.exited
            waits: set[asyncio.Future[Any]] = {exited}
            stopper = None
            if watch is not None:
                stopper = asyncio.ensure_future(ended_early.seen.wait())
                waits.add(stopper)
            done, _ = await asyncio.wait(waits, timeout=ctx.timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if stopper is not None:
                stopper.cancel()
            timed_out = not done
            if not timed_out and exited not in done:
                await asyncio.wait({exited}, timeout=RATE_LIMIT_EXIT_GRACE)
            if timed_out and slot.attempt_cut is not None:
                runlog.note(f"attempt timed out after {format_duration(slot.attempt_cut)} (--attempt-timeout): "
                            "killing its process tree")  # fmt: skip
            elif timed_out:
                # `_verdict` makes it `timed_out`: a stop in the kill's grace is refused, not `cancelled`
                slot.ended = True
                runlog.note(f"timed out after {format_duration(ctx.task.timeout_s)}: killing the process tree")
            elif not exited.done():
                what = ended_early.error_class
                runlog.note(f"{what} in the live output: ending the attempt instead of waiting out the CLI's retries")
            if not exited.done():
                await proctree.kill_tree(proc.pid, tag=tag, grace=self.kill_grace, root_exited=exited, cgroup=cgroup)
                await asyncio.wait({exited})
            exit_code = exited.result()
            # Whatever the attempt left behind (background jobs holding the output pipes open) goes too. An
            # empty cgroup (the usual case) says so by going: the kernel refuses to rmdir a populated one, so one
            # rmdir both asks and removes (no read of cgroup.events first), and no snapshot, no thread.
            # On fleetd's own failure in between, `_abandon_child` kills what is left and removes the cgroup.
            if cgroup is not None and cgroups.remove(cgroup):
                self._tmpdirs.vacated(ctx.tmpdir)  # nothing of the run can write into it now: it may be recycled
            else:
                leftovers = await proctree.kill_tree(None, tag=tag, grace=self.kill_grace, cgroup=cgroup)
                if leftovers:
                    runlog.note(f"killed {leftovers} leftover process(es) of this run")
                _drop_cgroup(ctx.run_id, cgroup)
            if not proc.output_closed.done():
                await asyncio.wait({proc.output_closed}, timeout=10)
            proc.close()
            proc.check()
            for capture in (stdout, stderr):
                if capture is not None:
                    runlog.write(capture.flush())
            slot.proc, slot.cgroup = None, None
            out = ProcessOutput(exit_code, stdout.text(), stderr.text() if stderr else "")
            try:
                parsed = adapter.interpret(ctx, out, self.clock(), self.local_tz)
            except Exception as e:  # a parser's bug: its process is gone, so the attempt ends, failed, saying why
                log.exception("run %s: cannot read the output of %s", ctx.run_id, adapter.name)
                parsed = ParsedOutput("failed", message=f"fleetd could not read its output: {type(e).__name__}: {e}")
                runlog.note(parsed.message or "")
            # The whole output's reading wins; the live line's class stands in where that found nothing.
            if ended_early.error_class and parsed.outcome != "succeeded" and parsed.error_class in (None, "unknown"):
                parsed = replace(parsed, outcome="failed", error_class=ended_early.error_class)
            if timed_out and slot.attempt_cut is not None:
                return _attempt_cut(None, slot.attempt_cut, parsed, exit_code)
            return AttemptEnd(parsed, exit_code, timed_out)
        except Exception:  # fleetd's own failure: the run fails (the caller ends the attempt), its processes go
            await self._abandon_child(ctx.run_id, proc, tag, slot)
            raise

    async def _orphan_killed(
        self, run_id: int, launch: _Launch, tag: str, begin: Callable[[int, float | None, datetime], Awaitable[None]]
    ) -> None:
        """A child started that fleetd then could not take over (`child.Child` failed): its attempt recorded, its
        tree killed and it reaped (no event loop watches it), its cgroup removed. Raises nothing."""
        assert launch.started is not None
        pid = launch.started.pid
        try:
            await begin(pid, launch.create_time, launch.spawned_at)
        except Exception as e:
            log.error("run %s: cannot record its process %s (%s)", run_id, pid, e)
        finally:  # a cancellation of the record above does not spare it
            try:
                await proctree.kill_tree(pid, tag=tag, grace=self.kill_grace, create_time=launch.create_time,
                                         cgroup=launch.cgroup)  # fmt: skip
                await asyncio.to_thread(launch.started.popen.wait, self.kill_grace + 5)
            except Exception:
                log.exception("run %s: cannot kill its process %s", run_id, pid)
            if launch.cgroup is not None:
                _drop_cgroup(run_id, launch.cgroup)

    async def _abandon_child(self, run_id: int, proc: child.Child, tag: str, slot: ActiveRun) -> None:
        """After fleetd failed inside an attempt: its process tree killed (nobody else would stop it), its exit
        reaped, its pipes closed and its cgroup removed. Raises nothing: the failure being handled is the news."""
        try:
            # Its pid only while it is not reaped (a reaped one may name another process by now): else the cgroup
            # or the tag sweep finds what is left.
            root = None if proc.exited.done() else proc.pid
            await proctree.kill_tree(root, tag=tag, grace=self.kill_grace, root_exited=proc.exited, cgroup=slot.cgroup)
            await asyncio.wait({proc.exited}, timeout=self.kill_grace + 5)
            proc.close()
            if slot.cgroup is not None:
                _drop_cgroup(run_id, slot.cgroup)
        except Exception:
            log.exception("run %s: cannot clean up after its process %s", run_id, proc.pid)
        slot.proc, slot.cgroup = None, None

    def _launch(
        self, ctx: AttemptContext, spec: ProcessSpec, env: dict[str, str], merge_stderr: bool, runlog: RunLog
    ) -> _Launch:
        """In a launch thread, everything that starts an attempt's process and may wait on a busy host: the run
        log's file and its private TMPDIR (the filesystem's journal), the run's cgroup (the kernel's cgroup
        mutex), the spawn itself (the parent waits until the child has exec'd) and the child's create time (a
        file of /proc). On the event loop each would stall every other run meanwhile. `merge_stderr`: one pipe
        for both streams (`ProcessAdapter.stderr_apart`). Raises OSError, starting nothing, when the run log
        cannot be made."""
        runlog.create_file()  # the run's first attempt makes it; a no-op after that
        self._tmpdirs.make(ctx.tmpdir)
        # The run's processes are tracked by its cgroup where one can be made (an escapee that leaves the
        # session and clears its environment stays in it), else by session + tag (proctree). The first call
        # probes the hierarchy.
        cgroup = cgroups.run_path(self.tag_prefix, ctx.run_id)
        if cgroup is not None and not cgroups.create(cgroup):
            log.warning("run %s: cannot make its cgroup %s; tracking its processes by tag", ctx.run_id, cgroup)
            cgroup = None
        # The child joins its cgroup through a /bin/sh wrapper that execs the command, where a missing
        # command would be the wrapper's exit 127: find that out first, as the spawn would (a `/bin/sh -c`
        # script joins at its own top: the spawn itself says).
        wrapped = cgroup is not None and cgroups.wraps(spec.argv)
        problem = _cannot_exec(spec.argv[0], env, spec.cwd) if wrapped else None
        if problem is None:
            # The spawn returns once the child runs its program: this is when it started, however long the
            # event loop then takes to resume the run.
            spawned_at = self.clock()
            try:
                started = child.start(spec.argv, env=env, cwd=spec.cwd, stdin=True, merge_stderr=merge_stderr,
                                      cgroup=cgroup)  # fmt: skip
            except FileNotFoundError:
                problem = ""
            except OSError as e:
                problem = str(e.strerror or e)
            else:
                return _Launch(cgroup, None, started, spawned_at, proctree.create_time(started.pid))
        _drop_cgroup(ctx.run_id, cgroup)
        return _Launch(None, problem, None, self.clock(), None)

    def _child_env(self, ctx: AttemptContext, spec: ProcessSpec, trigger: str) -> dict[str, str]:
        base = _daemon_env()
        if spec.unset_env:
            base = {k: v for k, v in base.items() if k not in spec.unset_env}
        env = self._run_env({**base, **spec.env}, ctx.run_id, ctx.task.loop, ctx.task.env, trigger,
                            ctx.profile.name if ctx.profile else "")  # fmt: skip
        # The CLIs litter TMPDIR; each attempt gets its own, removed afterwards.
        env.update({"TMPDIR": ctx.tmpdir, "TMP": ctx.tmpdir, "TEMP": ctx.tmpdir})
        if spec.cwd:  # not the daemon's own PWD, which a child that reads the variable would believe
            env["PWD"] = spec.cwd
        return env

    def _run_env(
        self, base: Mapping[str, str], run_id: int, loop: str, loop_env: Mapping[str, str], trigger: str, profile: str
    ) -> dict[str, str]:
        """The environment every process of a run gets (its attempts, its verify command): `base`, the
        loop's --env over it, then fleetd's own variables, which nothing overrides."""
        return {
            **base,
            **loop_env,
            "FLEETD_RUN_ID": str(run_id),
            "FLEETD_LOOP": loop,
            "FLEETD_TRIGGER": trigger,
            "FLEETD_PROFILE": profile,
            proctree.TAG_VAR: self.run_tag(run_id),
        }

    def interrupt_waiting(self, reason: str) -> None:
        """Runs that only wait for a reset have nothing to finish: they end at once on shutdown."""
        for slot in self.active.values():
            if slot.waiting:
                slot.interrupt_reason = reason
                slot.interrupted.set()

    async def interrupt_all(self, reason: str, grace: float | None = None) -> None:
        """Kill every in-flight run's tree (`grace` 0: SIGKILL at once; default the kill grace); each run
        then finishes as `interrupted`."""
        grace = self.kill_grace if grace is None else grace
        slots = list(self.active.values())
        for slot in slots:
            slot.interrupt_reason = reason
            slot.interrupted.set()
        await asyncio.gather(
            *(
                proctree.kill_tree(
                    s.proc.pid,
                    tag=s.tag,
                    grace=grace,
                    root_exited=s.proc.exited,
                    cgroup=s.cgroup,
                )
                for s in slots
                if s.proc is not None
            ),
            return_exceptions=True,
        )
        await self.wait_idle(timeout=grace + 15)

    async def wait_idle(self, timeout: float) -> bool:
        slots = list(self.inflight)
        if not slots:
            return True
        # Not wait_for(gather(…)): cancelled (a second signal cuts the stop grace short), 3.11's wait_for
        # left the gather's CancelledError unretrieved, logged with a traceback when it was collected.
        waiters = [asyncio.ensure_future(s.done.wait()) for s in slots]
        try:
            _, pending = await asyncio.wait(waiters, timeout=timeout)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not pending


def review_prompt(task: str | None, final_text: str | None, diff: str) -> str:
    """What the reviewer agent is asked: check the work like a careful reviewer, answer in JSON."""
    return (
        "You review an automated coding agent's work. Do not change any file. Decide whether the task below is done.\n"
        "Answer with one JSON object and nothing after it: "
        '{"verdict": "accept" or "reject", "missing": ["what is not done yet", ...], "reason": "one sentence"}.\n'
        "Reject when something the task asks for is missing or wrong; accept when it is done.\n\n"
        f"## The task\n{task or '(none)'}\n\n## What the agent said it did\n{final_text or '(nothing)'}\n\n"
        f"## What changed\n{diff}\n"
    )


def with_findings(prompt: str | None, findings: str) -> str:
    """The original task, then what the acceptance gate found wrong with the work so far."""
    return (
        f"{prompt or ''}\n\n---\nA check of the previous attempt at this task rejected it. Fix what it found:\n"
        f"{findings}\n"
    )


def _drop_look(slot: ActiveRun) -> None:
    """The look `room_freed` set up is taken, or no longer wanted: the next attempt's end may set up another."""
    if slot.look_timer is not None:
        slot.look_timer.cancel()
        slot.look_timer = None


class _Settle:
    """Ends an attempt's reservation of its profile, once: as its use joins the profile's windows (with no await
    between: never counted twice, nor not at all), or when the attempt ends without getting that far."""

    def __init__(self, profiles: ProfileSource, profile: Profile) -> None:
        self._profiles, self._profile = profiles, profile
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._profiles.release(self._profile)


def _route_so_far(slot: ActiveRun) -> list[dict[str, Any]] | None:
    """The run's route as its record keeps it, written with each attempt's start and each wait, and whole at the
    run's end (a kill -9 left a run without one)."""
    return [_route_json(entry) for entry in slot.route] if slot.route is not None else None


def _route_json(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in entry.items()}


def watch_children_by_pidfd() -> None:
    """Call from the running loop, before the first child. Python 3.11's default child watcher starts
    a thread per child to wait for it; a pidfd needs no thread. For the daemon's asyncio children (hook
    commands): a run's own children never meet a watcher (`loops/child`). From 3.12 asyncio picks pidfds
    itself; without them (not Linux, kernel < 5.3) nothing changes."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


# The daemon's environment, decoded, with the raw table it was decoded from. Iterating os.environ decodes
# every key and value in Python on every call (a twentieth of the event loop's time at hundreds of runs a
# second); comparing the raw tables is one C-level dict comparison, and still sees every change to it.
_env_cache: tuple[dict[bytes, bytes], dict[str, str]] | None = None


def _daemon_env() -> dict[str, str]:
    """os.environ as a plain dict (the caller's to change), decoded again only when it changed."""
    global _env_cache
    raw = getattr(os.environ, "_data", None)
    if not isinstance(raw, dict):  # not CPython's posix layout: decode it every time
        return dict(os.environ)
    if _env_cache is None or _env_cache[0] != raw:
        _env_cache = (raw.copy(), dict(os.environ))
    return _env_cache[1].copy()


# The run path's blocking calls, in threads of its own (`loops/workers`): launches wait for a vfork and a
# busy disk with the GIL released, so several overlap (8 dispatched a quarter more runs of `true` a second
# than 4, and 16 or 32 no more than 8, on 2 cores); TMPDIRs are released (recycled or removed) by one thread
# nothing waits for.
_launches = Workers("fleetd-launch", 8)
_removals = Workers("fleetd-tmpdirs", 1)


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
    return AttemptEnd(ParsedOutput("failed", "unavailable", message=message))


def _private_dirs(path: Path) -> None:
    """`path` and any missing parent, each created 0700 (the umask must not loosen them)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o700)
            os.chmod(p, 0o700)


def _drop_cgroup(run_id: int, cgroup: Path | None) -> None:
    if cgroup is not None and not cgroups.remove(cgroup):
        log.warning("run %s: its cgroup %s still holds processes; left for the next start to reap", run_id, cgroup)


def _own_failure(error: Exception) -> str:
    """What an attempt fleetd itself failed in says (an HTTP call's, a process attempt's)."""
    return f"fleetd could not run it: {type(error).__name__}: {error}"


def _route_ended(
    router: Router, runlog: RunLog, ended: tuple[RunStatus, int | None, str | None], now: datetime
) -> tuple[RunStatus, int | None, str | None]:
    """`ended`, a drive's end, said where its route ends when no router decided it (the run's --timeout, a stop): the
    route ended at its last `try` or `wait`, as if the run were still under way. Not twice, after the router's own
    stop."""
    status, _, reason = ended
    if status in ("timed_out", "interrupted") and not (router.trail and router.trail[-1]["kind"] == "stop"):
        said = reason or status
        router.note(now, "stop", said)
        runlog.note(f"route: {said}")
    return ended


def _attempt_cut(runlog: RunLog | None, after: float, read: ParsedOutput, exit_code: int | None = None) -> AttemptEnd:
    """An attempt cut at its --attempt-timeout, not the run's timeout: the chain goes on. What its output said before
    the cut stands: a finished answer (Claude Code can print its result and then not exit) is judged as any success,
    a failure the output names keeps its class (an auth error is no reason to retry). Else it is a transient failure:
    the provider hung, or the work did."""
    message = f"attempt timed out after {format_duration(after)} (--attempt-timeout)"
    if runlog is not None:
        runlog.note(message)
    if read.outcome == "succeeded" or read.error_class not in (None, "unknown", "transient"):  # (transient: the kill's)
        return AttemptEnd(read, exit_code)
    return AttemptEnd(replace(read, outcome="failed", error_class="transient", message=message), exit_code)


def _written_up(
    end: AttemptEnd, attempt_id: int, finished_at: datetime, scrubber: Scrubber, profile: Profile | None
) -> tuple[Callable[[sqlite3.Connection], None], float | None]:
    """An attempt's end as it is written (`end.parsed` scrubbed in place), and its cost."""
    # The boundary: the streams were scrubbed before parsing; this catches what the parser decoded into
    # a key (a JSON escape) and the messages fleetd wrote itself. Nothing after this sees the raw values.
    end.parsed = parsed = scrubber.record(end.parsed)
    cost = _attempt_cost(parsed, profile)
    error = None if parsed.outcome == "succeeded" else _describe(parsed)
    ending = finish_write(
        attempt_id, finished_at=finished_at, exit_code=end.exit_code, parsed=parsed, error=error, cost_usd=cost
    )
    return ending, cost


def _attempt_cost(parsed: ParsedOutput, profile: Profile | None) -> float | None:
    """What an attempt cost: as its output said, else its usage at its profile's rates (None: neither is known)."""
    if parsed.cost_usd is not None or profile is None:
        return parsed.cost_usd
    usage = parsed.usage
    return profile.cost(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)


def _describe(parsed: ParsedOutput) -> str:
    message = parsed.message or parsed.outcome
    return f"{parsed.error_class}: {message}" if parsed.error_class else message


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


@dataclass
class _LiveFailure:
    """The first failure a line of live output proved (adapter.live_failure), for CLIs that would
    otherwise sit out their own retries."""

    seen: asyncio.Event = field(default_factory=asyncio.Event)
    error_class: ErrorClass | None = None


def _sink(
    capture: _Capture, runlog: RunLog, watch: Callable[[str], ErrorClass | None] | None, ended: _LiveFailure
) -> child.Sink:
    """What one output stream's chunks go through as they are read: scrubbed, kept, logged, watched."""

    def take(chunk: bytes) -> None:
        nonlocal watch
        runlog.write(capture.add(chunk))
        if watch is None or ended.seen.is_set():
            return
        # The watch sees the raw lines, as early as possible; it only names a class.
        try:
            for line in capture.lines(chunk):
                if found := watch(line):
                    ended.error_class = found
                    ended.seen.set()
                    break
        except Exception:  # its bug (it must never raise) costs the early end, not the stream: give it up
            log.exception("cannot watch the live output for failures; the attempt ends when its process does")
            watch = None

    return take
