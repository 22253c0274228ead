"""Following the event log and delivering each event to the hooks that subscribe to it.

Delivery never blocks the scheduler or a run: an event is written (a row, as before) and this module's
own tasks read it back from the log. One follower task reads new events in id order and puts each on
the queue of every matching hook; one worker task per hook delivers its queue in order; at most
`concurrency` deliveries run at once across all hooks.

Invariants:
- Memory is bounded: each hook's queue holds at most `queue_cap` events. When a slow or hung hook's
  queue is full, its OLDEST pending event is dropped (a notifier cares most about the newest), the
  drop is logged, and the first drop of each overflow episode emits one `hook.failed`.
- At least once, from persisted cursors: `hook_cursor` holds the last event id whose deliveries have
  all ended (delivered, failed or dropped), and each hook its own (`hooks.delivered_upto`). A restart
  re-reads the log after the first and gives each hook only what lies after its own, so an event written
  while delivering (or while the daemon stopped) is not lost, a hook that kept up is not sent again what
  another hook still owed, and one a hook already got before a crash may come again (the payload's `id`
  tells duplicates apart). An exec hook a stop cut short is not run again (`stop`: it ends failed, as at
  its timeout). The first start ever begins at the newest event: hooks are not sent history.
- No recursion: `hook.*` events are skipped here (records/event.py: no hook can subscribe to them),
  so a failing hook's `hook.failed` never reaches a hook, least of all itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetd.errors import FleetdError
from fleetd.hooks import deliver
from fleetd.loops.scrub import Scrubber
from fleetd.records.event import is_hook_event, matches
from fleetd.records.hook import Delivery, Hook
from fleetd.store.events import Event, EventLog
from fleetd.store.hooks import HookStore
from fleetd.timefmt import to_iso

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("fleetd.hooks")
# Per hook. An event is ~1 KB here, so a full queue is ~1 MB; far more than a burst (a run's end, a switch
# and an exhaustion are a handful of events), so only a hook that keeps hanging while events keep coming
# ever reaches it.
QUEUE_CAP = 1000
CONCURRENCY = 4
BATCH = 200
FOLLOW_WAIT = 15.0  # the follower re-reads the log at least this often, even without a wake-up


@dataclass
class LastDelivery:
    at: datetime
    event_id: int
    event_type: str
    delivery: Delivery

    def to_json(self) -> dict[str, Any]:
        return {"at": to_iso(self.at), "event_id": self.event_id, "event_type": self.event_type,
                **self.delivery.to_json()}  # fmt: skip


@dataclass(eq=False)
class _Queue:
    """One hook's pending events and its worker."""

    hook: Hook
    items: deque[Event] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    current: Event | None = None  # being delivered
    delivering: bool = False  # `current` holds a delivery slot: an exec hook's command is under way
    overflowing: bool = False  # dropping since the queue last had room
    dropped: int = 0  # in all, since the daemon started
    last: LastDelivery | None = None
    after: int = 0  # the hook wants the events after this id: its `since_event`, or its saved cursor
    saved: int | None = None  # its cursor as last written

    def delivered_upto(self, read_upto: int) -> int:
        """The last event id up to which this hook's deliveries all ended (its queue is in id order)."""
        oldest = self.current if self.current is not None else (self.items[0] if self.items else None)
        return oldest.id - 1 if oldest is not None else max(read_upto, self.after)

    @property
    def idle(self) -> bool:
        return not self.items and self.current is None


