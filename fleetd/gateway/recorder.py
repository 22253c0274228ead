"""What a finished gateway call leaves behind (its attempt to the heartbeat, its row to the per-call log),
written after the answer has gone out and in batches.

Why not at the end of each request: uvicorn reads a keep-alive connection's next request only once the
previous one's ASGI call has returned, background task included, so a write there delays the client's
next call; and one transaction per call (plus the heartbeat's own per attempt) caps the gateway at
the store's commit rate. Here one writer takes whatever has queued up in the last LINGER_S and writes
it in one heartbeat step and one insert, so the batch grows with the load instead of the queue.

What may not wait: a failed attempt tells the router where not to go next, so the proxy reports
failures to the heartbeat itself, at once. What comes here are successes (their usage), streams that
broke after they began, and refusals (call rows only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fleetd.gateway.journal import Journal
from fleetd.records.gateway import AttemptUse, GatewayCall
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput

log = logging.getLogger("fleetd.gateway")
# Past this many unwritten calls (a store that stalls), a finishing call waits for the writer rather than
# grow the queue without end: the clients slow down, nothing is dropped.
MAX_PENDING = 5000
# How long the writer lets calls gather before it writes them. A batch costs about the same whatever its
# size (a dozen round trips to the store's thread, each one a hand-over of the GIL that the calls being
# served wait on), so it is written a few times a second rather than after every call; the call log
# and the profiles' windows are this much behind at most.
LINGER_S = 0.2


@dataclass
class Attempt:
    """A finished attempt, as the heartbeat takes it."""

    profile: Profile
    parsed: ParsedOutput
    finished_at: datetime
    cost_usd: float | None
    key: tuple[int, int] | None = None  # which try of which call (`journal.attempt_key`)


@dataclass
class Finished:
    call: GatewayCall | None  # None: nothing for the call log (count_tokens)
    attempt: Attempt | None = None  # None: no provider answered (a refusal)


class Recorder:
    def __init__(
        self,
        attempts: Callable[[list[Attempt]], Awaitable[None]],
        calls: Callable[[list[GatewayCall]], Awaitable[None]],
        written: Callable[[list[Attempt]], None] = lambda _: None,
        journal: Journal | None = None,
        refused: Callable[[list[Attempt]], None] = lambda _: None,
    ) -> None:
        self._attempts = attempts
        self.journal = journal or Journal(None)  # what a kill -9 before the write would lose, kept till it is written
        self._calls = calls
        self._written = written  # told of attempts once their calls are in the call log
        self._refused = refused  # told of attempts the heartbeat refused: their use is counted apart again till written
        self._queue: list[Finished] = []
        self._writing: list[Finished] = []  # taken from the queue, not yet written
        # Batches the store refused (a full disk), each tried again on its own before the next batch, so that one it
        # will never take cannot keep the later ones out; their journal segments are kept till then.
        self._refused_parts: list[_Part] = []
        # Held while calls go into the call log and leave `_writing`: a reader that holds it sees each finished call
        # once, in the log or not written yet (`GatewayService.admit`: a key's cap was passed by a call in neither).
        self.log_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    async def put(self, item: Finished) -> None:
        if item.call is not None:
            if item.call.id is None:
                item.call.id = self.journal.new_id()
            self.journal.ended(item.call, _use(item.attempt))
        self._queue.append(item)
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="gateway-recorder")
        if len(self._queue) > MAX_PENDING:
            await self.flush()

    async def flush(self) -> None:
        """Until everything queued so far is written (or failed to be: each failure is logged)."""
        if self._task is None or self._task.done():
            if self._queue:  # no writer left (a stop cancelled it): write here
                await self._write(*self._take())
            return
        await self._idle.wait()

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._refused_parts:  # once more: the store may have room again
            await self._write([], [])
        for part in self._refused_parts:  # into the journal, if it has room, for the next start
            log.error("gateway: %d call(s) could not be written at the stop; kept in the journal if it has room",
                      len(part.calls))  # fmt: skip
            uses = {a.key[0]: a for a in part.attempts if a.key is not None}
            for call in part.calls:
                self.journal.ended(call, _use(uses.get(call.id)))
        self.journal.close()

    def unwritten_cost(self, key: str, since: datetime) -> float:
        """What gateway key `key`'s finished calls since `since` cost that the call log does not show yet: its daily
        cost cap counts it (sequential calls went past the cap by the calls of one linger). Read under `log_lock`
        with the log."""
        return sum(
            f.call.cost_usd
            for f in (*self._writing, *self._queue)
            if f.call is not None and f.call.key == key and f.call.at >= since
        ) + sum(c.cost_usd for part in self._refused_parts for c in part.calls if c.key == key and c.at >= since)

    def _take(self) -> tuple[list[Finished], list[Path]]:
        """The queue as a batch, and the journal segments that hold it (to remove once the batch is written)."""
        batch, self._queue = self._queue, []
        self._writing = batch
        return batch, self.journal.rotate()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(LINGER_S)
            while self._queue:
                await self._write(*self._take())
            self._idle.set()

    async def _write(self, batch: list[Finished], segments: list[Path]) -> None:
        """The batches the store refused before, each on its own, then this one."""
        for part in list(self._refused_parts):
            await self._write_part(part, fresh=False)
        attempts = [f.attempt for f in batch if f.attempt is not None]
        fresh = _Part(attempts, [f.call for f in batch if f.call is not None], attempts, segments)
        await self._write_part(fresh, fresh=True)

    async def _write_part(self, part: _Part, *, fresh: bool) -> None:
        """`fresh`: the batch just taken (its calls in `_writing` till now), not one refused before."""
        # The attempts first: a call row that shows a cost the profile's windows do not yet count is the
        # worse of the two orders. A store that refuses either is logged (the clients have their answers), and what it
        # refused is tried again before the next batch, and at the next start from the journal, which keeps it.
        if part.attempts:
            try:
                await self._attempts(part.attempts)
                part.attempts = []
            except Exception:
                self._refused(part.attempts)  # their use counted apart again: a full disk let calls pass a limit
                log.exception("gateway: cannot record %d attempt(s) with the heartbeat; tried again later",
                              len(part.attempts))  # fmt: skip
        try:
            async with self.log_lock:
                # Between these, with no await once the log has them: a key's cap reads each call in one place.
                try:
                    if part.calls:
                        await self._calls(part.calls)
                    part.calls = []
                    self._written(part.unlogged)
                    part.unlogged = []
                finally:
                    kept = [p for p in self._refused_parts if p is not part]
                    self._refused_parts = [*kept, part] if part.attempts or part.calls else kept
                    if fresh:
                        self._writing = []
        except Exception:
            log.exception("gateway: cannot record %d call(s); tried again later", len(part.calls))
        if not (part.attempts or part.calls):
            self.journal.written(part.segments)


@dataclass(eq=False)
class _Part:
    """A batch, or what the store refused of one: attempts not yet with the heartbeat, calls not yet in the log, the
    attempts whose calls are not in the log yet (`written` is told of them when they are), its journal segments."""

    attempts: list[Attempt]
    calls: list[GatewayCall]
    unlogged: list[Attempt]
    segments: list[Path]


def _use(attempt: Attempt | None) -> AttemptUse | None:
    """What the journal keeps of a call's attempt whose use is written with the call."""
    a = attempt
    if a is None or a.key is None:
        return None
    return AttemptUse(a.profile.name, a.finished_at, a.parsed.usage.total, a.cost_usd or 0.0, a.key)
