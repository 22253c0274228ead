"""Retention (`runs prune`, the daemon's --retain) over a real SQLite file, with an injected clock: what
goes (old runs with their attempts and logs, old events, runs past a loop's newest N), what always stays
(running and waiting runs, each defined loop's last run, the stats rollups), and that it goes in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.loops.retention import Pruner
from fleetd.records.gateway import GatewayCall
from fleetd.records.result import ParsedOutput
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.gateway import GatewayStore
from fleetd.store.retention import RetentionStore
from fleetd.store.runs import RunStore
from fleetd.timefmt import to_iso

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY = 86400.0


@dataclass
class World:
    db: Database
    runs: RunStore
    attempts: AttemptStore
    events: EventLog
    logs: Path
    pruner: Pruner

    async def run(self, loop: str, days_ago: float, status: str = "succeeded", attempts: int = 1) -> int:
        at = NOW - timedelta(days=days_ago)
        run = await self.runs.insert(
            loop=loop, trigger="schedule", status="running", scheduled_at=at, started_at=at, backend="command",
            log_path_for=lambda i: self.logs / f"{i // 1000:04d}" / f"{i}.log",
        )  # fmt: skip
        assert run is not None and run.log_path is not None
        Path(run.log_path).parent.mkdir(parents=True, exist_ok=True)
        Path(run.log_path).write_bytes(b"x" * 100)
        for number in range(1, attempts + 1):
            attempt = await self.attempts.start(
                run_id=run.id, number=number, backend="command", profile="", model=None, started_at=at
            )
            await self.attempts.finish(
                attempt, finished_at=at, exit_code=0, parsed=ParsedOutput(outcome="succeeded"), error=None,
                cost_usd=None,
            )  # fmt: skip
        if status != "running":
            await self.runs.finish(run.id, status=status, finished_at=at)  # type: ignore[arg-type]
        return run.id

    async def define(self, loop: str, days_ago: float = 365) -> None:
        """The loop as added `days_ago` (it owns the runs of its name started since: `Loop.instance`)."""
        at = to_iso(NOW - timedelta(days=days_ago))
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO loops (name, schedule_kind, schedule_expr, timezone, backend, command, catch_up, "
                "output_cap, created_at, updated_at) VALUES (?, 'every', '1h', 'UTC', 'command', 'true', 'once', "
                "1000, ?, ?)",
                (loop, at, at),
            )

    async def ids(self) -> set[int]:
        return {r[0] for r in await self.db.fetchall("SELECT id FROM runs")}

    async def count(self, table: str) -> int:
        row = await self.db.fetchone(f"SELECT count(*) FROM {table}")
        assert row is not None
        return int(row[0])


def in_world(body: Callable[[World], Awaitable[None]]) -> Callable[[Path], None]:
    """A test over a fresh store (the clock at NOW, batches of 3)."""

    async def go(tmp_path: Path) -> None:
        db = await Database.open(tmp_path / "fleetd.db")
        logs = tmp_path / "logs" / "runs"
        pruner = Pruner(RetentionStore(db), run_logs=logs, clock=lambda: NOW, batch=3, pause=0)
        try:
            await body(World(db, RunStore(db), AttemptStore(db), EventLog(db), logs, pruner))
        finally:
            await db.close()

    def test(tmp_path: Path) -> None:
        asyncio.run(go(tmp_path))

    test.__name__, test.__doc__ = body.__name__, body.__doc__
    return test


@in_world
async def test_age_prunes_old_runs_with_their_attempts_logs_and_old_events(world: World) -> None:
    old = [await world.run("a", days_ago=40 + i, attempts=2) for i in range(7)]
    young = [await world.run("a", days_ago=10), await world.run("b", days_ago=29)]
    await world.events.emit(NOW - timedelta(days=31), "profile.exhausted", "old")
    await world.events.emit(NOW - timedelta(days=1), "profile.exhausted", "new")

    freed = await world.pruner.prune(older_than=30 * DAY)

    assert (freed.runs, freed.attempts, freed.events, freed.log_files) == (7, 14, 1, 7)
    assert freed.log_bytes == 700
    assert await world.ids() == set(young)
    assert await world.count("attempts") == 2
    assert [e.message for e in await world.events.latest(10)] == ["new"]
    assert not any((world.logs / "0000" / f"{i}.log").exists() for i in old)
    assert all((world.logs / "0000" / f"{i}.log").exists() for i in young)


@in_world
async def test_age_prunes_old_gateway_calls_with_their_bodies_in_batches(world: World) -> None:
    calls = GatewayStore(world.db)
    old = [GatewayCall(NOW - timedelta(days=31 + i), "k", "r", "chat", False, request_body="x" * 1000,
                       response_body="y" * 1000) for i in range(7)]  # fmt: skip
    await calls.add_calls([*old, GatewayCall(NOW - timedelta(days=1), "k", "r", "chat", False, request_body="z")])
    batches: list[int] = []
    delete = world.pruner.store.delete_gateway_calls_before

    async def spy(before: datetime, limit: int) -> int:
        batches.append(deleted := await delete(before, limit))
        return deleted

    world.pruner.store.delete_gateway_calls_before = spy  # type: ignore[method-assign]
    freed = await world.pruner.prune(older_than=30 * DAY)

    assert freed.gateway_calls == 7 and batches == [3, 3, 1]
    assert [c.request_body for c in await calls.calls(route=None, since=None, limit=10)] == ["z"]
    assert (await world.pruner.prune(keep_per_loop=1)).gateway_calls == 0  # calls go by age only


@in_world
async def test_running_and_waiting_runs_and_each_defined_loops_last_run_stay(world: World) -> None:
    await world.define("kept")
    running = await world.run("gone", days_ago=100, status="running")
    waiting = await world.run("gone", days_ago=100, status="running")
    await world.runs.set_waiting(waiting, NOW + timedelta(hours=1))
    older = await world.run("kept", days_ago=200)
    last = await world.run("kept", days_ago=100)  # the defined loop's newest: `loop list` shows it
    removed_loops_last = await world.run("gone", days_ago=90)  # its loop is gone: nothing shows it

    freed = await world.pruner.prune(older_than=30 * DAY)

    assert await world.ids() == {running, waiting, last}
    assert freed.runs == 2 and {older, removed_loops_last}.isdisjoint(await world.ids())


@in_world
async def test_a_loop_that_never_ran_does_not_stop_the_prune(world: World) -> None:
    """A defined loop with no run has no last run to keep; it must not keep every other run (SQL's `NOT IN`
    over a list holding NULL is never true)."""
    await world.define("never_ran")
    old = await world.run("gone", days_ago=100)
    assert (await world.pruner.prune(older_than=30 * DAY)).runs == 1
    assert old not in await world.ids()


@in_world
async def test_a_loop_added_again_protects_its_own_last_run_not_the_earlier_loops(world: World) -> None:
    """The protected "last run" is the one `loop list` / `loop show` show: of this loop, not of an earlier loop
    removed under the same name (RunStore.last_for_loops)."""
    earlier = await world.run("again", days_ago=100)  # the last run of a loop since removed
    await world.define("again", days_ago=50)  # added again: it has no run of its own yet
    freed = await world.pruner.prune(older_than=30 * DAY)
    assert freed.runs == 1 and earlier not in await world.ids()
    assert await world.runs.last_for_loops() == {}

    own = await world.run("again", days_ago=40)
    await world.pruner.prune(older_than=30 * DAY)
    assert own in await world.ids()
    assert (await world.runs.last_for_loops())["again"].id == own


@in_world
async def test_keep_per_loop_keeps_each_loops_newest(world: World) -> None:
    a = [await world.run("a", days_ago=d) for d in (5, 4, 3, 2, 1)]
    b = [await world.run("b", days_ago=d) for d in (9, 8)]

    freed = await world.pruner.prune(keep_per_loop=2)

    assert freed.runs == 3
    assert await world.ids() == {a[3], a[4], *b}


@in_world
async def test_both_criteria_prune_on_their_own(world: World) -> None:
    a = [await world.run("a", days_ago=d) for d in (3, 2, 1)]
    b_old = await world.run("b", days_ago=50)
    b_new = await world.run("b", days_ago=1)

    await world.pruner.prune(older_than=30 * DAY, keep_per_loop=2)

    assert await world.ids() == {a[1], a[2], b_new}
    assert b_old not in await world.ids()


@in_world
async def test_prunes_in_batches_of_short_transactions(world: World) -> None:
    for i in range(8):
        await world.run("a", days_ago=40 + i)
    batches: list[int] = []
    delete_runs = world.pruner.store.delete_runs

    async def spy(ids: list[int], *, keep_facts: bool = True) -> tuple[list, int]:  # type: ignore[type-arg]
        batches.append(len(ids))
        return await delete_runs(ids, keep_facts=keep_facts)

    world.pruner.store.delete_runs = spy  # type: ignore[method-assign]
    freed = await world.pruner.prune(older_than=30 * DAY)

    assert freed.runs == 8 and batches == [3, 3, 2]


@in_world
async def test_a_write_waits_for_one_batch_not_the_whole_prune(world: World) -> None:
    """While a large prune goes on, another writer's transaction gets in between its batches."""
    for i in range(30):
        await world.run("a", days_ago=40 + i)
    world.pruner.pause = 0.001
    order: list[str] = []
    delete_runs = world.pruner.store.delete_runs

    async def spy(ids: list[int], *, keep_facts: bool = True) -> tuple[list, int]:  # type: ignore[type-arg]
        order.append("batch")
        return await delete_runs(ids, keep_facts=keep_facts)

    world.pruner.store.delete_runs = spy  # type: ignore[method-assign]

    async def writer() -> None:
        while len(order) < 2:
            await asyncio.sleep(0)
        await world.events.emit(NOW, "test", "a write during the prune")
        order.append("write")

    freed, _ = await asyncio.gather(world.pruner.prune(older_than=30 * DAY), writer())
    assert freed.runs == 30
    assert "write" in order and order.index("write") < len(order) - 1  # not after the last batch


