"""The circuit breaker's edges, with the time passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetd.records.circuit import Circuit
from fleetd.routing.circuit import BreakerPolicy, after_attempt

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
POLICY = BreakerPolicy(threshold=3, cooldown_s=60, cooldown_cap_s=200)


def fails(circuit: Circuit, n: int, cls: str = "transient", at: datetime = T0) -> Circuit:
    for _ in range(n):
        circuit = after_attempt(circuit, cls, False, at, POLICY)
    return circuit


@pytest.mark.parametrize("cls", ["transient", "unavailable"])
def test_n_consecutive_provider_failures_open_it(cls: str) -> None:
    assert fails(Circuit(), 2, cls).state == "closed"
    opened = fails(Circuit(), 3, cls)
    assert opened.state == "open" and opened.open_until == T0 + timedelta(seconds=60)


@pytest.mark.parametrize("cls", ["rate_limited", "auth", "quota", "contract"])
def test_a_provider_that_answers_resets_the_count(cls: str) -> None:
    circuit = after_attempt(fails(Circuit(), 2), cls, False, T0, POLICY)
    assert circuit == Circuit()
    assert fails(circuit, 2).state == "closed"


def test_half_open_after_the_cooldown_closes_on_a_good_probe_and_doubles_on_a_bad_one() -> None:
    opened = fails(Circuit(), 3)
    assert opened.current(T0 + timedelta(seconds=59)).state == "open"
    assert opened.current(T0 + timedelta(seconds=60)).state == "half_open"
    later = T0 + timedelta(seconds=61)
    assert after_attempt(opened, None, True, later, POLICY) == Circuit()
    again = after_attempt(opened, "transient", False, later, POLICY)
    assert again.state == "open" and again.cooldown_s == 120 and again.open_until == later + timedelta(seconds=120)
    third = after_attempt(again, "transient", False, again.open_until, POLICY)  # type: ignore[arg-type]
    assert third.cooldown_s == 200  # capped
