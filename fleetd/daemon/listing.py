"""`GET /v1/loops`, the answer behind `fleetd loop list`: rendered once per change, not once per request.

Building it reads every loop and its last run, makes their views and encodes them: ~5 ms for 100 loops,
most of a `loop list`. What it shows changes only when a write is committed (a loop added, edited,
paused or fired; a run recorded) or when the executor's slots change (a run starts, ends or waits for a
reset: in memory). So the bytes are kept with the database's `data_version` and the loops' slots, and
sent again while both are what they were.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from fleetd.daemon.views import loop_json
from fleetd.records.loop import Loop
from fleetd.records.run import Run
from fleetd.store.db import Database
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore

Slot = tuple[int | None, datetime | None]  # the loop's running run, and the reset it waits for


class _Read(NamedTuple):
    version: int  # the database's data_version, read before the rows
    loops: list[Loop]
    last: dict[str, Run]  # each loop's last run


class LoopListing:
    def __init__(self, db: Database, loops: LoopStore, runs: RunStore, running: Callable[[Loop], Slot]) -> None:
        self._db = db
        self._loops = loops
        self._runs = runs
        self._running = running
        self._read: _Read | None = None
        # indent -> the slots it was rendered with and the encoded answer, for the rows of `_read`: the
        # latest only (for 10,000 loops an answer is megabytes).
        self._rendered: dict[int, tuple[tuple[Slot, ...], bytes]] = {}

    async def body(self, indent: int = 0) -> bytes:
        """The answer's JSON: compact (indent 0, as every answer), or laid out with `indent`, the way
        `fleetd … --json` prints it (json.dumps' own layout), so the CLI can print it as it comes."""
        # Invariant: the version is read before the rows. A commit landing between the two gives rows
        # newer than the version, never older, and the next request (seeing another version) reads again.
        version = await self._db.data_version()
        read = self._read
        if read is None or read.version != version:
            read = _Read(version, await self._loops.list(), await self._runs.last_for_loops())
            self._read, self._rendered = read, {}
        slots = tuple(self._running(lp) for lp in read.loops)
        rendered = self._rendered.get(indent)
        if rendered is not None and rendered[0] == slots:
            return rendered[1]
        views = [loop_json(lp, read.last.get(lp.name), *slot) for lp, slot in zip(read.loops, slots, strict=True)]
        body = _encode(views, indent)
        if read is self._read:  # not replaced by a newer read meanwhile
            self._rendered[indent] = (slots, body)
        return body


def _encode(views: list[dict[str, object]], indent: int) -> bytes:
    if indent:
        return json.dumps(views, indent=indent).encode()
    # What starlette's JSONResponse sends, as every other answer.
    return json.dumps(views, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
