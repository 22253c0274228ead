"""`GET /v1/loops` rendered once per change (daemon/listing.py): read again when a write was committed,
rendered again when a loop's run starts, waits or ends, and otherwise the same bytes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse

from fleetd.daemon.listing import LoopListing, Slot
from fleetd.daemon.views import loop_json
from fleetd.records.loop import Loop, Schedule

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


class _Store:
    """The database's data_version and the stores' reads, counted."""

    def __init__(self) -> None:
        self.version = 1
        self.loops = [Loop(name=n, schedule=Schedule("every", "1h", "UTC"), backend="command", command="echo é",
                           created_at=T0) for n in ("a", "b")]  # fmt: skip
        self.reads = 0

    async def data_version(self) -> int:
        return self.version

    async def list(self) -> list[Loop]:
        self.reads += 1
        return list(self.loops)

    async def last_for_loops(self) -> dict[str, Any]:
        return {}


def _listing(store: _Store, slots: dict[str, Slot]) -> LoopListing:
    running = lambda loop: slots.get(loop.name, (None, None))  # noqa: E731
    return LoopListing(store, store, store, running)  # type: ignore[arg-type]


def test_the_same_bytes_until_a_commit_or_a_run_changes_them() -> None:
    store, slots = _Store(), {}
    listing = _listing(store, slots)
    body = lambda indent=0: asyncio.run(listing.body(indent))  # noqa: E731

    first = body()
    assert first == JSONResponse([loop_json(lp) for lp in store.loops]).body  # as every answer is encoded
    assert body() is first and store.reads == 1

    store.loops.pop()  # committed by another connection: the data_version moves
    store.version += 1
    assert [lp["name"] for lp in json.loads(body())] == ["a"] and store.reads == 2

    slots["a"] = (7, None)  # a run started: rendered again, not read again
    assert json.loads(body())[0]["running_run_id"] == 7 and store.reads == 2
    slots["a"] = (7, T0)  # waiting for a reset
    assert json.loads(body())[0]["waiting_until"] == "2026-11-30T09:00:00.000+00:00"
    del slots["a"]
    assert json.loads(body())[0]["running_run_id"] is None and store.reads == 2


def test_laid_out_as_the_cli_prints_json() -> None:
    store = _Store()
    pretty = asyncio.run(_listing(store, {}).body(2))
    assert pretty == json.dumps([loop_json(lp) for lp in store.loops], indent=2).encode()
    assert b"\\u00e9" in pretty  # escaped, as `json.dumps` prints it by default
