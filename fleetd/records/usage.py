"""What the heartbeat knows of a profile's use: consumption records and the profile's judged state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fleetd.records.result import WindowState

# heartbeat/state.py holds the transitions between these.
State = Literal["available", "near_limit", "exhausted", "parked", "disabled"]


@dataclass(frozen=True)
class ProfileStatus:
    state: State = "available"
    exhausted_until: datetime | None = None
    reason: str = ""
    unconfirmed: bool = False  # back after a reset, not yet proven by a successful attempt
    # Exhausted by fleetd's own count against the profile's --limit (not by what the provider said): judged
    # again at every beat, so a limit raised or cleared frees the profile at once.
    counted: bool = False


@dataclass
class StoredState:
    status: ProfileStatus
    reported: list[WindowState] = field(default_factory=list)
    offsets: dict[str, Any] = field(default_factory=dict)
    garbled_lines: int = 0


@dataclass(frozen=True)
class Consumption:
    """One request's use of a profile: from fleetd's own attempt or the agent's own records."""

    at: datetime
    tokens: int  # input + output + cache read + cache write
    requests: int = 1
    cost_usd: float = 0.0

    def amount(self, unit: str) -> float:
        return {"tok": self.tokens, "req": self.requests, "usd": self.cost_usd}[unit]
