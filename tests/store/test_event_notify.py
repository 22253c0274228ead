"""Waking the event log's followers costs a committed change nothing: under load (hundreds of run starts
and ends a second, each notifying), a notify that queued behind a follower for a lock held one turn of
the event loop per notifier ahead of it delayed every fire by hundreds of milliseconds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleetd.store.db import Database
from fleetd.store.events import EventLog


def test_notify_never_waits_for_a_follower(tmp_path: Path) -> None:
    async def go() -> tuple[list[int], int]:
        db = await Database.open(tmp_path / "e.db")
        events = EventLog(db)
        woken = 0

        async def follow() -> None:  # as the hooks dispatcher follows the log
            nonlocal woken
            while True:
                seen = events.written
                await events.wait_past(seen, 10)
                woken += 1

        follower = asyncio.create_task(follow())
        try:
            await asyncio.sleep(0)
            late = []
            for i in range(50):  # one committed change per turn of the loop, as fires arrive
                notify = asyncio.create_task(events.notify())
                await asyncio.sleep(0)  # the notify's first step runs before this returns
                if not notify.done():
                    late.append(i)
                await notify
            for _ in range(10):
                await asyncio.sleep(0)
            return late, woken
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await db.close()

    late, woken = asyncio.run(go())
    assert late == []
    assert woken >= 1


def test_a_follower_sees_a_change_notified_between_its_read_and_its_wait(tmp_path: Path) -> None:
    async def go() -> float:
        db = await Database.open(tmp_path / "e.db")
        events = EventLog(db)
        try:
            seen = events.written  # the follower read the log here...
            await events.notify()  # ...a change commits before it waits
            loop = asyncio.get_running_loop()
            start = loop.time()
            await events.wait_past(seen, 5)
            return loop.time() - start
        finally:
            await db.close()

    assert asyncio.run(go()) < 1


def test_wait_past_returns_after_its_timeout_without_a_change(tmp_path: Path) -> None:
    async def go() -> float:
        db = await Database.open(tmp_path / "e.db")
        events = EventLog(db)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            await events.wait_past(events.written, 0.05)
            return loop.time() - start
        finally:
            await db.close()

    assert 0.04 < asyncio.run(go()) < 2
