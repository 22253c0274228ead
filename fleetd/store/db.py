"""The database handle: the writer thread, an async writer connection, and a reader connection.

Writes are plain functions over a sqlite3 connection handed to `write()`: the writer thread
(store/writer.py) runs each in one transaction with whatever else is queued (group commit), one
round trip to the event loop per write instead of one per statement. `transaction()` is the older
async form (over aiosqlite, BEGIN IMMEDIATE: a deferred BEGIN that reads then writes fails at once
under WAL), for changes not converted yet: it takes its turn in the writer thread's queue, so the two
never write at once and keep one order. Reads are serialised: while one statement on a connection is
still stepping, SQLite serves every other statement on it from the same (older) snapshot, so a read
started after a commit could miss the committed row.

SQLite's own failures are translated here, once: a file that cannot be used at all is a `StoreError`
at open (the daemon refuses to start), and a write the disk or the file refuses later is a
`StoreUnavailable` (503) that also sets `problem`, which `daemon status` shows until a write succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from fleetd.errors import FleetdError
from fleetd.store.schema import MIGRATIONS
from fleetd.store.writer import Writer

log = logging.getLogger("fleetd.store")
T = TypeVar("T")

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)

# SQLite's primary result codes (the low byte of an extended code) that say the store itself is unusable,
# as opposed to a statement being wrong (a constraint, a bug).
_BUSY, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 8, 10, 11, 13, 14, 26


class StoreError(Exception):
    """The database cannot be opened, checked or migrated; the message is one line for the user."""


class StoreUnavailable(FleetdError, sqlite3.OperationalError):
    """A read or write the database refused for a reason of its own (disk full, read-only, damaged).

    Still an `sqlite3.OperationalError`, so code that catches SQLite's errors keeps catching it; as a
    FleetdError the API answers 503 with this one line instead of a 500 and a traceback."""

    status = 503
    code = "store_unavailable"

    def __init__(self, action: str, problem: str) -> None:
        super().__init__(f"the database cannot be {action}: {problem}")
        self.problem = problem


def store_problem(exc: BaseException) -> str | None:
    """What is wrong with the store, in a few words, if `exc` says the store itself failed."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.IntegrityError | StoreUnavailable):
        return None
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code == _FULL:
        return "disk full"
    if code == _READONLY:
        return f"read-only ({exc})"
    if code in (_CORRUPT, _NOTADB):
        return f"damaged ({exc})"
    if code in (_IOERR, _CANTOPEN):
        return f"write failed: {exc}"
    if code == _BUSY:
        return f"locked by another program ({exc})"
    return None


