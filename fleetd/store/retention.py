"""Deleting old history (`fleetd runs prune`, the daemon's `--retain`): the queries, in small batches.

Which runs may go: only finished ones (never `running` or `waiting`), and never the last run of a
loop that still exists (`runs.LAST_RUN_IDS`, a run of this loop, not of an earlier one of its name), so
`loop list` / `loop show` keep showing its last run however long ago that was.
A run goes with its attempts, in one short write transaction per batch (events and gateway calls go by age
alone, in batches too), so a fire or an API write waits
at most one batch. The stats rollups (`stats_daily`, `stats_hourly`) are not touched: they keep the
figures of pruned runs (store/stats.py; triggers add on update only, so a delete subtracts nothing). A run
pruned by count (`--keep-per-loop`, often a recent one) leaves its facts (`stats_pruned_*`, migration 23) for
the raw, first partial hour of a window; those go by age, as runs do. Nor are
the gateway's (`gateway_stats_*`, `gateway_histograms_*`): the store adds calls as it inserts them, and
nothing subtracts them (store/gateway_stats.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleetd.store.db import Database
from fleetd.store.runs import ACTIVE, LAST_RUN_IDS, NEWEST_FIRST
from fleetd.store.schema import KEEP_PRUNED_FACTS
from fleetd.timefmt import to_iso

# Each an index walk that stops at its limit (tests/store/test_query_plans.py): a prune's batch never reads
# or sorts all of a million-run history.
OLD_RUNS = (
    f"SELECT id FROM runs WHERE started_at < ? AND status NOT IN {ACTIVE} AND id NOT IN ({LAST_RUN_IDS}) "
    "ORDER BY started_at, id LIMIT ?"
)
LOOP_NAMES = (  # a skip-scan of runs_by_loop, one probe per name (SELECT DISTINCT would read the whole index)
    "WITH RECURSIVE names(loop) AS (SELECT min(loop) FROM runs UNION ALL "
    "SELECT (SELECT min(loop) FROM runs WHERE loop > names.loop) FROM names WHERE names.loop IS NOT NULL) "
    "SELECT loop FROM names WHERE loop IS NOT NULL"
)
KEEP_EDGE = f"SELECT started_at, id FROM runs WHERE loop = ? ORDER BY {NEWEST_FIRST} LIMIT 1 OFFSET ?"
BEYOND_EDGE = (
    "SELECT id FROM runs WHERE loop = ? AND started_at <= ? AND NOT (started_at = ? AND id >= ?) "
    f"AND status NOT IN {ACTIVE} ORDER BY started_at, id LIMIT ?"
)
OLD_EVENTS = "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? ORDER BY at LIMIT ?)"
OLD_GATEWAY_CALLS = (
    "DELETE FROM gateway_calls WHERE id IN (SELECT id FROM gateway_calls WHERE at < ? ORDER BY at LIMIT ?)"
)


@dataclass(frozen=True)
class DeletedRun:
    id: int
    log_path: str | None


class RetentionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def runs_started_before(self, before: datetime, limit: int) -> list[int]:
        """Up to `limit` prunable runs that started before `before`, oldest first (runs_by_started)."""
        rows = await self.db.fetchall(OLD_RUNS, (to_iso(before), limit))
        return [r[0] for r in rows]

    async def loops_with_runs(self) -> list[str]:
        """Every loop name in the runs table, removed loops included."""
        rows = await self.db.fetchall(LOOP_NAMES)
        return [r[0] for r in rows]

    async def runs_beyond_newest(self, loop: str, keep: int, limit: int) -> list[int]:
        """Up to `limit` prunable runs of `loop` past its newest `keep`, oldest first: both ends of runs_by_loop
        (the keep-th newest found by walking `keep` entries, then the oldest up to it), never a sort of them all."""
        edge = await self.db.fetchone(KEEP_EDGE, (loop, keep - 1))
        if edge is None:
            return []  # it has no more than `keep` runs
        rows = await self.db.fetchall(BEYOND_EDGE, (loop, edge[0], edge[0], edge[1], limit))
        return [r[0] for r in rows]

    async def delete_runs(self, ids: list[int], *, keep_facts: bool = True) -> tuple[list[DeletedRun], int]:
        """Delete these runs and their attempts in one transaction; what was deleted and how many attempts.
        The status and the protection are checked again inside it: the ids were read before, and a run
        may have been added as a loop's newest meanwhile (not finished runs: they never run again).
        `keep_facts`: their stats facts stay for the raw part of a window (runs pruned by count; by age, not)."""
        if not ids:
            return [], 0
        marks = ",".join("?" * len(ids))
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"SELECT id, log_path FROM runs WHERE id IN ({marks}) AND status NOT IN {ACTIVE} "
                f"AND id NOT IN ({LAST_RUN_IDS})",
                ids,
            )
            gone = [DeletedRun(r[0], r[1]) for r in await cur.fetchall()]
            await cur.close()
            if not gone:
                return [], 0
            keep_marks = ",".join("?" * len(gone))
            gone_ids = [r.id for r in gone]
            if keep_facts:
                for keep in KEEP_PRUNED_FACTS:
                    await conn.execute(keep.format(ids=keep_marks), gone_ids)
            cur = await conn.execute(f"DELETE FROM attempts WHERE run_id IN ({keep_marks})", gone_ids)
            attempts = cur.rowcount
            await conn.execute(f"DELETE FROM runs WHERE id IN ({keep_marks})", gone_ids)
        return gone, attempts

    async def delete_events_before(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` events older than `before` (events_by_at); how many went."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(OLD_EVENTS, (to_iso(before), limit))
            return cur.rowcount

    async def delete_pruned_facts_before(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` stats facts of runs pruned by count that started before `before`; how many went."""
        total = 0
        async with self.db.transaction() as conn:
            for table in ("stats_pruned_attempts", "stats_pruned_runs"):
                cur = await conn.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE started_at < ? "
                    "ORDER BY started_at LIMIT ?)",
                    (to_iso(before), limit),
                )
                total = max(total, cur.rowcount)
        return total

    async def delete_gateway_calls_before(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` gateway calls (and their logged bodies) older than `before` (gateway_calls_at)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(OLD_GATEWAY_CALLS, (to_iso(before), limit))
            return cur.rowcount

    async def last_run_id(self) -> int:
        """The highest run id ever given (AUTOINCREMENT never reuses one, even after its row is pruned)."""
        row = await self.db.fetchone("SELECT seq FROM sqlite_sequence WHERE name = 'runs'")
        return int(row[0]) if row else 0
