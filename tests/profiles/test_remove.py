"""`profile rm` over a real store: refused while anything still names the profile (a loop's pool, chain or
review step, or a gateway route), so nothing is left pointing at a profile that is gone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleetd.errors import Conflict
from fleetd.profiles.service import ProfileService
from fleetd.records.gateway import Route
from fleetd.records.loop import ChainStep, Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.store.db import Database
from fleetd.store.gateway import GatewayStore
from fleetd.store.loops import LoopStore
from fleetd.store.profiles import ProfileStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class _Heartbeat:
    in_flight: dict[str, int] = {}  # no attempt under way

    async def forget(self, profile: str) -> None:
        pass


def _loop(name: str, **kw: Any) -> Loop:
    return Loop(name=name, schedule=Schedule("every", "1h", "UTC"), backend="claude_code", prompt="x",
                created_at=T0, updated_at=T0, **kw)  # fmt: skip


STEP = ChainStep("claude_code", ("oc",))


@pytest.mark.parametrize(
    ("user", "named"),
    [
        (_loop("pooled", profiles=["oc"]), "loop pooled"),
        (_loop("chained", chain=[ChainStep("claude_code", ("other",)), STEP]), "loop chained"),
        (_loop("reviewed", review=STEP), "loop reviewed"),
        (Route("g", "chat", (STEP,), created_at=T0), "route g"),
    ],
)
def test_a_profile_still_named_anywhere_is_not_removed(tmp_path: Path, user: Loop | Route, named: str) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "f.db")
        try:
            profiles, loops, gateway = ProfileStore(db), LoopStore(db), GatewayStore(db)
            heartbeat: Any = _Heartbeat()  # remove() only asks it to forget the profile
            service = ProfileService(profiles, loops, None, heartbeat, profiles_dir=tmp_path / "profiles",  # type: ignore[arg-type]
                                     clock=lambda: T0, routes=gateway)  # fmt: skip
            oc = Profile("oc", "claude_code", "subscription", str(tmp_path / "oc"), created_at=T0, updated_at=T0)
            await profiles.insert(oc)
            if isinstance(user, Route):
                await gateway.add_route(user)
            else:
                await loops.insert(user)
            with pytest.raises(Conflict, match=named):
                await service.remove("oc")
            assert [p.name for p in await profiles.list()] == ["oc"]  # nothing removed
            if isinstance(user, Route):
                await gateway.remove_route(user.name)
            else:
                await loops.delete(user.name)
            await service.remove("oc")
            assert await profiles.list() == []
        finally:
            await db.close()

    asyncio.run(go())
