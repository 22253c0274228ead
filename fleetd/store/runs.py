"""Queries on the runs table. Rows are deleted only by retention (store/retention.py).

Each change of a run's state (started, waiting, ended, a fire skipped or missed) writes its event
(`store/events.py`) in the change's own transaction: no extra write per run, and no event for a
change that did not commit."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiosqlite

from fleetd.errors import NotFound
from fleetd.records.fire import SkipReason
from fleetd.records.run import ACTIVE_STATUSES, LoopFire, Run, RunStatus
from fleetd.store.db import Database
from fleetd.store.events import EventLog, NewEvent, fire_event, run_event
from fleetd.store.schema import duration_ms_sql
from fleetd.timefmt import from_iso, now_utc, to_iso

log = logging.getLogger("fleetd.runs")
_COLUMNS = (
    "id, loop, trigger, status, scheduled_at, started_at, finished_at, exit_code, backend, profile, "
    "log_path, error, attempts, pid, pid_create_time, wait_until, skip_reason, skipped_count"
)

# A run's duration_ms (migration 16) is written with its end, from the end's time and the start's: `runs list`
# answers it as stored instead of working it out from both times of every row it lists.
_DURATION_MS = duration_ms_sql("?6", "?5")  # an inserted row's finished_at and started_at


def _row_to_run(row: aiosqlite.Row) -> Run:
    return Run(
        id=row["id"],
        loop=row["loop"],
        trigger=row["trigger"],
        status=row["status"],
        scheduled_at=from_iso(row["scheduled_at"]),  # type: ignore[arg-type]
        started_at=from_iso(row["started_at"]),  # type: ignore[arg-type]
        finished_at=from_iso(row["finished_at"]),
        exit_code=row["exit_code"],
        backend=row["backend"],
        profile=row["profile"],
        log_path=row["log_path"],
        error=row["error"],
        attempts=row["attempts"],
        pid=row["pid"],
        pid_create_time=row["pid_create_time"],
        wait_until=from_iso(row["wait_until"]),
        skip_reason=row["skip_reason"],
        skipped_count=row["skipped_count"],
    )


class _NotAdded(Exception):
    pass


class _AttemptEndFailed(Exception):
    """The last attempt's end, written with the run's end, failed: the run's end goes alone."""


