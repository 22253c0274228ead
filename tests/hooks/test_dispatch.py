"""The dispatcher over a real store: what reaches which hook, `hook.failed` without recursion, the
bounded queue of a hung hook, and the persisted cursor (a restart neither loses nor repeats)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetd.hooks.dispatch import HookDispatcher
from fleetd.records.hook import Hook
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.hooks import HookStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def _until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if await value if isinstance(value, Awaitable) else value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await asyncio.sleep(0.02)


class World:
    def __init__(self, db: Database, home: Path) -> None:
        self.db, self.home = db, home
        self.events = EventLog(db)
        self.store = HookStore(db)

    def dispatcher(self, **kw: Any) -> HookDispatcher:
        async def no_secret(hook: Hook) -> str | None:
            return None

        async def known() -> list[str]:
            return []

        return HookDispatcher(self.store, self.events, secret=no_secret, known_secrets=known, clock=lambda: NOW,
                              cwd=self.home, backoff_base=0.01, **kw)  # fmt: skip

    async def add_exec(self, name: str, on: tuple[str, ...], command: str, timeout: float = 5.0) -> None:
        await self.store.insert(Hook(name, on, "exec", command, timeout_s=timeout, created_at=NOW))

    async def emit(self, type_: str, **data: Any) -> None:
        await self.events.emit(NOW, type_, f"{type_} for the test", **data)

    async def types(self) -> list[str]:
        return [e.type for e in await self.events.after(0)]


@asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    db = await Database.open(tmp_path / "h.db")
    try:
        yield World(db, tmp_path)
    finally:
        await db.close()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_each_hook_gets_the_events_it_subscribes_to_in_order(tmp_path: Path) -> None:
    failed, everything = tmp_path / "failed.jsonl", tmp_path / "all.jsonl"

    async def go() -> None:
        async with world(tmp_path) as w:
            await w.add_exec("failed", ("run.failed",), f"cat >> {failed}")
            await w.add_exec("all", ("*",), f"cat >> {everything}")
            dispatcher = w.dispatcher()
            await dispatcher.start()
            for t in ("run.succeeded", "run.failed", "circuit.opened", "run.failed"):
                await w.emit(t)
            await _until(lambda: len(_lines(everything)) == 4 and len(_lines(failed)) == 2)
            await dispatcher.stop(1)

    asyncio.run(go())
    assert [e["type"] for e in _lines(everything)] == ["run.succeeded", "run.failed", "circuit.opened", "run.failed"]
    assert [e["id"] for e in _lines(failed)] == [2, 4]


def test_a_failing_hook_emits_hook_failed_which_no_hook_receives(tmp_path: Path) -> None:
    everything = tmp_path / "all.jsonl"

    async def go() -> None:
        async with world(tmp_path) as w:
            await w.add_exec("broken", ("*",), "echo 'no such notifier' >&2; exit 3")
            await w.add_exec("all", ("*",), f"cat >> {everything}")
            dispatcher = w.dispatcher()
            await dispatcher.start()
            await w.emit("run.failed", run_id=1)
            await _until(lambda: w.types(), 5)
            await _until(lambda: _has(w, "hook.failed"))
            await w.emit("run.succeeded", run_id=2)
            await _until(lambda: len(_lines(everything)) == 2)
            await _until(lambda: _count(w, "hook.failed", 2))
            await asyncio.sleep(0.3)  # a recursion would show as more hook.failed events by now
            assert await w.types() == ["run.failed", "hook.failed", "run.succeeded", "hook.failed"]
            failure = (await w.events.after(1))[0]
            assert failure.data == {"hook": "broken", "event_id": 1, "event_type": "run.failed",
                                    "detail": "exit 3: no such notifier", "tries": 1}  # fmt: skip
            last, pending, dropped = dispatcher.last("broken")
            assert last is not None and not last.delivery.ok and (pending, dropped) == (0, 0)
            await dispatcher.stop(1)

    asyncio.run(go())
    assert [e["type"] for e in _lines(everything)] == ["run.failed", "run.succeeded"]  # never hook.failed


async def _has(w: World, type_: str) -> bool:
    return type_ in await w.types()


async def _count(w: World, type_: str, n: int) -> bool:
    return (await w.types()).count(type_) >= n


def test_a_hung_hook_holds_at_most_its_queue_and_says_once_what_it_drops(tmp_path: Path) -> None:
    fast = tmp_path / "fast.jsonl"

    async def go() -> None:
        async with world(tmp_path) as w:
            await w.add_exec("hung", ("run.*",), "sleep 60", timeout=60)
            await w.add_exec("fast", ("run.*",), f"cat >> {fast}")
            dispatcher = w.dispatcher(queue_cap=3)
            await dispatcher.start()
            for n in range(10):
                await w.emit("run.failed", run_id=n)
                # the other hook is not held up: it gets each event while the hung one hangs
                await _until(lambda n=n: len(_lines(fast)) == n + 1)
            await _until(lambda: dispatcher.last("hung")[2] == 6)
            _, pending, _ = dispatcher.last("hung")
            assert pending == 4  # one in its command, three queued: the cap
            failures = [e for e in await w.events.after(0) if e.type == "hook.failed"]
            assert len(failures) == 1 and "queue of 3 events is full" in failures[0].message
            # the newest stayed: the oldest were dropped
            newest = [e.id for e in await w.events.after(0) if e.type == "run.failed"][-3:]
            assert [e.id for e in dispatcher._queues["hung"].items] == newest
            await dispatcher.stop(0.2)  # the hung command is killed, not waited for

    asyncio.run(asyncio.wait_for(go(), 30))


def test_the_cursor_redelivers_after_a_restart_what_was_not_delivered_and_nothing_else(tmp_path: Path) -> None:
    """What waited in the queue at a stop is delivered after the restart; the exec delivery the stop cut short is
    not run again (it was, from the start, at every restart: a command that got halfway ran twice, three times…):
    it is a `hook.failed` that says so."""
    out = tmp_path / "got.jsonl"
    gate = tmp_path / "open"
    started = tmp_path / "started"

    async def go() -> None:
        async with world(tmp_path) as w:
            await w.emit("run.failed", run_id=0)  # before any hook: history, never sent
            # The hook blocks until `gate` exists, so events 2 and 3 are pending when the daemon stops.
            command = f"echo >> {started}; while [ ! -e {gate} ]; do sleep 0.05; done; cat >> {out}"
            await w.add_exec("slow", ("run.*",), command)
            first = w.dispatcher()
            await first.start()
            await w.emit("run.failed", run_id=1)
            await w.emit("run.succeeded", run_id=2)
            await _until(lambda: first.last("slow")[1] == 2 and started.exists())
            await first.stop(0.1)  # the delivery under way (run 1) is cut short; run 2's waits for the next start
            assert await w.store.cursor() == 2
            (cut,) = [e for e in await w.events.after(0) if e.type == "hook.failed"]
            assert cut.data["event_id"] == 2 and "cut short by the daemon's stop" in cut.message, cut
            await w.emit("run.failed", run_id=3)  # written while no dispatcher runs
            gate.touch()
            second = w.dispatcher()
            await second.start()
            await _until(lambda: len(_lines(out)) == 2)
            await _until(lambda: _cursor_is(w, 5))
            await second.stop(1)
            third = w.dispatcher()  # everything was delivered: a restart sends nothing again
            await third.start()
            await asyncio.sleep(0.3)
            await third.stop(1)

    asyncio.run(go())
    assert [e["data"]["run_id"] for e in _lines(out)] == [2, 3]
    assert started.read_text().count("\n") == 3  # run 1's once (cut short), then runs 2 and 3: none twice


async def _cursor_is(w: World, event_id: int) -> bool:
    return await w.store.cursor() == event_id


def test_the_first_start_begins_at_the_newest_event(tmp_path: Path) -> None:
    out = tmp_path / "got.jsonl"

    async def go() -> None:
        async with world(tmp_path) as w:
            await w.emit("run.failed", run_id=1)
            await w.store.insert(Hook("h", ("*",), "exec", f"cat >> {out}", created_at=NOW))
            async with w.db.transaction() as conn:  # as if it had existed all along: only the cursor decides
                await conn.execute("UPDATE hooks SET since_event = 0")
            dispatcher = w.dispatcher()
            await dispatcher.start()
            await w.emit("run.failed", run_id=2)
            await _until(lambda: len(_lines(out)) == 1)
            await dispatcher.stop(1)

    asyncio.run(go())
    assert [e["data"]["run_id"] for e in _lines(out)] == [2]


def test_a_hook_change_before_start_keeps_the_cursor(tmp_path: Path) -> None:
    """The API serves `hook add`/`hook rm` while the daemon still recovers, before the dispatcher starts:
    that reload must not rewind the stored cursor (which would redeliver every stored event)."""
    out = tmp_path / "got.jsonl"

    async def go() -> None:
        async with world(tmp_path) as w:
            for run_id in (1, 2, 3):
                await w.emit("run.failed", run_id=run_id)
            await w.store.insert(Hook("h", ("*",), "exec", f"cat >> {out}", created_at=NOW))
            async with w.db.transaction() as conn:  # a hook older than every event
                await conn.execute("UPDATE hooks SET since_event = 0")
            await w.store.save_cursor(3, NOW)  # the last daemon delivered them all
            dispatcher = w.dispatcher()
            await dispatcher.reload()  # a `hook add` during start-up
            assert await w.store.cursor() == 3
            await dispatcher.start()
            await w.emit("run.failed", run_id=4)
            await _until(lambda: len(_lines(out)) >= 1)
            await _until(lambda: _cursor_is(w, 4))
            await dispatcher.stop(1)

    asyncio.run(asyncio.wait_for(go(), 30))
    assert [e["data"]["run_id"] for e in _lines(out)] == [4]


def test_a_hook_change_before_the_first_start_sends_no_history(tmp_path: Path) -> None:
    out = tmp_path / "got.jsonl"

    async def go() -> None:
        async with world(tmp_path) as w:
            await w.emit("run.failed", run_id=1)
            await w.store.insert(Hook("h", ("*",), "exec", f"cat >> {out}", created_at=NOW))
            async with w.db.transaction() as conn:
                await conn.execute("UPDATE hooks SET since_event = 0")
            dispatcher = w.dispatcher()
            await dispatcher.reload()
            assert await w.store.cursor() is None  # still the first start: it begins at the newest event
            await dispatcher.start()
            await w.emit("run.failed", run_id=2)
            await _until(lambda: len(_lines(out)) == 1)
            await dispatcher.stop(1)

    asyncio.run(asyncio.wait_for(go(), 30))
    assert [e["data"]["run_id"] for e in _lines(out)] == [2]


def test_a_stop_that_lands_as_the_follower_wakes_still_stops_it(tmp_path: Path) -> None:
    """3.11's wait_for drops a cancellation that lands in the turn its wait ends: a stop cancelling the
    follower just as an event woke it left the follower running and `daemon stop` waiting for it forever."""

    async def go(turns: int) -> bool:
        async with world(tmp_path / str(turns)) as w:
            await w.add_exec("some", ("circuit.opened",), "true")  # without a hook the follower waits for one
            dispatcher = w.dispatcher()
            await dispatcher.start()
            await _until(lambda: bool(w.events._new._waiters))  # the follower waits for the next event
            await w.events.notify()  # a run's end was written...
            for _ in range(turns):
                await asyncio.sleep(0)
            stop = asyncio.create_task(dispatcher.stop(grace=0.1))  # ...and the daemon stops
            done, _ = await asyncio.wait({stop}, timeout=5)
            if not done:  # leave nothing running behind the test
                dispatcher._stopped = True
                if dispatcher._follower is not None:
                    dispatcher._follower.cancel()
                stop.cancel()
                await asyncio.gather(stop, return_exceptions=True)
            return bool(done)

    for turns in range(5):
        (tmp_path / str(turns)).mkdir()
        assert asyncio.run(go(turns)), f"stop hung ({turns} turns after the wake-up)"


def test_with_no_hook_the_follower_reads_and_writes_nothing_and_a_hook_added_later_gets_what_follows(
    tmp_path: Path,
) -> None:
    """Every run start and end wakes the follower: with no hook to deliver to it must not read the log
    or save its cursor each time (a read and a write per run event, under load)."""
    later = tmp_path / "later.jsonl"

    async def go() -> None:
        async with world(tmp_path) as w:
            dispatcher = w.dispatcher()
            await dispatcher.start()
            reads = saves = 0
            after, save_cursor = w.events.after, w.store.save_cursor

            async def counted_after(*args: Any, **kw: Any) -> Any:
                nonlocal reads
                reads += 1
                return await after(*args, **kw)

            async def counted_save(*args: Any, **kw: Any) -> Any:
                nonlocal saves
                saves += 1
                return await save_cursor(*args, **kw)

            w.events.after, w.store.save_cursor = counted_after, counted_save  # type: ignore[method-assign]
            for _ in range(20):
                await w.emit("run.succeeded")
                await asyncio.sleep(0)
            await asyncio.sleep(0.1)  # the follower has had its wakes
            assert (reads, saves) == (0, 0)
            await w.add_exec("later", ("*",), f"cat >> {later}")
            await dispatcher.reload()
            await w.emit("run.failed")
            await _until(lambda: len(_lines(later)) == 1)
            await dispatcher.stop(1)

    asyncio.run(go())
    assert [e["id"] for e in _lines(later)] == [21]


def test_a_stop_with_one_hook_behind_redelivers_nothing_to_the_hooks_that_kept_up(tmp_path: Path) -> None:
    """Each hook's deliveries are its own: a hook that hangs keeps its undelivered events for the next start, and
    a healthy hook that got every event gets none of them again (the one cursor of all hooks sent them to both)."""
    good, slow = tmp_path / "good.jsonl", tmp_path / "slow.jsonl"

    async def go() -> None:
        async with world(tmp_path) as w:
            await w.add_exec("good", ("*",), f"cat >> {good}")
            await w.add_exec("slow", ("*",), f"cat >> {slow}; sleep 30", timeout=60)
            dispatcher = w.dispatcher()
            await dispatcher.start()
            for run_id in (1, 2, 3):
                await w.emit("run.failed", run_id=run_id)
            await _until(lambda: len(_lines(good)) == 3 and len(_lines(slow)) == 1)
            await dispatcher.stop(0.2)  # `slow` is still on event 1 (cut short: not run again); 2, 3 stay undelivered
            for restart in range(2):
                again = w.dispatcher()
                await again.start()
                want = 2 + restart  # the next event each time (event 1 again each time, before: a cut exec re-ran)
                await _until(lambda want=want: len(_lines(slow)) == want)  # type: ignore[misc]
                await again.stop(0.2)

    asyncio.run(asyncio.wait_for(go(), 60))
    assert [e["data"]["run_id"] for e in _lines(good)] == [1, 2, 3]
    assert [e["data"]["run_id"] for e in _lines(slow)] == [1, 2, 3]


def test_an_exec_delivery_waiting_for_a_slot_at_a_stop_is_delivered_after_the_start_not_cut(tmp_path: Path) -> None:
    """Only a command a stop really cut short is not run again: one that still waited for a delivery slot (all
    taken by another hook) had never started, yet was marked cut (`hook.failed`) and never delivered."""
    busy, waiting = tmp_path / "busy.jsonl", tmp_path / "waiting.jsonl"

    async def go() -> None:
        async with world(tmp_path) as w:
            await w.add_exec("busy", ("run.failed",), f"cat >> {busy}; sleep 30", timeout=60)
            await w.add_exec("waiting", ("run.succeeded",), f"cat >> {waiting}")
            first = w.dispatcher(concurrency=1)
            await first.start()
            await w.emit("run.failed", run_id=1)
            await _until(lambda: len(_lines(busy)) == 1)
            await w.emit("run.succeeded", run_id=2)  # its delivery waits for `busy`'s slot
            await _until(lambda: first.last("waiting")[1] == 1)
            await first.stop(0.2)
            failed = [e.data["hook"] for e in await w.events.after(0) if e.type == "hook.failed"]
            assert failed == ["busy"], failed
            second = w.dispatcher(concurrency=1)
            await second.start()
            await _until(lambda: len(_lines(waiting)) == 1)
            await second.stop(0.2)

    asyncio.run(asyncio.wait_for(go(), 60))
    assert [e["data"]["run_id"] for e in _lines(waiting)] == [2]
    assert [e["data"]["run_id"] for e in _lines(busy)] == [1]  # cut short once, not run again
