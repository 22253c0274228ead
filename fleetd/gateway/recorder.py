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
        # What the store refused (a full disk), tried again with the next batch; its journal segments kept till then.
        self._refused_attempts: list[Attempt] = []
        self._refused_calls: list[GatewayCall] = []
        self._refused_segments: list[Path] = []
        self._unlogged: list[Attempt] = []  # attempts whose calls are not in the call log yet
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
        if self._refused_attempts or self._refused_calls:  # once more: the store may have room again
            await self._write([], [])
        if self._refused_calls:  # into the journal, if it has room, for the next start (it may not have held them)
            log.error("gateway: %d call(s) could not be written at the stop; kept in the journal if it has room",
                      len(self._refused_calls))  # fmt: skip
            uses = {a.key[0]: a for a in self._refused_attempts if a.key is not None}
            for call in self._refused_calls:
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
        ) + sum(c.cost_usd for c in self._refused_calls if c.key == key and c.at >= since)

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
        # The attempts first: a call row that shows a cost the profile's windows do not yet count is the
        # worse of the two orders. A store that refuses either is logged (the clients have their answers), and what it
        # refused is tried again with the next batch, and at the next start from the journal, which keeps it until then.
        new = [f.attempt for f in batch if f.attempt is not None]
        self._unlogged += new
        attempts = self._refused_attempts + new
        calls = [*self._refused_calls, *(f.call for f in batch if f.call is not None)]
        segments = self._refused_segments + segments
        self._refused_attempts = []
        try:
            if attempts:
                await self._attempts(attempts)
        except Exception:
            self._refused_attempts = attempts
            self._refused(attempts)  # their use counted apart again: a full disk let calls pass a limit
            log.exception("gateway: cannot record %d attempt(s) with the heartbeat; tried again with the next calls",
                          len(attempts))  # fmt: skip
        try:
            async with self.log_lock:
                try:
                    if calls:
                        await self._calls(calls)
                    self._refused_calls = []
                    logged, self._unlogged = self._unlogged, []
                    self._written(logged)
                except Exception:
                    self._refused_calls = calls  # counted by a key's cap as not written yet, as they are
                    raise
                finally:
                    self._writing = []
        except Exception:
            log.exception("gateway: cannot record %d call(s); tried again with the next calls", len(calls))
        if self._refused_attempts or self._refused_calls:
            self._refused_segments = segments
        else:
            self._refused_segments = []
            self.journal.written(segments)


def _use(attempt: Attempt | None) -> AttemptUse | None:
    """What the journal keeps of a call's attempt whose use is written with the call."""
    a = attempt
    if a is None or a.key is None:
        return None
    return AttemptUse(a.profile.name, a.finished_at, a.parsed.usage.total, a.cost_usd or 0.0, a.key)