class RunStore:
    def __init__(self, db: Database, events: EventLog | None = None, clock: Callable[[], datetime] = now_utc) -> None:
        self.db = db
        self.events = events  # None: no events (tests of other parts)
        self.clock = clock

    def _announce(self, conn: sqlite3.Connection, build: Callable[[], list[NewEvent | None]]) -> bool:
        """Write the events of a change inside its transaction; never fails it (EventLog.write_sync)."""
        if self.events is None:
            return False
        try:
            events = [e for e in build() if e is not None]
        except Exception:  # building is pure; a bug in it must not cost the run its record
            log.exception("cannot build the event(s) of a run change; the change is kept")
            return False
        return bool(events) and self.events.write_sync(conn, events)

    async def _notify(self, wrote: bool) -> None:
        if wrote and self.events is not None:
            await self.events.notify()

    async def insert(
        self,
        *,
        loop: str,
        trigger: str,
        status: RunStatus,
        scheduled_at: datetime,
        started_at: datetime,
        backend: str,
        log_path_for: Callable[[int], object] | None = None,
        error: str | None = None,
        finished_at: datetime | None = None,
        fired: LoopFire | None = None,
        skip_reason: SkipReason | None = None,
        missed: int = 0,
        missed_reason: SkipReason = "daemon_down",
    ) -> Run | None:
        """Write the run row before anything runs, so no run is ever lost. `log_path_for(id)` names
        the log file, which depends on the id. The row comes back from the write itself (a read on
        the reader could miss it). None: `fired` was already recorded (or the loop's schedule moved
        on meanwhile), and nothing was written.

        A `skipped` row says why (`skip_reason`); `missed` is how many fires fell while fleetd could not
        fire them, which this row (a catch-up run, or a skipped one) stands for, and `missed_reason` why a
        catch-up run's fires were missed."""
        skipped_count = (missed or 1) if status == "skipped" else 0

        def write(conn: sqlite3.Connection) -> tuple[Run, bool] | None:
            if fired is not None and not _move_fire(conn, fired):
                return None
            (row,) = conn.execute(
                "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, finished_at, backend, "
                "error, attempts, skip_reason, skipped_count, duration_ms) "
                f"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, {_DURATION_MS}) RETURNING {_COLUMNS}",
                (
                    loop,
                    trigger,
                    status,
                    to_iso(scheduled_at),
                    to_iso(started_at),
                    to_iso(finished_at),
                    backend,
                    error,
                    0,  # the first attempt, once it starts, makes it 1 (AttemptStore.start)
                    skip_reason,
                    skipped_count,
                ),
            ).fetchall()
            run = _row_to_run(row)
            if log_path_for is not None:
                run.log_path = str(log_path_for(run.id))
                conn.execute("UPDATE runs SET log_path = ? WHERE id = ?", (run.log_path, run.id))
            wrote = self._announce(
                conn,
                lambda: [
                    fire_event(run, started_at, missed, missed_reason),
                    run_event(run, started_at) if status == "running" else None,
                ],
            )
            return run, wrote

        written = await self.db.write(write)
        if written is None:
            return None
        await self._notify(written[1])
        return written[0]

    async def add_skip(self, run_id: int, count: int, error: str, fired: LoopFire | None = None) -> Run | None:
        """One more fire skipped into the `skipped` row `run_id` (now standing for `count` fires), with the
        loop's fire times moved on as `insert` does. No event: the row's first fire told it. None, with
        nothing written: `fired` was already recorded, or the row is gone."""

        def write(conn: sqlite3.Connection) -> Run | None:
            rows = conn.execute(
                "UPDATE runs SET skipped_count = ?, error = ? WHERE id = ? AND status = 'skipped' "
                f"RETURNING {_COLUMNS}",
                (count, error, run_id),
            ).fetchall()
            if not rows:
                return None
            if fired is not None and not _move_fire(conn, fired):
                raise _NotAdded  # rolls the count back (the write's own savepoint)
            return _row_to_run(rows[0])

        try:
            return await self.db.write(write)
        except _NotAdded:
            return None

    async def finish(
        self,
        run_id: int,
        *,
        status: RunStatus,
        finished_at: datetime,
        exit_code: int | None = None,
        error: str | None = None,
        attempt_end: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        """The run's end, and its `run.<status>` event: the one path every run end takes (the executor's,
        crash recovery's), so every status gets its event, whatever statuses are added later. `attempt_end`
        (`attempts.finish_write`) records its last attempt's end in the same transaction; its failure is
        logged and does not cost the run its end, as when it was written alone."""

        def write(conn: sqlite3.Connection) -> bool:
            if attempt_end is not None:
                try:
                    attempt_end(conn)
                except Exception as e:  # this write is rolled back (the writer's own savepoint); run again without
                    if not conn.in_transaction:  # SQLite rolled the whole transaction back: the store failed
                        raise
                    raise _AttemptEndFailed(e) from e
            # A waiting run the daemon's stop (or crash) interrupts keeps the reset it waited for: the next start runs
            # it again (`Scheduler`), and `runs show` says what it waited for.
            rows = conn.execute(
                "UPDATE runs SET status = ?1, finished_at = ?2, exit_code = ?3, error = ?4, "
                "wait_until = CASE WHEN ?1 = 'interrupted' AND status = 'waiting' THEN wait_until END, "
                f"duration_ms = {duration_ms_sql('?2', 'started_at')} "
                f"WHERE id = ?5 AND status IN {ACTIVE} RETURNING {_COLUMNS}",
                (status, to_iso(finished_at), exit_code, error, run_id),
            ).fetchall()
            return bool(rows) and self._announce(conn, lambda: [run_event(_row_to_run(rows[0]), finished_at)])

        try:
            wrote = await self.db.write(write)
        except _AttemptEndFailed as e:
            log.error("run %s: cannot record the end of its last attempt (%s); the run's end is kept", run_id, e)
            await self.finish(run_id, status=status, finished_at=finished_at, exit_code=exit_code, error=error)
            return
        await self._notify(wrote)

    async def set_route(self, run_id: int, route: list[dict[str, Any]]) -> None:
        """The run's route: every routing decision and every candidate passed over, in order."""
        text = json.dumps(route)
        await self.db.write(
            lambda conn: conn.execute("UPDATE runs SET route_json = ? WHERE id = ?", (text, run_id)).close()
        )

    async def route(self, run_id: int) -> list[dict[str, Any]]:
        row = await self.db.fetchone("SELECT route_json FROM runs WHERE id = ?", (run_id,))
        return list(json.loads(row["route_json"])) if row else []

    async def set_waiting(
        self, run_id: int, until: datetime | None, announce: bool = True, route: list[dict[str, Any]] | None = None
    ) -> None:
        """`waiting` until a profile's reset, with its `run.waiting` event unless `announce` is False (the same
        wait, its time moved); until=None: back to `running`. `route`: the run's route so far, kept should the
        daemon die before the run's end writes it whole (`set_route`)."""
        now = self.clock()
        text = json.dumps(route) if route is not None else None

        def write(conn: sqlite3.Connection) -> bool:
            rows = conn.execute(
                "UPDATE runs SET status = ?, wait_until = ?, route_json = coalesce(?, route_json) "
                f"WHERE id = ? AND status IN {ACTIVE} RETURNING {_COLUMNS}",
                ("waiting" if until else "running", to_iso(until), text, run_id),
            ).fetchall()
            return (
                until is not None
                and announce
                and bool(rows)
                and self._announce(conn, lambda: [run_event(_row_to_run(rows[0]), now)])
            )

        await self._notify(await self.db.write(write))

    async def set_pid(self, run_id: int, pid: int, create_time: float | None) -> None:
        """The process the run is in now, when it is not an attempt's (its --verify): crash recovery kills it, and
        takes a run whose process still ran at the restart to have run until then."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"UPDATE runs SET pid = ?, pid_create_time = ? WHERE id = ? AND status IN {ACTIVE}",
                (pid, create_time, run_id),
            ).close()

        await self.db.write(write)

    async def get(self, run_id: int) -> Run:
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if row is None:
            # Ids are never reused (AUTOINCREMENT) and only retention deletes runs: one under the high-water mark
            # was pruned, which is news to someone holding its id (from a hook, a notification, an old listing).
            given = await self.db.fetchone("SELECT seq FROM sqlite_sequence WHERE name = 'runs'")
            if given is not None and 1 <= run_id <= given["seq"]:
                raise NotFound(f"run {run_id} was pruned from the history (`fleetd runs prune`, the daemon's --retain)")
            raise NotFound(f"no run with id {run_id}")
        return _row_to_run(row)

    async def list(
        self,
        *,
        loop: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[Run]:
        """Newest first: by start time, then id."""
        sql, params = list_query(loop=loop, status=status, since=since, limit=limit)
        return [_row_to_run(r) for r in await self.db.fetchall(sql, params)]

    async def list_array(
        self,
        item: str,
        *,
        loop: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> bytes:
        """The runs `list` would give, in its order and through its index search, as one JSON array of the JSON
        texts the SQL expression `item` makes of each row (the API's object of a run: daemon/views.py
        `RUN_JSON_SQL`), UTF-8: the API's answer body as SQLite wrote it. One value, not a Python object per run:
        for 10,000 runs the rows, their join and encoding were a quarter of the daemon's CPU for the call."""
        filters: dict[str, Any] = {"loop": loop, "status": status, "since": since}
        if limit >= SPLIT_FROM:
            # Two halves at once, one per reader connection (SQLite builds the JSON with the GIL let go): the
            # second half starts at the list's row number `half`, found by a walk of the index alone. Each half
            # reads its own snapshot: a run changed between the two is in one half only, as it stood then.
            half = limit // 2
            sql, params = list_query(**filters, limit=1, select="started_at, id")
            middle = await self.db.fetchone(f"{sql} OFFSET ?", (*params, half))
            if middle is not None:
                at = (middle[0], middle[1])
                newer, older = await asyncio.gather(
                    self.db.fetchone(*array_query(item, **filters, limit=half, newer_than=at)),
                    self.db.fetchone_beside(*array_query(item, **filters, limit=limit - half, from_=at)),
                )
                assert newer is not None and older is not None
                return _joined(bytes(newer[0]), bytes(older[0]))
        row = await self.db.fetchone(*array_query(item, **filters, limit=limit))
        assert row is not None  # an aggregate always gives one row
        return bytes(row[0])

    async def newest_ran(self, loop: str, since: datetime) -> Run | None:
        """The loop's newest run that is not a `skipped` row (fires skipped while it ran or waited are newer rows)."""
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM runs WHERE loop = ? AND started_at >= ? AND status != 'skipped' "
            f"ORDER BY {NEWEST_FIRST} LIMIT 1",
            (loop, to_iso(since)),
        )
        return _row_to_run(row) if row is not None else None

    async def running(self) -> list[Run]:
        rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM runs WHERE status IN {ACTIVE} ORDER BY id")
        return [_row_to_run(r) for r in rows]

    async def last_for_loops(self) -> dict[str, Run]:
        """The newest run of every defined loop (as `list` orders them), for `loop list`: one index probe per
        loop. A run started before the loop was added belongs to an earlier loop of that name (`Loop.instance`)."""
        rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM runs WHERE id IN ({LAST_RUN_IDS})")
        return {r["loop"]: _row_to_run(r) for r in rows}


