"""A profile's circuit breaker, as stored. routing/circuit.py holds the transitions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

CircuitState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Circuit:
    state: CircuitState = "closed"
    failures: int = 0  # consecutive, while closed
    open_until: datetime | None = None
    cooldown_s: float = 0.0  # the open period last used (doubles while probes fail)

    def current(self, now: datetime) -> Circuit:
        """What it is at `now`: an open circuit whose cooldown is over is half-open."""
        if self.state == "open" and self.open_until is not None and now >= self.open_until:
            return replace(self, state="half_open")  # open -> half_open
        return self
