"""Retention: old runs, their attempts and logs, old events and old gateway calls (with their logged bodies)
are pruned (`fleetd runs prune`, and the daemon every `--prune-interval` for what is older than `--retain`,
90 days by default).

What is kept, whatever the options (store/retention.py enforces it in the same transaction as the delete):
a run that is `running` or `waiting`, and the newest run of every loop that still exists (its `last run`).
The stats rollups keep the figures of pruned runs: `stats --since 120d` still counts the days whose runs
are gone, the way a bill outlives the receipts (only a window's first, partial hour is read from raw
rows, so a window that starts before the retention may miss up to that hour).

Off the hot path: a batch of runs (default 500) is one short write transaction, then the pruner yields
(`pause`), so fires and API writes interleave with a large first prune; log files are deleted in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fleetd.paths import RUN_LOG_SHARD
from fleetd.records.run import Pruned
from fleetd.store.retention import DeletedRun, RetentionStore
from fleetd.timefmt import format_duration

log = logging.getLogger("fleetd.retention")

DEFAULT_RETAIN = "90d"
DEFAULT_PRUNE_INTERVAL = "1h"


class Pruner:
    def __init__(
        self,
        store: RetentionStore,
        *,
        run_logs: Path,
        clock: Callable[[], datetime],
        batch: int = 500,
        pause: float = 0.005,
    ) -> None:
        self.store = store
        self.run_logs = Path(os.path.abspath(run_logs))
        self.clock = clock
        self.batch = batch
        self.pause = pause
        self._lock = asyncio.Lock()  # a manual prune and the daemon's own never interleave their batches

    async def prune(self, *, older_than: float | None = None, keep_per_loop: int | None = None) -> Pruned:
        """Delete runs (and attempts, logs) that started more than `older_than` seconds ago, and events that
        old; and each loop's runs past its newest `keep_per_loop`. Each criterion prunes on its own."""
        assert keep_per_loop is None or keep_per_loop >= 1, keep_per_loop
        freed = Pruned()
        async with self._lock:
            if older_than is not None:
                before = self.clock() - timedelta(seconds=older_than)
                await self._drain(lambda: self.store.runs_started_before(before, self.batch), freed, keep_facts=False)
                await self._by_age(self.store.delete_pruned_facts_before, before)
                freed.events = await self._by_age(self.store.delete_events_before, before)
                freed.gateway_calls = await self._by_age(self.store.delete_gateway_calls_before, before)
            if keep_per_loop is not None:
                for loop in await self.store.loops_with_runs():
                    await self._drain(
                        lambda loop=loop: self.store.runs_beyond_newest(loop, keep_per_loop, self.batch), freed
                    )
            await asyncio.to_thread(self._remove_empty_shards, await self.store.last_run_id())
        return freed

    async def run(self, *, retain: float, interval: float) -> None:
        """The daemon's background task: prune what is older than `retain` every `interval` seconds (the
        first time after at most a minute, so a daemon restarted often still prunes)."""
        delay = min(interval, 60.0)
        while True:
            await asyncio.sleep(delay)
            delay = interval
            try:
                freed = await self.prune(older_than=retain)
            except Exception:
                # A store that cannot be written now may be writable at the next pass; the store logs that itself.
                log.debug("pruning history failed", exc_info=True)
                continue
            if freed.runs or freed.events or freed.gateway_calls:
                log.info(
                    "pruned history older than %s: %s run(s), %s attempt(s), %s event(s), %s gateway call(s), "
                    "%s log file(s), %s bytes",
                    format_duration(retain), freed.runs, freed.attempts, freed.events, freed.gateway_calls,
                    freed.log_files, freed.log_bytes,
                )  # fmt: skip

    async def _by_age(self, delete: Callable[[datetime, int], Awaitable[int]], before: datetime) -> int:
        """Rows older than `before` through `delete`, a batch at a time; how many went."""
        total = 0
        while True:
            deleted = await delete(before, self.batch)
            total += deleted
            if deleted < self.batch:
                return total
            await asyncio.sleep(self.pause)

    async def _drain(self, next_ids: Callable[[], Any], freed: Pruned, *, keep_facts: bool = True) -> None:
        while ids := await next_ids():
            gone, attempts = await self.store.delete_runs(ids, keep_facts=keep_facts)
            if not gone:
                return  # all of them became protected meanwhile: the next query would return them again
            freed.runs += len(gone)
            freed.attempts += attempts
            files, size = await asyncio.to_thread(self._remove_logs, gone)
            freed.log_files += files
            freed.log_bytes += size
            await asyncio.sleep(self.pause)

    def _remove_logs(self, runs: list[DeletedRun]) -> tuple[int, int]:
        files = size = 0
        for run in runs:
            if not run.log_path:
                continue  # skipped runs never had output
            path = Path(os.path.abspath(run.log_path))
            # Only ever a file inside fleetd's run logs: the database names the path, and a path it should
            # not hold (a restored or edited database) must not make a prune delete something else.
            if not path.is_relative_to(self.run_logs):
                log.warning("run %s: not deleting its log %s: it is outside %s", run.id, path, self.run_logs)
                continue
            try:
                st = path.lstat()
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("run %s: cannot delete its log %s: %s", run.id, path, e.strerror or e)
                continue
            files += 1
            size += st.st_size
        return files, size

    def _remove_empty_shards(self, last_run_id: int) -> None:
        """Remove emptied shard directories, but never the newest one: a new run's log may be created in it
        (a shard below it receives no new run ids, so removing it cannot race the executor)."""
        try:
            shards = list(self.run_logs.iterdir())
        except OSError:
            return
        for shard in shards:
            if shard.name.isdigit() and int(shard.name) < last_run_id // RUN_LOG_SHARD and shard.is_dir():
                with contextlib.suppress(OSError):  # not empty: runs in it are kept
                    shard.rmdir()
