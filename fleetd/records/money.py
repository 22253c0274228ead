"""Money as fleetd writes it in text (JSON keeps the numbers): a leaf of the records, shared by the daemon's
messages and the CLI's tables, so that a spend beside its cap reads the same everywhere; where a daily cost's
24 h start; and whether a cap has room (`cap_taken`, one rule for a loop's and a profile's)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

DAY = timedelta(days=1)


# Usage within a billionth of a limit is at it: the same costs summed in another order (the Ledger adds and takes away
# as records come and go) differ in their last bits, and 4.499999999999999 against 4.5 moved when a 3 USD window eased
# by a whole record. One tolerance for every limit and cap, both ways:
def reaches(used: float, limit: float) -> bool:
    """`used` is at `limit` or over it: no room left."""
    return used >= limit * (1 - 1e-9)


def within(used: float, limit: float) -> bool:
    """`used` does not pass `limit`: what is about to be used still fits."""
    return used <= limit * (1 + 1e-9)


def cap_taken(spent: float, cap: float, each: float | None, under_way: int = 0) -> bool:
    """Whether a daily cost cap has no room for one more (attempt, run) at `each`, beside `under_way` more at it: spent,
    or it would be passed (`each` None: not known, only what is spent counts). One that alone costs more than the cap
    is let in when nothing else is spent: held to that, it would never run again."""
    if reaches(spent, cap):
        return True
    if each is None:
        return False
    return not within(spent + (under_way + 1) * min(each, cap), cap)


def cap_room_at(costs: Sequence[tuple[datetime, float]], cap: float, each: float | None) -> datetime | None:
    """When a daily cost cap `cap_taken` says is taken has room again for one more at `each`, should nothing more be
    spent: 24 h after the cost (of `costs`, the window's, oldest first) whose leaving the window makes that room.
    None: there is room now."""
    left = sum(cost for _, cost in costs)
    if not cap_taken(left, cap, each):
        return None
    for at, cost in costs:
        left -= cost
        if not cap_taken(left, cap, each):
            return at + DAY
    return costs[-1][0] + DAY if costs else None  # (with every cost gone nothing is spent: not reached)


def day_since(now: datetime, added: datetime | None) -> datetime:
    """Where the rolling 24 h of a daily cost (a loop's, a profile's, a gateway key's) start: not before its owner
    was added. Spend is recorded by name, and one added under a removed one's name was refused with its spend."""
    return now - DAY if added is None else max(now - DAY, added)


def usd(amount: float) -> str:
    """`$2.50`; an amount under a cent with its first two significant digits (`$0.0018`), not `$0.00`."""
    if amount == 0 or abs(amount) >= 0.01:
        return f"${amount:,.2f}"
    digits = 1 - math.floor(math.log10(abs(amount)))
    return f"${amount:.{digits}f}".rstrip("0")


def usd_apart(spent: float, cap: float) -> tuple[str, str]:
    """`usd` of a spend and its cap, the spend with the digits that tell it from the cap when rounding would not:
    "$0.03 of $0.03" was written at $0.0276 spent ("$0.028 of $0.03")."""
    shown, cap_shown = usd(spent), usd(cap)
    if shown != cap_shown or abs(spent - cap) <= abs(cap) * 1e-9:
        return shown, cap_shown
    for digits in range(3, 10):
        closer, cap_closer = f"{spent:,.{digits}f}", f"{cap:,.{digits}f}"
        if closer != cap_closer:  # both at these digits, or each rounded its own way reads in the wrong order
            return f"${_cents_at_least(closer)}", f"${_cents_at_least(cap_closer)}"
    return shown, cap_shown


def _cents_at_least(amount: str) -> str:
    """`amount` (digits after its point) without trailing zeros past the cents: 0.0250 → 0.025, 10.000 → 10.00."""
    whole, _, fraction = amount.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"
