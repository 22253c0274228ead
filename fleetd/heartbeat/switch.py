"""Which profile is a backend's active one. Pure. (The order a run tries candidates in is the router's.)"""

from __future__ import annotations

from dataclasses import dataclass

from fleetd.records.profile import TIERS
from fleetd.records.usage import ProfileStatus

USABLE = ("available", "near_limit")
_TIER_RANK = {tier: rank for rank, tier in enumerate(TIERS)}
CIRCUIT_OPEN = "out: its circuit is open"  # the reason on a standing whose circuit breaker is open


@dataclass(frozen=True)
class Standing:
    """A profile as the router sees it: its configured position, tier, state and headroom."""

    name: str
    position: int
    tier: str
    status: ProfileStatus
    headroom: float  # 0..1, after reservations for attempts in flight


def _rank(s: Standing) -> int:
    return _TIER_RANK.get(s.tier, len(TIERS))


def _preference(s: Standing) -> tuple[int, float, int]:
    """The cheaper tier (local, then subscription, then metered: the router's order), then the most headroom, then
    the configured order (a metered key won a tie over a subscription login by its name). Higher is better."""
    return -_rank(s), s.headroom, -s.position


def choose_active(standings: list[Standing], current: str | None, pinned: bool) -> tuple[str | None, str]:
    """Keep the current profile while it is usable (no flapping; a pin holds until exhaustion) and no cheaper
    tier has an available profile; otherwise the cheapest tier's available profile with the most headroom, then
    by configured order. Tier first, as the router's order: a metered key without limits (always 100 %) took over
    from a subscription with room, and kept every run billed after the one it stood in for had reset."""
    by_name = {s.name: s for s in standings}
    cur = by_name.get(current or "")
    if cur is not None and pinned and cur.status.state in USABLE:
        return cur.name, "pinned"
    if cur is not None and not pinned and cur.status.state == "available":
        cheaper = [s for s in standings if s.status.state == "available" and _rank(s) < _rank(cur)]
        if not cheaper:
            return cur.name, "still available"
        best = max(cheaper, key=_preference)
        return best.name, f"{best.name} ({best.tier}) is available: cheaper than {cur.name} ({cur.tier})"
    for states in (("available",), ("near_limit",)):
        pool = [s for s in standings if s.status.state in states]
        if pool:
            best = max(pool, key=_preference)
            what = cur.status.reason if cur is not None and cur.status.reason == CIRCUIT_OPEN else None
            why = f"{cur.name} is {what or cur.status.state}" if cur is not None else "no active profile"
            if pinned and cur is not None:
                why = f"pinned {why}"
            room = f"{best.headroom:.0%}"
            return best.name, f"{why}; {best.name} has the most headroom ({room}) of the cheapest tier with room"
    return None, "no profile has headroom"
