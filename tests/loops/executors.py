"""An Executor over a real store, for the command backend (no profile needed), and a loop in that store, as the
executor tests build them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fleetd.loops.executor import Executor
from fleetd.records.loop import Loop, Schedule
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc


class NoProfiles:
    async def known_secrets(self) -> list[str]:
        return []


def command_executor(
    db: Database, tmp_path: Path, tag: str, clock: Callable[[], datetime] = now_utc, events: EventLog | None = None
) -> Executor:  # fmt: skip
    """Run logs and TMPDIRs under `tmp_path`, processes tagged `tag`, a short kill grace; runs' events into `events`."""
    return Executor(RunStore(db, events), AttemptStore(db), NoProfiles(), log_path=lambda i: tmp_path / f"{i}.log",  # type: ignore[arg-type]
                    tmp_root=tmp_path / "tmp", tag_prefix=tag, clock=clock, local_tz=ZoneInfo("UTC"),
                    kill_grace=0.5)  # fmt: skip


async def added_loop(
    db: Database, name: str, now: datetime, *, every: str = "1h", backend: str = "command", **fields: Any
) -> Loop:
    """A loop firing every `every`, defined at `now`, stored."""
    loop = Loop(name=name, schedule=Schedule("every", every, "UTC"), backend=backend, created_at=now, updated_at=now,
                **fields)  # fmt: skip
    await LoopStore(db).insert(loop)
    return loop