def _move_fire(conn: sqlite3.Connection, fired: LoopFire) -> bool:
    """Record a fire of the loop: compare-and-set on `next_fire_at`, so a fire is recorded once (False:
    recorded already, or the loop's schedule moved on meanwhile)."""
    cur = conn.execute(
        "UPDATE loops SET last_fire_at = ?, next_fire_at = ? WHERE name = ? AND next_fire_at IS ?",
        (to_iso(fired.last_fire_at), to_iso(fired.next_fire_at), fired.loop, to_iso(fired.due)),
    )
    return cur.rowcount == 1


# Newest first. Invariant: every filter combination of `list_query` has an index that ends in started_at
# (schema migration 9), so SQLite walks that index backwards from the filters' prefix (and `--since`'s
# bound) and stops after `limit` rows: no table scan, no sort. tests/store/test_query_plans.py pins it.
NEWEST_FIRST = "started_at DESC, id DESC"
# The id of each defined loop's last run, the one `loop list` and `loop show` show and retention keeps: of this
# loop, not of an earlier one removed under its name (`Loop.instance`). One index probe per loop. A loop with
# no run yet gives no row, not a NULL: `id NOT IN (…, NULL)` is never true, and would keep every run.
LAST_RUN_IDS = (
    "SELECT id FROM (SELECT (SELECT id FROM runs r WHERE r.loop = l.name AND r.started_at >= l.created_at "
    f"ORDER BY {NEWEST_FIRST} LIMIT 1) AS id FROM loops l) WHERE id IS NOT NULL"
)
# The statuses of ACTIVE_STATUSES as an SQL list, `status IN {ACTIVE}`.
ACTIVE = "(" + ", ".join(f"'{status}'" for status in ACTIVE_STATUSES) + ")"