class HookDispatcher:
    def __init__(
        self,
        hooks: HookStore,
        events: EventLog,
        *,
        secret: Callable[[Hook], Awaitable[str | None]],
        known_secrets: Callable[[], Awaitable[Collection[str]]],
        clock: Callable[[], datetime],
        cwd: Path,
        queue_cap: int = QUEUE_CAP,
        concurrency: int = CONCURRENCY,
        backoff_base: float = 1.0,
    ) -> None:
        self.hooks = hooks
        self.events = events
        self.secret = secret
        self.known_secrets = known_secrets
        self.clock = clock
        self.cwd = cwd
        self.queue_cap = queue_cap
        self.backoff_base = backoff_base
        self._slots = asyncio.Semaphore(concurrency)
        self._queues: dict[str, _Queue] = {}
        self._read_upto = 0  # the follower has queued every event up to this id
        self._saved: int | None = None  # the cursor as last written
        self._delivered: dict[str, int] = {}  # each hook's cursor as the last daemon left it (`start`)
        self._follower: asyncio.Task[None] | None = None
        self._have_hooks = asyncio.Event()  # set while some hook exists: without one the follower sleeps
        self._http: httpx.AsyncClient | None = None
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        cursor = await self.hooks.cursor()
        if cursor is None:  # the first start ever: from now, not from history
            cursor = await self.hooks.newest_event()
            await self.hooks.save_cursor(cursor, self.clock())
        self._read_upto = self._saved = cursor
        self._delivered = await self.hooks.delivered()
        for queue in self._queues.values():  # made by a reload before the start: see its saved cursor now
            queue.after = queue.saved = self._after(queue.hook)
        await self.reload()
        self._follower = asyncio.create_task(self._follow(), name="hook-follower")

    async def stop(self, grace: float) -> None:
        """Queue what the log holds now (a run's end written just before), give the deliveries up to
        `grace` seconds, then cancel the rest: what is still queued stays after the cursor, for the next
        start, as does a webhook's try under way (at least once); an exec hook under way is killed (its
        session) and ends failed, past the cursor: not retried, as at its timeout (it may have got halfway)."""
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._read_new()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), grace)
        # Every worker at once (each exec's session killed meanwhile): none starts another delivery.
        under_way = [(q, q.current, q.delivering) for q in self._queues.values() if q.current is not None]
        await asyncio.gather(*(self._close_worker(q) for q in self._queues.values()))
        cut: list[tuple[_Queue, Event]] = []
        for queue, event, delivering in under_way:
            assert event is not None
            if queue.hook.kind == "exec" and delivering:
                cut.append((queue, event))  # its command ran, perhaps halfway: past the cursor, not run again
            else:
                queue.items.appendleft(event)  # it never ran (waiting for a slot), or a webhook: delivered again
        # The cursor is saved before the rest is cancelled, and never after: a cancelled delivery did not
        # happen, so its event must stay after the cursor. The cut ones are told after it is saved: a stop
        # cut short meanwhile loses a `hook.failed`, never runs a command twice.
        await self._save_cursor()
        self._stopped = True
        for queue, event in cut:
            detail = f"cut short by the daemon's stop after its {grace:g}s grace; not run again"
            await self._failed(queue.hook, event, detail, tries=1)
        for queue in list(self._queues.values()):
            await self._close(queue)
        if self._http is not None:
            await self._http.aclose()

    async def _drained(self) -> None:
        while not all(q.idle for q in self._queues.values()):
            await asyncio.sleep(0.05)

    async def reload(self) -> None:
        """The hooks changed (added, removed): start and stop workers to match."""
        current = {hook.name: hook for hook in await self.hooks.list()}
        for name in [n for n in self._queues if n not in current or current[n] != self._queues[n].hook]:
            await self._close(self._queues.pop(name))
        for name, hook in current.items():
            if name not in self._queues:
                after = self._after(hook)
                queue = self._queues[name] = _Queue(hook, after=after, saved=after)
                queue.task = asyncio.create_task(self._work(queue), name=f"hook-{name}")
        if self._queues:
            # Each hook wants only the events after its `since_event`: what lies before the oldest of those
            # (written while no hook wanted it) is never read.
            self._read_upto = max(self._read_upto, min(q.after for q in self._queues.values()))
            self._have_hooks.set()
        else:
            self._have_hooks.clear()
        await self._save_cursor()

    def _after(self, hook: Hook) -> int:
        """The last event id `hook` needs no more: older than the hook, or delivered before the last stop."""
        return max(hook.since_event, self._delivered.get(hook.name, 0))

    async def _close(self, queue: _Queue) -> None:
        """Stop `queue`'s worker. Once out of `_queues` its events no longer hold the cursor back (the hook is gone)."""
        await self._close_worker(queue)
        queue.items.clear()

    async def _close_worker(self, queue: _Queue) -> None:
        if queue.task is not None:
            queue.task.cancel()
            await asyncio.gather(queue.task, return_exceptions=True)

    def last(self, name: str) -> tuple[LastDelivery | None, int, int]:
        """A hook's last delivery since the daemon started, its queue length, and how many were dropped."""
        queue = self._queues.get(name)
        if queue is None:
            return None, 0, 0
        return queue.last, len(queue.items) + (queue.current is not None), queue.dropped

    # -- following the log --------------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            # Every run start and end wakes the follower: with no hook, that must cost no read and no write.
            await self._have_hooks.wait()
            seen = self.events.written
            try:
                got = await self._read_new()
            except Exception:  # the store failing now and then: keep following
                log.warning("hooks: cannot read the event log; retrying", exc_info=True)
                got = 0
            if got < BATCH:
                await self.events.wait_past(seen, FOLLOW_WAIT)

    async def _read_new(self) -> int:
        if not self._queues:
            return 0
        batch = await self.events.after(self._read_upto, BATCH)
        for event in batch:
            if not is_hook_event(event.type):
                for queue in self._queues.values():
                    if event.id > queue.after and matches(queue.hook.on, event.type):
                        await self._enqueue(queue, event)
            self._read_upto = event.id
        if batch:
            await self._save_cursor()
        return len(batch)

    async def _enqueue(self, queue: _Queue, event: Event) -> None:
        if len(queue.items) >= self.queue_cap:
            oldest = queue.items.popleft()
            queue.dropped += 1
            log.warning("hook %s: queue of %d full, dropped event %s (%s)", queue.hook.name, self.queue_cap,
                        oldest.id, oldest.type)  # fmt: skip
            if not queue.overflowing:
                queue.overflowing = True
                await self._failed(
                    queue.hook, oldest,
                    f"its queue of {self.queue_cap} events is full (the hook is slow or hanging): dropping the "
                    "oldest pending events until it catches up", tries=0,
                )  # fmt: skip
        queue.items.append(event)
        queue.wake.set()

    # -- delivering ---------------------------------------------------------------------------------

    async def _work(self, queue: _Queue) -> None:
        while True:
            while not queue.items:
                queue.overflowing = False
                queue.wake.clear()
                await queue.wake.wait()
            event = queue.current = queue.items.popleft()
            try:
                async with self._slots:
                    queue.delivering = True
                    delivery = await self.deliver(queue.hook, event.to_json())
                queue.last = LastDelivery(self.clock(), event.id, event.type, delivery)
                if not delivery.ok:
                    await self._failed(queue.hook, event, delivery.detail, delivery.tries)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or the store: logged, and the worker carries on with the next event
                log.exception("hook %s: delivering event %s failed", queue.hook.name, event.id)
            finally:
                queue.current, queue.delivering = None, False
            await self._save_cursor()

    async def deliver(self, hook: Hook, event: dict[str, Any], *, retries: bool = True) -> Delivery:
        """One delivery of `event` to `hook` (all its tries); never raises for a failing hook."""
        if hook.kind == "exec":
            scrubber = Scrubber(await self.known_secrets())
            return await deliver.run_exec(hook, event, cwd=self.cwd, scrub=lambda s: scrubber.text(s) or "")
        try:
            secret = await self.secret(hook) if hook.has_secret else None
        except FleetdError as e:
            return Delivery(False, f"cannot read the hook's secret: {e.message}", tries=0)
        if self._http is None:
            # Redirects are not followed (a webhook goes where the user said, nowhere else); each try's
            # timeout is the hook's own (deliver.post_webhook), so the client sets none.
            import httpx  # webhooks only: a daemon without them never loads it

            self._http = httpx.AsyncClient(follow_redirects=False, timeout=None)
        return await deliver.post_webhook(
            self._http, hook, event, secret, backoff_base=self.backoff_base, retries=retries
        )

    async def _failed(self, hook: Hook, event: Event, detail: str, tries: int) -> None:
        """Logged and written as `hook.failed` (which no hook receives)."""
        message = f"hook {hook.name}: event {event.id} ({event.type}) not delivered: {detail}"
        log.warning("%s", message)
        try:
            await self.events.emit(self.clock(), "hook.failed", message, hook=hook.name, event_id=event.id,
                                   event_type=event.type, detail=detail, tries=tries)  # fmt: skip
        except Exception as e:
            log.error("hook %s: cannot record its failure: %s", hook.name, e)

    # -- the cursor ---------------------------------------------------------------------------------

    async def _save_cursor(self) -> None:
        # Before start() nothing was read (`_read_upto` is still 0): the stored cursor stays as it is. The
        # API can reload the hooks while the daemon still recovers, before the dispatcher starts.
        if self._stopped or self._saved is None:
            return
        delivered = {name: q.delivered_upto(self._read_upto) for name, q in self._queues.items()}
        # The log is read again from the hook furthest behind.
        safe = min(delivered.values(), default=self._read_upto)
        moved = {name: upto for name, upto in delivered.items() if upto != self._queues[name].saved}
        if safe == self._saved and not moved:
            return
        try:
            await self.hooks.save_cursor(safe, self.clock(), moved)
            self._saved = safe
            for name, upto in moved.items():
                self._queues[name].saved = upto
        except Exception as e:  # the store is failing: the next end tries again; a restart redelivers
            log.warning("hooks: cannot save the delivery cursor: %s", e)