@in_world
async def test_a_log_path_outside_the_run_logs_is_never_deleted(world: World) -> None:
    precious = world.logs.parent.parent / "precious.txt"
    precious.write_text("keep me")
    run = await world.run("a", days_ago=40)
    async with world.db.transaction() as conn:
        await conn.execute("UPDATE runs SET log_path = ? WHERE id = ?", (str(precious), run))

    freed = await world.pruner.prune(older_than=30 * DAY)

    assert freed.runs == 1 and freed.log_files == 0
    assert precious.read_text() == "keep me"


@in_world
async def test_stats_rollups_keep_the_figures_of_pruned_runs(world: World) -> None:
    for i in range(3):
        await world.run("a", days_ago=40 + i)
    before = await world.db.fetchall("SELECT period, runs_ended, attempts FROM stats_daily ORDER BY period")

    await world.pruner.prune(older_than=30 * DAY)

    assert await world.count("runs") == 0
    after = await world.db.fetchall("SELECT period, runs_ended, attempts FROM stats_daily ORDER BY period")
    assert [tuple(r) for r in after] == [tuple(r) for r in before] and len(before) == 3


@in_world
async def test_runs_pruned_by_count_leave_their_stats_facts_until_they_are_old_enough_to_go_by_age(
    world: World,
) -> None:
    """A window's first partial hour is read from the raw rows (store/stats.py): the runs `--keep-per-loop` prunes
    (recent ones) leave their facts for it; runs pruned by age leave none, and those facts go by age too."""
    for days_ago in (40, 41, 0.01, 0.02, 0.03):
        await world.run("a", days_ago=days_ago)
    await world.define("a")

    await world.pruner.prune(keep_per_loop=1)
    assert await world.count("runs") == 1
    at = [r[0] for r in await world.db.fetchall("SELECT started_at FROM stats_pruned_runs ORDER BY started_at")]
    assert at == [to_iso(NOW - timedelta(days=d)) for d in (41, 40, 0.03, 0.02)]
    assert await world.count("stats_pruned_attempts") == 4

    await world.pruner.prune(older_than=30 * DAY)
    at = [r[0] for r in await world.db.fetchall("SELECT started_at FROM stats_pruned_runs ORDER BY started_at")]
    assert at == [to_iso(NOW - timedelta(days=d)) for d in (0.03, 0.02)]
    assert await world.count("stats_pruned_attempts") == 2

    await world.run("b", days_ago=50)
    await world.pruner.prune(older_than=30 * DAY)  # by age: nothing kept
    assert await world.count("stats_pruned_runs") == 2


@in_world
async def test_emptied_log_shards_are_removed_except_the_newest(world: World) -> None:
    old = await world.run("a", days_ago=40)
    async with world.db.transaction() as conn:  # the next run id is in the next shard
        await conn.execute("UPDATE sqlite_sequence SET seq = 1500 WHERE name = 'runs'")
    new = await world.run("a", days_ago=1)
    assert new == 1501 and old < 1000

    await world.pruner.prune(older_than=30 * DAY)

    assert not (world.logs / "0000").exists()
    assert (world.logs / "0001" / "1501.log").exists()
