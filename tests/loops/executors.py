"""An Executor over a real store, for the command backend (no profile needed), as the executor tests build it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from fleetd.loops.executor import Executor
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc


class NoProfiles:
    async def known_secrets(self) -> list[str]:
        return []


def command_executor(
    db: Database, tmp_path: Path, tag: str, clock: Callable[[], datetime] = now_utc
) -> Executor:  # fmt: skip
    """Run logs and TMPDIRs under `tmp_path`, processes tagged `tag`, a short kill grace."""
    return Executor(RunStore(db), AttemptStore(db), NoProfiles(), log_path=lambda i: tmp_path / f"{i}.log",  # type: ignore[arg-type]
                    tmp_root=tmp_path / "tmp", tag_prefix=tag, clock=clock, local_tz=ZoneInfo("UTC"),
                    kill_grace=0.5)  # fmt: skip