class Database:
    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        thread_conn: sqlite3.Connection,
        path: Path | None = None,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()
        # The writer thread (store/writer.py) and `_writer` write in turns, in one queue: never at once.
        self._thread = Writer(thread_conn, asyncio.get_running_loop())
        # Invariant: at most one statement is open on the reader, and it runs to completion (all
        # rows fetched, cursor closed) before the next starts, so each read sees every commit
        # that finished before it began.
        self._read_lock = asyncio.Lock()
        # A second reader, made on first use, for a long read split in two halves that run at once
        # (`fetchone_beside`): SQLite lets go of the GIL while it steps, so each half takes a core.
        self._side: sqlite3.Connection | None = None
        self._side_lock = asyncio.Lock()
        self.path = path
        # Invariant: None exactly when the last write that finished (or the open) succeeded. Each change
        # is logged once, so a full disk under fires every second is two log lines, not a flood.
        self.problem: str | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> Database:
        """Open, check (quick_check), back up and migrate, and make sure the file can be written.

        Raises StoreError with a one-line reason; nothing is left open then, so a failed start cannot
        keep the process alive on a connection's thread."""
        opened: list[aiosqlite.Connection] = []
        try:
            _create_private(path)
            writer = await _connect(path)
            opened.append(writer)
            await _quick_check(writer, path)
            await _migrate_with_backup(writer, path)
            await _probe_write(writer)
            reader = await _connect(path)
            opened.append(reader)
            thread_conn = _connect_sync(path)
        except BaseException as e:
            for conn in opened:
                with suppress(Exception):
                    await conn.close()
            if isinstance(e, sqlite3.Error):
                raise StoreError(_open_failure(path, e)) from None
            if isinstance(e, OSError):
                raise StoreError(f"cannot open the database {path}: {e.strerror or e}") from None
            raise
        return cls(writer, reader, thread_conn, path)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._thread.close()
        async with self._side_lock:
            if self._side is not None:
                self._side.close()
        await self._reader.close()
        await self._writer.close()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(conn)` in a write transaction on the writer thread, committed with whatever else is queued
        then (store/writer.py: each in a SAVEPOINT of its own, so its failure is its own); its result, or
        its exception. `fn` touches nothing but `conn` and steps every statement to its end.

        A caller cancelled before the thread took its write withdraws it (nothing is written); cancelled
        after, it waits the transaction out, as `transaction()` does: a write that committed stands, the
        caller returns its result (a written row is not taken for a lost one) and is cancelled at its
        next await. A second cancellation (the event loop's teardown) is raised at once."""
        item = self._thread.submit(fn)
        try:
            # Awaited directly (no asyncio.wait): under load every extra hop is a turn of a busy loop.
            ok, value = await item.future
        except asyncio.CancelledError:
            if self._thread.withdraw(item):
                raise
            if item.outcome is None:  # taken: it commits or fails on its own; wait for which
                item.late = asyncio.get_running_loop().create_future()
                await item.late  # cancelled again (the event loop's teardown): raised at once
            assert item.outcome is not None
            ok, value = item.outcome
            _cancel_again()
        if ok:
            self._set_problem(None)
            return value  # type: ignore[no-any-return]
        problem = store_problem(value)
        if problem is None:
            raise value
        self._set_problem(problem)
        raise StoreUnavailable("written", problem) from value

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction. A caller cancelled inside it (a stop cancels the scheduler's timers
        mid-fire) cannot leave the writer half-way: a statement already handed to the connection's
        thread runs whatever the caller does, so each of BEGIN, COMMIT and ROLLBACK is waited out.
        Invariant: the lock is released only with the writer outside any transaction. A COMMIT that
        went through stands: the caller then returns normally and sees the cancellation at its next
        await, so it never takes a written row for a lost one."""
        async with self._lock, self._turn():
            try:
                try:
                    if await self._control("BEGIN IMMEDIATE"):
                        raise asyncio.CancelledError
                    yield self._writer
                    if await self._control("COMMIT"):
                        if self._writer.in_transaction:  # the COMMIT failed: rolled back below
                            raise asyncio.CancelledError
                        _cancel_again()
                except BaseException as e:
                    # SQLite may already have rolled back (some I/O errors do); a second ROLLBACK would fail.
                    cancelled = self._writer.in_transaction and await self._control("ROLLBACK")
                    if cancelled and not isinstance(e, asyncio.CancelledError):
                        _cancel_again()
                    raise
            except Exception as e:
                problem = store_problem(e)
                if problem is None:
                    raise
                self._set_problem(problem)
                raise StoreUnavailable("written", problem) from e
            self._set_problem(None)

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The writer thread stopped at this transaction's place in its queue, until it ends."""
        gate = self._thread.gate()
        try:
            await gate.opened  # cancelled meanwhile: the thread passes the gate, closed below
            yield
        finally:
            gate.closed.set()

    async def _control(self, sql: str) -> bool:
        """BEGIN, COMMIT or ROLLBACK on the writer. True when the caller was cancelled meanwhile: the
        statement runs all the same (it is queued on the connection's thread, which runs its queue in
        order), so a no-op queued behind it says when it has; `in_transaction` then says how it went.
        No task of its own: the lock is held meanwhile, and every loop iteration counts under load."""
        try:
            await self._writer.execute(sql)
            return False
        except asyncio.CancelledError:
            pass
        # Cancelled again meanwhile (the event loop's teardown): that one is raised, not waited out.
        await self._writer.execute_fetchall("SELECT 1")  # fetched whole: no statement left open
        return True

    async def fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[aiosqlite.Row]:
        try:
            async with self._read_lock, self._reader.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.DatabaseError as e:
            _raise_read_failure(e)
            raise

    async def fetchone(self, sql: str, params: tuple[Any, ...] = ()) -> aiosqlite.Row | None:
        try:
            async with self._read_lock, self._reader.execute(sql, params) as cur:
                return await cur.fetchone()
        except sqlite3.DatabaseError as e:
            _raise_read_failure(e)
            raise

    async def fetchone_beside(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        """`fetchone` on a second reader connection, in a worker thread, so that it can run while `fetchone`
        runs on the first: one long read split in two takes both cores. The two see each their own snapshot."""
        assert self.path is not None
        try:
            async with self._side_lock:
                if self._side is None:
                    self._side = await asyncio.to_thread(_connect_sync, self.path)
                return await asyncio.to_thread(_fetch_one, self._side, sql, params)
        except sqlite3.DatabaseError as e:
            _raise_read_failure(e)
            raise

    async def data_version(self) -> int:
        """A number that changes whenever a write is committed, by this process or another: SQLite's
        `PRAGMA data_version` on the reader, which never writes itself. What a cache of reads keys on."""
        row = await self.fetchone("PRAGMA data_version")
        assert row is not None
        return int(row[0])

    def _set_problem(self, problem: str | None) -> None:
        if problem == self.problem:
            return
        if problem is None:
            log.warning("the database can be written again (was: %s)", self.problem)
        else:
            log.error("the database cannot be written: %s; changes and fires fail until it can", problem)
        self.problem = problem


async def _settled(statement: Awaitable[object]) -> bool:
    """Wait for `statement` to finish even when the caller is cancelled meanwhile; True when it was
    (the cancellation is then owed: the caller raises it, or `_cancel_again`). Its own failure is raised."""
    task = asyncio.ensure_future(statement)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            if cancelled:  # cancelled again (the event loop's own teardown): waiting must not hang it
                task.cancel()
                raise
            cancelled = True
    task.result()
    return cancelled


async def finish_first(write: Awaitable[T]) -> T:
    """`write` run to its end, as its own task, even when the caller is cancelled meanwhile: cancelled
    inside a transaction's body, a write would leave a statement open on the writer (its cursor kept
    alive by the cancellation's traceback) and every later COMMIT would fail. The caller gets the result
    (a row that was written is not taken for a lost one) and the cancellation at its next await."""
    task = asyncio.ensure_future(write)
    if await _settled(task):
        _cancel_again()
    return task.result()


def _cancel_again() -> None:
    """The current task was cancelled during a statement that went through: let the caller finish
    with its result and be cancelled at its next await instead."""
    task = asyncio.current_task()
    if task is not None:
        task.cancel()


def _raise_read_failure(e: sqlite3.DatabaseError) -> None:
    # A read says nothing about whether writes work, so it leaves `problem` alone.
    problem = store_problem(e)
    if problem is not None:
        raise StoreUnavailable("read", problem) from e


def _fetch_one(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
    cur = conn.execute(sql, params)
    try:
        return cur.fetchone()  # type: ignore[no-any-return]
    finally:
        cur.close()  # no statement left open: the next read sees every commit before it


def _connect_sync(path: Path) -> sqlite3.Connection:
    """A connection for one thread at a time (the writer thread's, or `fetchone_beside`'s under its lock)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = aiosqlite.Row
        for pragma in PRAGMAS:
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return conn


def _create_private(path: Path) -> None:
    """Create a missing database file 0600: it holds prompts and run history."""
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


async def _quick_check(conn: aiosqlite.Connection, path: Path) -> None:
    # quick_check reads every page (O(size), ~1 s per 100 MB) but skips the index-vs-table cross-check
    # that integrity_check does; a damaged page is what it is for.
    async with conn.execute("PRAGMA quick_check") as cur:
        rows = [" ".join(str(r[0]).split()) for r in await cur.fetchall()]  # SQLite's text spans lines
    if rows != ["ok"]:
        more = f" (+{len(rows) - 1} more)" if len(rows) > 1 else ""
        raise StoreError(f"the database {path} is damaged: {rows[0]}{more}; {_recovery_hint(path)}")


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.bak-v{version}")


async def _migrate_with_backup(conn: aiosqlite.Connection, path: Path) -> None:
    version = await _user_version(conn)
    if version > len(MIGRATIONS):
        raise StoreError(
            f"the database {path} has schema version {version}, newer than this fleetd knows ({len(MIGRATIONS)}):"
            " it was written by a newer fleetd; run that one"
        )
    if version == len(MIGRATIONS):
        return
    # A fresh file (version 0) has nothing to lose; an existing one is copied before a migration rewrites it.
    backup = await _backup(conn, path, version) if version > 0 else None
    try:
        await migrate(conn)
    except (sqlite3.Error, RuntimeError) as e:
        kept = f"; a copy is at {backup}" if backup else ""
        raise StoreError(
            f"cannot migrate the database {path} from schema v{version}: {e}; it was left at v{version}{kept}"
        ) from None


async def _backup(conn: aiosqlite.Connection, path: Path, version: int) -> Path:
    """A consistent copy (SQLite's backup API, WAL content included), made 0600 and renamed into place
    only when complete."""
    target = backup_path(path, version)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    # The copy runs on the connection's own thread, so the target must not insist on its creating thread.
    dest = sqlite3.connect(partial, check_same_thread=False)
    try:
        await conn.backup(dest)
    finally:
        dest.close()
    os.replace(partial, target)
    log.info("backed up the database (schema v%d) to %s before migrating it", version, target)
    return target


async def _probe_write(conn: aiosqlite.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock without writing: a read-only file or directory fails here, at
    # start, instead of at the first fire.
    await conn.execute("BEGIN IMMEDIATE")
    await conn.execute("ROLLBACK")


async def _user_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def _open_failure(path: Path, e: sqlite3.Error) -> str:
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (_CORRUPT, _NOTADB):
        return f"the database {path} is damaged ({e}); {_recovery_hint(path)}"
    if code == _READONLY:
        return f"the database {path} is read-only ({e}): fleetd must be able to write it and its directory"
    if code == _FULL:
        return f"the database {path} cannot be written: disk full"
    return f"cannot open the database {path}: {e}"


def _recovery_hint(path: Path) -> str:
    backups = sorted(path.parent.glob(f"{path.name}.bak-v*"))
    restore = f"restore {backups[-1]} or " if backups else ""
    return f"{restore}move it aside to start empty (sqlite3's .recover may save part of it)"


async def migrate(conn: aiosqlite.Connection, upto: int | None = None) -> int:
    """Apply the migrations after the file's version, up to `upto` (all by default; tests stop early)."""
    version = await _user_version(conn)
    if version > len(MIGRATIONS):
        raise RuntimeError(f"database schema version {version} is newer than this fleetd knows ({len(MIGRATIONS)})")
    last = len(MIGRATIONS) if upto is None else upto
    # Rebuilding a table (SQLite's only way to change a constraint) drops rows other tables point at;
    # foreign keys are off meanwhile and checked as a whole before each step commits.
    await conn.execute("PRAGMA foreign_keys=OFF")
    try:
        for number, step in enumerate(MIGRATIONS[version:last], start=version + 1):
            try:
                if isinstance(step, str):
                    await conn.executescript(f"BEGIN;\n{step}\nPRAGMA user_version = {number};")
                else:  # reads the schema as it changes it: statement by statement, in the same kind of transaction
                    await conn.execute("BEGIN")
                    await step(conn)
                    await conn.execute(f"PRAGMA user_version = {number}")
                async with conn.execute("PRAGMA foreign_key_check") as cur:
                    broken = await cur.fetchall()
                if broken:
                    raise RuntimeError(f"schema migration {number} would break {len(broken)} foreign key(s)")
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
    finally:
        await conn.execute("PRAGMA foreign_keys=ON")
    return max(version, last)
