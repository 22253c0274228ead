"""Which profile a backend uses, and in which order a run tries its pool. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleetd.records.usage import ProfileStatus

TIER_ORDER = {"local": 0, "subscription": 1, "metered": 2}
USABLE = ("available", "near_limit")


@dataclass(frozen=True)
class Standing:
    """A profile as the router sees it: its configured position, tier, state and headroom."""

    name: str
    position: int
    tier: str
    status: ProfileStatus
    headroom: float  # 0..1, after reservations for attempts in flight


def choose_active(standings: list[Standing], current: str | None, pinned: bool) -> tuple[str | None, str]:
    """Keep the current profile while it is usable (no flapping; a pin holds until exhaustion);
    otherwise the available profile with the most headroom, ties by configured order."""
    by_name = {s.name: s for s in standings}
    cur = by_name.get(current or "")
    if cur is not None and pinned and cur.status.state in USABLE:
        return cur.name, "pinned"
    if cur is not None and not pinned and cur.status.state == "available":
        return cur.name, "still available"
    for states in (("available",), ("near_limit",)):
        pool = [s for s in standings if s.status.state in states]
        if pool:
            best = max(pool, key=lambda s: (s.headroom, -s.position))
            why = f"{cur.name} is {cur.status.state}" if cur is not None else "no active profile"
            if pinned and cur is not None:
                why = f"pinned {cur.name} is {cur.status.state}"
            return best.name, f"{why}; {best.name} has the most headroom ({best.headroom:.0%})"
    return None, "no profile has headroom"


def attempt_order(standings: list[Standing]) -> list[Standing]:
    """A run's candidates: usable profiles by tier (local → subscription → metered), then
    available before near_limit, then headroom, then configured order."""
    usable = [s for s in standings if s.status.state in USABLE]
    return sorted(
        usable, key=lambda s: (TIER_ORDER.get(s.tier, 9), s.status.state != "available", -s.headroom, s.position)
    )


def earliest_reset(standings: list[Standing], now: datetime) -> datetime | None:
    """When the first exhausted profile comes back; None when none will by itself."""
    times = [s.status.exhausted_until for s in standings if s.status.state == "exhausted" and s.status.exhausted_until]
    return min(times) if times else None
