"""The writer thread's group commit (store/writer.py): writes queued together commit in one
transaction, each in its own SAVEPOINT, so each caller gets its own result or exception, in order;
a group that fails as a whole is retried write by write; a cancelled caller's write commits whole or
not at all.

Deterministic: an async `transaction()` holds the writer thread at its gate while the writes queue up
behind it, so they are all queued when the thread comes round, and one group."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from fleetd.store.db import Database


@asynccontextmanager
async def _db(tmp_path: Path) -> AsyncIterator[tuple[Database, list[str]]]:
    db = await Database.open(tmp_path / "w.db")
    async with db.transaction() as conn:
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    statements: list[str] = []  # what the writer thread ran (list.append is safe from a thread)
    db._thread._conn.set_trace_callback(statements.append)
    try:
        yield db, statements
    finally:
        await db.close()


def _insert(v: str) -> Callable[[sqlite3.Connection], str]:
    def write(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (v) VALUES (?)", (v,)).close()
        return v

    return write


def _fail_after_insert(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO t (v) VALUES ('half')").close()
    raise ValueError("the write's own failure")


async def _queued_behind_a_gate(db: Database, writes: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    """Every write queued while the writer thread waits at a transaction's gate: one group."""
    async with db.transaction():
        tasks = [asyncio.create_task(db.write(w)) for w in writes]
        await asyncio.sleep(0)  # each task queues its write before its first await
    return await asyncio.gather(*tasks, return_exceptions=True)


async def _rows(db: Database) -> list[str]:
    return [r["v"] for r in await db.fetchall("SELECT v FROM t ORDER BY id")]


def _run(go: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(go())  # type: ignore[arg-type]


def test_a_group_without_failures_commits_with_no_savepoint(tmp_path: Path) -> None:
    """Each SAVEPOINT and RELEASE is a statement that gives the GIL up and waits to have it back: a group in
    which nothing fails needs neither (its writes stand or fall together)."""

    async def go() -> tuple[list[Any], list[str]]:
        async with _db(tmp_path) as (db, statements):
            await db.write(_insert("first"))
            statements.clear()
            results = await _queued_behind_a_gate(db, [_insert("a"), _insert("b"), _insert("c")])
            return results, statements

    results, statements = _run(go)
    assert results == ["a", "b", "c"]
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    assert not [s for s in statements if "SAVEPOINT" in s or "RELEASE" in s]


def test_one_failing_write_in_a_group_fails_alone(tmp_path: Path) -> None:
    async def go() -> tuple[list[Any], list[str], list[str]]:
        async with _db(tmp_path) as (db, statements):
            await db.write(_insert("taken"))
            statements.clear()
            results = await _queued_behind_a_gate(
                db, [_insert("a"), _fail_after_insert, _insert("b"), _insert("taken"), _insert("c")]
            )
            return results, await _rows(db), statements

    results, rows, statements = _run(go)
    assert results[0] == "a" and results[2] == "b" and results[4] == "c"
    assert isinstance(results[1], ValueError) and str(results[1]) == "the write's own failure"
    assert isinstance(results[3], sqlite3.IntegrityError)  # a statement's error, not the store's: not a 503
    assert rows == ["taken", "a", "b", "c"]  # in the order queued; the failed ones left nothing ('half')
    # One commit: the group ran as it is, then (a write raised) again with each write in a SAVEPOINT of its own.
    assert statements.count("COMMIT") == 1 and statements.count("ROLLBACK TO write") == 2


def test_a_group_that_fails_as_a_whole_is_retried_write_by_write(tmp_path: Path) -> None:
    """A write after which SQLite has rolled the whole transaction back (a full disk can) takes the
    group's earlier writes with it; each then runs again alone and gets its own answer."""
    runs: list[str] = []

    def counted(v: str) -> Callable[[sqlite3.Connection], str]:
        def write(conn: sqlite3.Connection) -> str:
            runs.append(v)
            return _insert(v)(conn)

        return write

    def loses_the_transaction(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")  # as SQLite does itself on some errors
        raise sqlite3.OperationalError("the transaction is gone")

    async def go() -> tuple[list[Any], list[str]]:
        async with _db(tmp_path) as (db, _):
            results = await _queued_behind_a_gate(db, [counted("a"), loses_the_transaction, counted("b")])
            return results, await _rows(db)

    results, rows = _run(go)
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], sqlite3.OperationalError)
    assert rows == ["a", "b"]
    assert runs == ["a", "a", "b"]  # `a` ran in the lost group, then alone; `b` alone only


def test_a_caller_cancelled_before_its_write_is_taken_writes_nothing(tmp_path: Path) -> None:
    async def go() -> tuple[bool, list[str]]:
        async with _db(tmp_path) as (db, _):
            async with db.transaction():
                task = asyncio.create_task(db.write(_insert("withdrawn")))
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await db.write(_insert("after"))  # the thread went on
            return task.cancelled(), await _rows(db)

    cancelled, rows = _run(go)
    assert cancelled and rows == ["after"]


def test_a_caller_cancelled_during_its_write_gets_the_committed_result_then_the_cancellation(tmp_path: Path) -> None:
    running, go_on = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (v) VALUES ('slow')").close()
        running.set()
        go_on.wait(10)
        return "slow"

    async def go() -> tuple[list[str], bool, list[str]]:
        async with _db(tmp_path) as (db, _):
            got: list[str] = []

            async def caller() -> None:
                got.append(await db.write(slow))
                await asyncio.sleep(0)  # the cancellation owed lands here
                got.append("not reached")

            task = asyncio.create_task(caller())
            await asyncio.get_running_loop().run_in_executor(None, running.wait, 10)
            task.cancel()
            await asyncio.sleep(0)
            go_on.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            return got, task.cancelled(), await _rows(db)

    got, cancelled, rows = _run(go)
    assert got == ["slow"] and cancelled  # a written row is never taken for a lost one
    assert rows == ["slow"]


def test_a_write_after_close_is_refused_not_left_waiting(tmp_path: Path) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "w.db")
        await db.close()
        with pytest.raises(ValueError, match="closed"):
            await asyncio.wait_for(db.write(_insert("late")), 5)

    _run(go)
