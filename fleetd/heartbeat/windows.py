"""Rolling-window arithmetic over consumption records. Pure: the clock is an argument."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from fleetd.records.profile import Limit
from fleetd.records.usage import Consumption


@dataclass(frozen=True)
class WindowUsage:
    limit: Limit
    used: float
    # When the oldest consumption in the window falls out of it: the earliest moment usage drops.
    eases_at: datetime | None

    @property
    def fraction(self) -> float:
        return self.used / self.limit.amount

    @property
    def exceeded(self) -> bool:
        return self.used >= self.limit.amount

    def full_until(self, records: list[Consumption], now: datetime) -> datetime | None:
        """When usage will be back under the limit if nothing more is used: drop the oldest records
        until the sum fits."""
        if not self.exceeded:
            return None
        start = now - timedelta(seconds=self.limit.window_s)
        inside = sorted((c for c in records if c.at > start), key=lambda c: c.at)
        used = self.used
        for c in inside:
            used -= c.amount(self.limit.unit)
            if used < self.limit.amount:
                return c.at + timedelta(seconds=self.limit.window_s)
        return now


def window_usage(records: Iterable[Consumption], limit: Limit, now: datetime) -> WindowUsage:
    start = now - timedelta(seconds=limit.window_s)
    used, oldest = 0.0, None
    for c in records:
        if start < c.at <= now:
            used += c.amount(limit.unit)
            oldest = c.at if oldest is None or c.at < oldest else oldest
    eases = oldest + timedelta(seconds=limit.window_s) if oldest is not None else None
    return WindowUsage(limit, used, eases)


def headroom(usages: list[WindowUsage]) -> float:
    """The smallest remaining fraction over all windows; 1.0 when the profile has no limits."""
    if not usages:
        return 1.0
    return max(0.0, min(1.0 - u.fraction for u in usages))
