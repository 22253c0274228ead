"""A profile's circuit breaker. Pure: every transition takes the time as an argument.

closed --N consecutive transient/unavailable failures--> open (for a cooldown)
open --cooldown over--> half_open: exactly one probe attempt may start
half_open --probe succeeds (or the provider answers at all)--> closed
half_open --probe fails transiently--> open again, the cooldown doubled (capped)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from fleetd.records.circuit import Circuit

# Failures that say the provider (or the way to it) is not working, as opposed to this task or this login.
BREAKER_CLASSES = frozenset({"transient", "unavailable"})


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int = 3  # consecutive failures that open it
    cooldown_s: float = 60.0  # the first open period
    cooldown_cap_s: float = 1800.0  # doubling stops here


def after_attempt(circuit: Circuit, error_class: str | None, succeeded: bool, now: datetime,
                  policy: BreakerPolicy = BreakerPolicy()) -> Circuit:  # fmt: skip
    """The breaker after one attempt on its profile ended."""
    circuit = circuit.current(now)
    if succeeded or (error_class is not None and error_class not in BREAKER_CLASSES):
        # The provider answered: whatever went wrong was not the provider being down.
        return Circuit()  # * -> closed
    if error_class not in BREAKER_CLASSES:
        return circuit
    if circuit.state == "half_open":
        cooldown = min(policy.cooldown_cap_s, max(policy.cooldown_s, circuit.cooldown_s * 2))
        return Circuit("open", 0, now + timedelta(seconds=cooldown), cooldown)  # half_open -> open, doubled
    failures = circuit.failures + 1
    if circuit.state == "closed" and failures >= policy.threshold:
        return Circuit("open", 0, now + timedelta(seconds=policy.cooldown_s), policy.cooldown_s)  # closed -> open
    return replace(circuit, failures=failures)
