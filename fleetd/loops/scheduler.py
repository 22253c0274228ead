"""The live schedule: one timer task per enabled loop, rebuilt from the database at start.

The database's next_fire_at is the source of truth; this module only sleeps until it, asks
`schedule.plan_*` what to do, and records the answer together with the run it starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.triggers.base import BaseTrigger

from fleetd.errors import Conflict, InvalidArgument, NotFound
from fleetd.loops.executor import Executor
from fleetd.loops.model import path_fix, path_problems
from fleetd.loops.schedule import Plan, build_trigger, first_fire, never_fires, plan_startup, plan_wake
from fleetd.loops.whynot import LoopFacts, NotFiring, why_not
from fleetd.records.fire import SkipReason, daily_cost_eases
from fleetd.records.loop import Loop, paused_since
from fleetd.records.money import day_since
from fleetd.records.run import LoopFire, Run
from fleetd.store.loops import LoopStore
from fleetd.timefmt import local_text

log = logging.getLogger("fleetd.scheduler")
MAX_SLEEP = 30.0  # re-check the wall clock at least this often (suspend, clock changes)


class Scheduler:
    def __init__(
        self,
        loops: LoopStore,
        executor: Executor,
        *,
        clock: Callable[[], datetime],
        misfire_grace: timedelta,
    ) -> None:
        self.loops = loops
        self.executor = executor
        self.clock = clock
        self.misfire_grace = misfire_grace
        self._timers: dict[str, asyncio.Task[None]] = {}
        # A timer's fire still being recorded, by loop. Shielded, it outlives its timer when an edit or a
        # resume re-arms the loop meanwhile; the new timer waits for it (`_timer`).
        self._firing: dict[str, asyncio.Future[Run | None]] = {}

    async def start(self) -> None:
        task = asyncio.current_task()
        for loop in await self.loops.list():
            # A stop cancels the start: a fire's write waits that out (`finish_first`) and re-raises the
            # cancellation at the next await, which the next fire's write would wait out again, and so
            # on through every loop. Still cancelling: start no more.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            if not loop.enabled:
                continue
            try:
                await self._start_loop(loop)
            except Exception:  # one broken loop must not keep the others from running
                log.exception("cannot schedule loop %s", loop.name)

    async def _start_loop(self, loop: Loop) -> None:
        trigger = build_trigger(loop.schedule, _anchor(loop), stored=True)
        now = self.clock()
        plan = plan_startup(trigger, loop.next_fire_at, now, loop.catch_up)
        try:
            if plan.fire is not None:
                log.info(
                    "loop %s missed %s while down: one catch-up run", loop.name, local_text(plan.fire.scheduled_at)
                )
                fired = LoopFire(loop.name, plan.fire.scheduled_at, plan.next_fire_at, due=loop.next_fire_at)
                await self.executor.fire(loop, "catch-up", plan.fire.scheduled_at, fired, missed=plan.missed)
            elif plan.next_fire_at != loop.next_fire_at:
                log.info(
                    "loop %s missed %s while down: skipped (catch-up skip)", loop.name, local_text(loop.next_fire_at)
                )
                await self._missed(loop, plan, loop.next_fire_at, "daemon_down")
            elif loop.catch_up == "once" and (cut := await self._cut_while_waiting(loop)) is not None:
                # Its work was never done (it waited for headroom, perhaps for hours): as a fire missed while down,
                # it runs once now, and waits again if the headroom has not come.
                log.info("loop %s: run %s was waiting for headroom when the daemon stopped: one catch-up run",
                         loop.name, cut.id)  # fmt: skip
                note = (f"run {cut.id} was waiting for headroom when the daemon stopped"
                        f" (until {local_text(cut.wait_until)}): this run does its work")  # fmt: skip
                await self.executor.fire(loop, "catch-up", cut.scheduled_at, note=note)
        except Exception:
            # Nothing was recorded: the timer takes the stored (past) due time and applies the loop's
            # catch-up policy itself, retrying like any fire it could not record.
            log.exception("loop %s: could not record its missed fire; the timer retries it", loop.name)
            self._arm(loop, trigger, loop.next_fire_at)
            return
        self._arm(loop, trigger, plan.next_fire_at)

    async def _cut_while_waiting(self, loop: Loop) -> Run | None:
        """The loop's newest run (`skipped` rows aside), if the daemon's stop (or crash) interrupted it while it
        waited for headroom (the store keeps its `wait_until` then). Only the newest: the run that does its work is
        newer, whatever its end. Not once the loop was changed since (resumed, edited): someone has seen to it, and
        a run of weeks ago must not come back at some later start."""
        assert loop.created_at is not None
        newest = await self.executor.runs.newest_ran(loop.name, loop.created_at)
        if newest is None or newest.status != "interrupted" or newest.wait_until is None:
            return None
        if loop.updated_at is not None and newest.finished_at is not None and loop.updated_at > newest.finished_at:
            return None
        return newest

    def _arm(self, loop: Loop, trigger: BaseTrigger, due: datetime | None) -> None:
        self._disarm(loop.name)
        if due is not None:
            self._timers[loop.name] = asyncio.create_task(self._timer(loop, trigger, due), name=f"timer-{loop.name}")

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    async def _timer(self, loop: Loop, trigger: BaseTrigger, due: datetime | None) -> None:
        firing = self._firing.get(loop.name)
        if firing is not None:
            # The timer this one replaces is still recording its fire at `due`, which then moves the stored
            # next fire time on: take that time, or this timer would fire the same due time again.
            await asyncio.wait([firing])
            try:
                due = (await self.loops.get(loop.name)).next_fire_at
            except NotFound:
                due = None
            except Exception:  # the store failing: `due` it is; a fire recorded already is not recorded twice
                log.warning("loop %s: cannot re-read its next fire time", loop.name, exc_info=True)
        while due is not None:
            delay = (due - self.clock()).total_seconds()
            if delay > 0:
                await asyncio.sleep(min(delay, MAX_SLEEP))
                continue
            plan = plan_wake(trigger, due, self.clock(), loop.catch_up, self.misfire_grace)
            try:
                if plan.fire is not None:
                    # A retry after an error cannot record the fire twice: the run row is written only
                    # while the stored next fire time is still `due` (see LoopFire).
                    fired = LoopFire(loop.name, plan.fire.scheduled_at, plan.next_fire_at, due=due)
                    # Shielded: an edit, pause or rm that re-arms or disarms this timer mid-fire must not
                    # cancel the fire between writing its run row and starting the run.
                    firing = asyncio.ensure_future(self.executor.fire(
                        loop, plan.fire.trigger, plan.fire.scheduled_at, fired, missed=plan.missed,
                        missed_reason="woke_late",
                    ))  # fmt: skip
                    self._firing[loop.name] = firing
                    firing.add_done_callback(lambda done, name=loop.name: self._fired(name, done))
                    started = await asyncio.shield(firing)
                    if started is None:
                        log.info("loop %s: the fire at %s was already recorded", loop.name, due)
                else:
                    log.info("loop %s: the timer woke late for %s: skipped (catch-up skip)", loop.name, due)
                    await self._missed(loop, plan, due, "woke_late")
            except Exception:
                log.exception("loop %s: could not record the fire at %s; retrying", loop.name, due)
                await asyncio.sleep(1)
                continue
            due = plan.next_fire_at
        self._timers.pop(loop.name, None)

    def _fired(self, name: str, firing: asyncio.Future[Run | None]) -> None:
        if self._firing.get(name) is firing:
            del self._firing[name]

    async def _missed(self, loop: Loop, plan: Plan, due: datetime | None, why: SkipReason) -> None:
        """Missed fires `--catch-up skip` does not run: one `skipped` row (and event) for them all, written
        with the move of the loop's next fire time, so `loop show` can say why it did not fire."""
        assert due is not None
        fired = LoopFire(loop.name, due, plan.next_fire_at, due=due)
        if await self.executor.record_missed(loop, due, plan.missed, why, fired) is None:
            log.info("loop %s: the missed fire at %s was already recorded", loop.name, due)

    # -- changes from the API -------------------------------------------------------------------

    async def add(self, loop: Loop) -> Loop:
        """Save and arm a new loop (checked already: `LoopService.define`)."""
        now = self.clock()
        loop.created_at = loop.updated_at = now
        loop.paused_at = paused_since(loop.enabled, None, now)
        trigger = build_trigger(loop.schedule, now)
        first = first_fire(trigger, now)
        # A cron expression that never fires is wrong even paused; a past --at only matters enabled.
        if first is None and (loop.enabled or loop.schedule.kind == "cron"):
            raise InvalidArgument(never_fires(loop.schedule))
        loop.next_fire_at = first if loop.enabled else None
        saved = await self.loops.insert(loop)
        if saved.enabled:
            self._arm(saved, trigger, saved.next_fire_at)
        return saved

    async def edit(self, old: Loop, new: Loop) -> Loop:
        """Save `new` (checked already) over `old`, the loop it was made from, and re-arm its timer with it:
        it takes effect at the next fire. A run in flight keeps the Loop it was fired with: `new` is another
        object, and nothing re-reads a loop mid-run. A new schedule, or a loop enabled again, gets its next
        fire recomputed (like `resume`: nothing missed is caught up); otherwise the next fire stays. A pause,
        resume or edit since `old` was read makes it a Conflict, nothing saved (`LoopStore.replace`)."""
        now = self.clock()
        new.created_at, new.updated_at = old.created_at, now
        new.paused_at = paused_since(new.enabled, None if old.enabled else old.paused_at, now)
        trigger = build_trigger(new.schedule, _anchor(old))  # interval loops stay on the grid of their creation
        moved = new.schedule != old.schedule or new.enabled != old.enabled
        if moved:
            due = first_fire(trigger, now)
            if due is None and (new.enabled or new.schedule.kind == "cron"):
                raise InvalidArgument(never_fires(new.schedule))
            new.next_fire_at = due if new.enabled else None
        saved = await self.loops.replace(new, was=old, schedule_moved=moved)
        if saved.enabled:
            self._arm(saved, trigger, saved.next_fire_at)
        else:
            self._disarm(saved.name)
        return saved

    async def pause(self, name: str) -> Loop:
        loop = await self.loops.get(name)
        self._disarm(name)
        await self.loops.set_state(name, updated_at=self.clock(), enabled=False, clear_next=True)
        return await self.loops.get(loop.name)

    async def resume(self, name: str) -> Loop:
        """Fires that fell while paused are not caught up: pausing means 'not now'."""
        loop = await self.loops.get(name)
        if loop.enabled and name in self._timers:
            return loop
        now = self.clock()
        trigger = build_trigger(loop.schedule, _anchor(loop), stored=True)
        due = first_fire(trigger, now)
        if due is None:  # as `loop edit --enabled` refuses it: enabled, it would never fire
            said = never_fires(loop.schedule)
            if loop.last_fire_at is not None and loop.schedule.kind == "at":
                said = f"--at {loop.schedule.expr} already fired"
            raise Conflict(f"loop {name} cannot resume: {said} (give it a new one: `fleetd loop edit {name} "
                           "--at TIME --enabled`)", code="at_past")  # fmt: skip
        await self.loops.set_state(name, updated_at=now, enabled=True, next_fire_at=due, clear_next=True)
        loop = await self.loops.get(name)
        self._arm(loop, trigger, due)
        return loop

    async def remove(self, name: str, *, force: bool = False) -> int | None:
        """Remove loop `name`. A loop with a run in flight is refused unless `force`: then its timer
        stops first (no new fire), the run is stopped (`cancelled`), and the loop goes. Returns the
        stopped run's id."""
        slot = self.executor.running(await self.loops.get(name))
        if slot is not None and not force:
            what = f"run {slot.run_id}" if slot.run_id is not None else "a run starting"
            raise Conflict(
                f"loop {name} has {what} in progress: stop it first (`fleetd loop stop {name}`), "
                "or remove with --force, which stops it"
            )
        self._disarm(name)
        stopped = slot.run_id if slot is not None else None
        if stopped is not None:
            await self.executor.stop(stopped, reason=f"stopped by `fleetd loop rm --force` (loop {name} removed)")
        await self.loops.delete(name)
        return stopped

    async def run_now(self, name: str) -> Run:
        """A manual fire. Refused (Conflict) when its --dir or --prompt-file is gone: a run would only fail at once."""
        loop = await self.loops.get(name)
        if problems := await self._path_problems(loop):
            option, problem = problems[0]
            raise Conflict(f"loop {name} cannot run: {problem} ({path_fix(name, option)})", code="unusable_path")
        run = await self.executor.fire(loop, "manual", self.clock())
        assert run is not None  # only a scheduled fire can have been recorded already
        return run

    async def not_firing(self, loop: Loop, usable_profiles: int | None = None) -> NotFiring | None:
        """Why `loop` did not fire, or will not (`loops/whynot.py` decides; this reads what it needs)."""
        now = self.clock()
        newest = await self.executor.runs.list(loop=loop.name, since=loop.created_at, limit=1)
        slot = self.executor.running(loop)
        spent = eases = run_cost = None
        if loop.daily_cost is not None:
            since = day_since(now, loop.created_at)
            costs = await self.executor.attempts.loop_costs_since(loop.name, since)
            run_cost = await self.executor.attempts.loop_last_run_cost(loop.name, since)
            spent, eases = sum(cost for _, cost in costs), daily_cost_eases(costs, loop.daily_cost, run_cost)
        problems = await self._path_problems(loop)
        facts = LoopFacts(
            loop, newest[0] if newest else None, slot.run_id if slot else None, slot.wait_until if slot else None,
            spent, eases, usable_profiles, problems[0] if problems else None, run_cost,
        )  # fmt: skip
        return why_not(facts, now)

    @staticmethod
    async def _path_problems(loop: Loop) -> list[tuple[str, str]]:
        return await asyncio.to_thread(path_problems, loop) if loop.workdir or loop.prompt_file else []

    def stop(self) -> None:
        for name in list(self._timers):
            self._disarm(name)


def _anchor(loop: Loop) -> datetime:
    assert loop.created_at is not None
    return loop.created_at