def list_query(
    *, loop: str | None, status: str | None, since: datetime | None, limit: int, select: str = _COLUMNS,
    newer_than: tuple[str, int] | None = None, from_: tuple[str, int] | None = None,
) -> tuple[str, tuple[Any, ...]]:  # fmt: skip
    """The SQL of `RunStore.list` (and its parameters), for the store and the test of its query plans; `select`:
    what each row gives instead of the run's columns (`array_query`). `newer_than` / `from_` (a row's started_at
    and id): only the rows before that row in the list's order / from that row on (the halves of a split list)."""
    where: list[str] = []
    params: list[Any] = []
    if newer_than is not None:
        where.append("(started_at, id) > (?, ?)")
        params.extend(newer_than)
    if from_ is not None:
        where.append("(started_at, id) <= (?, ?)")
        params.extend(from_)
    if loop is not None:
        where.append("loop = ?")
        params.append(loop)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if since is not None:
        where.append("started_at >= ?")
        params.append(to_iso(since))
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {select} FROM runs {clause} ORDER BY {NEWEST_FIRST} LIMIT ?", (*params, limit)


# From this many rows a list is read in two halves at once (`RunStore.list_array`); below, one read is as fast.
SPLIT_FROM = 2000


def _joined(first: bytes, second: bytes) -> bytes:
    """Two JSON arrays' bytes as one."""
    if first == b"[]":
        return second
    if second == b"[]":
        return first
    return first[:-1] + b"," + second[1:]


def array_query(
    item: str, *, loop: str | None, status: str | None, since: datetime | None, limit: int,
    newer_than: tuple[str, int] | None = None, from_: tuple[str, int] | None = None,
) -> tuple[str, tuple[Any, ...]]:  # fmt: skip
    """The SQL of `RunStore.list_array` (and its parameters): `list_query`'s rows, each made into a JSON text by
    `item`, joined into one JSON array (a BLOB: the UTF-8 bytes as they are; an empty array for no rows)."""
    sql, params = list_query(loop=loop, status=status, since=since, limit=limit, select=f"{item} AS item",
                             newer_than=newer_than, from_=from_)  # fmt: skip
    # Invariant: group_concat joins the rows in `list_query`'s order. SQLite has no ORDER BY inside an aggregate
    # before 3.44, but never flattens a subquery with a LIMIT into an aggregate query: the subquery runs as a
    # co-routine whose rows the aggregate takes as the index walk yields them. tests/store/test_runs_array.py
    # checks the order, tests/store/test_query_plans.py the walk.
    return f"SELECT CAST('[' || coalesce(group_concat(item, ','), '') || ']' AS BLOB) FROM ({sql})", params
