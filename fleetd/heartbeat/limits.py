"""Per-profile limits: `5h=4000000tok`, `7d=40Mtok`, `24h=500req`, `30d=50usd`. Pure."""

from __future__ import annotations

import re
from decimal import Decimal

from fleetd.errors import InvalidArgument, shown
from fleetd.records.profile import Limit
from fleetd.timefmt import DurationError, parse_duration

_LIMIT = re.compile(r"^\s*([0-9][0-9a-z.]*)\s*=\s*([0-9]+(?:\.[0-9]+)?)([kKmM]?)\s*(tok|req|usd)\s*$")
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000}
# A quadrillion tokens, requests or dollars: no real quota comes near, and every sum and share of
# it stays an exact, finite float.
MAX_LIMIT_AMOUNT = 1e15


def parse_limit(text: str) -> Limit:
    m = _LIMIT.match(text)
    if not m:
        raise InvalidArgument(
            f"invalid --limit {shown(text)}: use WINDOW=AMOUNT+UNIT, e.g. 5h=4000000tok, 24h=500req, 30d=50usd"
        )
    window, number, scale, unit = m.groups()
    try:
        window_s = parse_duration(window)
    except DurationError as e:
        raise InvalidArgument(f"invalid --limit {shown(text)}: {e}") from None
    exact = Decimal(number) * _SCALE[scale.lower()]  # in floats 4.1M is 4,099,999.9999999995
    amount = float(exact)
    if amount <= 0:
        raise InvalidArgument(f"invalid --limit {shown(text)}: the amount must be positive")
    if amount > MAX_LIMIT_AMOUNT:  # also catches inf, which is what 400 nines become
        raise InvalidArgument(f"invalid --limit {shown(text)}: the amount must be at most {MAX_LIMIT_AMOUNT:,.0f}")
    if unit in ("req", "tok") and exact != int(exact):  # `1d=0.5req`: no call is half a request
        raise InvalidArgument(f"invalid --limit {shown(text)}: {unit} is counted in whole numbers")
    return Limit(window_s, amount, unit)  # type: ignore[arg-type]


def parse_limits(items: list[str]) -> list[Limit]:
    limits = [parse_limit(item) for item in items]
    seen: set[tuple[float, str]] = set()
    for limit in limits:
        key = (limit.window_s, limit.unit)
        if key in seen:
            raise InvalidArgument(f"two --limit values for the same window and unit: {limit.label} {limit.unit}")
        seen.add(key)
    return limits
