"""The writer thread: the store's write transactions, one loop round trip each, committed in groups.

A store method hands `Database.write` a plain function over a `sqlite3.Connection`; this thread runs it
between BEGIN IMMEDIATE and COMMIT, so a transaction costs one round trip to the event loop instead of
one per statement (each of which waited for a busy loop to come round, holding the write lock
meanwhile). The thread never waits for the loop: the functions queued while it commits run together
in its next transaction (group commit). One that raises is rolled back alone and its caller gets its
exception while the others commit and get their results (the group then runs again, each function
inside a SAVEPOINT of its own: `_transaction`).
When a group fails as a whole (BEGIN, COMMIT, or an error SQLite answers by rolling back the whole
transaction, such as a full disk), each of its functions runs again alone, in order, so every caller
gets the answer it would have had alone: batching never changes an outcome, only its cost.

Invariant: a write function touches nothing but the connection it is given (it may run a second time
after a rollback) and runs each statement to its end (`fetchall`: a statement left open would fail the
COMMIT). Invariant: writes commit in the order they were queued, and a caller is answered only after
its write committed (or failed).

Code still written as an async transaction (`Database.transaction`, over aiosqlite) takes its turn
in the same queue through a gate: the thread stops at the gate until that transaction ends, so the
two never write at once and all writes keep one order.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("fleetd.store")

# At most this many writes share a transaction: a long queue commits in steps, so the first callers are
# answered without waiting for the last.
GROUP_CAP = 256

_QUEUED, _TAKEN, _WITHDRAWN = 0, 1, 2


@dataclass(eq=False)
class Write:
    """One queued write function; its outcome is `(True, value)` or `(False, exception)`."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[tuple[bool, Any]]  # the outcome, for its caller (cancelled with it)
    state: int = _QUEUED  # guarded by Writer._mutex
    # Set on the event loop's thread only: the outcome once known, and where a caller cancelled after
    # the thread took its write waits for it.
    outcome: tuple[bool, Any] | None = None
    late: asyncio.Future[None] | None = None


@dataclass(eq=False)
class Gate:
    """A turn for an async transaction: `opened` when the thread reaches it, which then waits for `closed`."""

    opened: asyncio.Future[None]
    closed: threading.Event = field(default_factory=threading.Event)


_STOP = object()


class Writer:
    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn  # used by this thread only, once started
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._mutex = threading.Lock()
        self._stopping = False  # set by close(), on the event loop's thread, as submit() and gate() run
        self._thread = threading.Thread(target=self._run, name="fleetd-writer", daemon=True)
        self._thread.start()

    def _check_open(self) -> None:
        # Queued behind the stop, a write would never be answered: refused instead, as a closed
        # aiosqlite connection refuses a statement.
        if self._stopping:
            raise ValueError("the database is closed")

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Write:
        self._check_open()
        item = Write(fn, self._loop.create_future())
        self._queue.put(item)
        return item

    def withdraw(self, item: Write) -> bool:
        """Take back a write its caller no longer waits for; False when the thread has already taken it
        (it then commits or fails on its own)."""
        with self._mutex:
            if item.state != _QUEUED:
                return False
            item.state = _WITHDRAWN
            return True

    def gate(self) -> Gate:
        self._check_open()
        gate = Gate(self._loop.create_future())
        self._queue.put(gate)
        return gate

    async def close(self) -> None:
        """Run what is queued, then stop and close the connection."""
        self._stopping = True
        self._queue.put(_STOP)
        await self._loop.run_in_executor(None, self._thread.join)

    # The thread's side.

    def _run(self) -> None:
        try:
            while True:
                items = [self._queue.get()]
                with suppress(queue.Empty):
                    while True:
                        items.append(self._queue.get_nowait())
                group: list[Write] = []
                for item in items:
                    if isinstance(item, Write):
                        group.append(item)
                        if len(group) < GROUP_CAP:
                            continue
                    self._commit(group)
                    group = []
                    if item is _STOP:
                        return
                    if isinstance(item, Gate):
                        self._answer(_open, item.opened)
                        item.closed.wait()
                self._commit(group)
        finally:
            self._conn.close()

    def _commit(self, group: list[Write]) -> None:
        with self._mutex:
            writes = [w for w in group if w.state == _QUEUED]
            for w in writes:
                w.state = _TAKEN
        if not writes:
            return
        outcomes = self._transaction(writes)
        if outcomes is None:  # the group failed as a whole: each alone, for its own answer
            outcomes = [self._alone(w) for w in writes]
        self._answer(_deliver, list(zip(writes, outcomes, strict=True)))

    def _alone(self, write: Write) -> tuple[bool, Any]:
        outcomes = self._transaction([write])
        return outcomes[0] if outcomes is not None else (False, self._failure)

    def _transaction(self, writes: list[Write]) -> list[tuple[bool, Any]] | None:
        """Each write's outcome, committed; None when the transaction failed as a whole (`_failure` says
        why) and nothing of it was committed.

        The group runs first as it is, with no SAVEPOINT around each write: two statements fewer per write,
        each of which gives the GIL up and waits to have it back (on a busy event loop that was most of a
        commit's time). Only when a write raises is the group rolled back and run again, each write in a
        SAVEPOINT of its own (a write may run a second time after a rollback: see the invariant above)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes = _plain(conn, writes)
            if outcomes is None:  # one raised: nothing of the group stands
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                outcomes = _isolated(conn, writes)
            conn.execute("COMMIT")
        except BaseException as e:  # answered to the callers; the thread goes on
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._failure: BaseException = e
            return None
        return outcomes

    def _answer(self, fn: Callable[[Any], None], arg: Any) -> None:
        with suppress(RuntimeError):  # the event loop is closed: nobody is left to answer
            self._loop.call_soon_threadsafe(fn, arg)


def _plain(conn: sqlite3.Connection, writes: list[Write]) -> list[tuple[bool, Any]] | None:
    """Each write's value, run one after the other in the open transaction; None as soon as one raises."""
    values: list[tuple[bool, Any]] = []
    for w in writes:
        try:
            values.append((True, w.fn(conn)))
        except BaseException:
            if not conn.in_transaction:  # SQLite rolled the whole transaction back: a failure of the group
                raise
            return None
    return values


def _isolated(conn: sqlite3.Connection, writes: list[Write]) -> list[tuple[bool, Any]]:
    """Each write's outcome, each in a SAVEPOINT of its own: one that raises is rolled back alone."""
    outcomes: list[tuple[bool, Any]] = []
    for w in writes:
        conn.execute("SAVEPOINT write")
        try:
            value = w.fn(conn)
        except BaseException as e:  # the caller's to see; the thread goes on
            if not conn.in_transaction:  # SQLite rolled the whole transaction back
                raise
            conn.execute("ROLLBACK TO write")
            conn.execute("RELEASE write")
            outcomes.append((False, e))
        else:
            conn.execute("RELEASE write")
            outcomes.append((True, value))
    return outcomes


def _open(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _deliver(answers: list[tuple[Write, tuple[bool, Any]]]) -> None:
    for w, outcome in answers:
        w.outcome = outcome
        if not w.future.done():
            w.future.set_result(outcome)
        if w.late is not None and not w.late.done():
            w.late.set_result(None)
