"""The database handle: one writer connection behind a lock, one reader connection behind another.

Coroutines sharing a connection interleave their statements, so every write goes through
`transaction()`, which serialises writers and uses BEGIN IMMEDIATE (a deferred BEGIN that reads
then writes fails at once under WAL). Reads are serialised too: while one statement on a
connection is still stepping, SQLite serves every other statement on it from the same (older)
snapshot, so a read started after a commit could miss the committed row.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from fleetd.store.schema import MIGRATIONS

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)


class Database:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()
        # Invariant: at most one statement is open on the reader, and it runs to completion (all
        # rows fetched, cursor closed) before the next starts, so each read sees every commit
        # that finished before it began.
        self._read_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Database:
        writer = await _connect(path)
        await migrate(writer)
        reader = await _connect(path)
        return cls(writer, reader)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            else:
                await self._writer.execute("COMMIT")

    async def fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[aiosqlite.Row]:
        async with self._read_lock, self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: tuple[Any, ...] = ()) -> aiosqlite.Row | None:
        async with self._read_lock, self._reader.execute(sql, params) as cur:
            return await cur.fetchone()


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    for pragma in PRAGMAS:
        await conn.execute(pragma)
    return conn


async def migrate(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise RuntimeError(f"database schema version {version} is newer than this fleetd knows ({len(MIGRATIONS)})")
    # Rebuilding a table (SQLite's only way to change a constraint) drops rows other tables point at;
    # foreign keys are off meanwhile and checked as a whole before each step commits.
    await conn.execute("PRAGMA foreign_keys=OFF")
    try:
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            try:
                await conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};")
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
    return len(MIGRATIONS)
