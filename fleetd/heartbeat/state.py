"""The profile state machine. Pure: every transition takes the time as an argument.

available → near_limit (≥ threshold of any window) → exhausted (a limit hit, or the backend said
rate_limited; until its reset) → available again after the reset, but `unconfirmed` until the next
successful attempt; parked (out of quota / credit: billing, not a rate limit) until re-enabled by
hand or until the reset the backend gave; disabled (auth failure, or by hand) until re-enabled.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import NamedTuple

from fleetd.heartbeat.windows import WindowUsage, reaches, within
from fleetd.records.money import cap_room_at, cap_taken, usd, usd_apart
from fleetd.records.profile import Limit
from fleetd.records.result import WindowState
from fleetd.records.usage import Consumption, ProfileStatus

# A rate limit without a reset time: look again then (a profile's --default-reset overrides it). A
# key's per-minute limits clear in about a minute; subscription windows come with their reset time.
UNKNOWN_RESET_BACKOFF = timedelta(seconds=60)


def evaluate(
    prev: ProfileStatus,
    usages: list[WindowUsage],
    full_until: list[datetime | None],
    reported: list[WindowState],
    now: datetime,
    near: float,
) -> ProfileStatus:
    """The periodic judgement from window usage. Reported windows (the backend's own numbers) win
    over fleetd's estimate; a reset time the backend gave is never shortened by an estimate."""
    if prev.state == "disabled":
        return prev
    if prev.state == "parked" and (prev.exhausted_until is None or now < prev.exhausted_until):
        return prev
    if (
        prev.state == "exhausted"
        and not prev.counted
        and prev.exhausted_until is not None
        and now < prev.exhausted_until
    ):
        return prev
    came_back = prev.state == "exhausted"
    live = _live(reported, now)
    for w in live:
        if w.used_percent is not None and w.used_percent >= 100:
            until = w.resets_at or now + UNKNOWN_RESET_BACKOFF
            return ProfileStatus("exhausted", until, f"{_window_name(w)} window at {w.used_percent:g}% (reported)")
    if not live:
        for usage, until in zip(usages, full_until, strict=True):
            if usage.exceeded:
                reason = f"{usage.limit.describe()}: {_amount(usage.used, usage.limit)} used"
                return ProfileStatus("exhausted", until or now + UNKNOWN_RESET_BACKOFF, reason, counted=True)
    fractions = used_fractions(usages, reported, now)
    unconfirmed = prev.unconfirmed or came_back
    if fractions and max(fractions) >= near:
        return ProfileStatus("near_limit", None, f"{max(fractions):.0%} of a window used", unconfirmed)
    return ProfileStatus("available", None, "", unconfirmed)


def _amount(used: float, limit: Limit) -> str:
    """What a window holds as its messages write it: dollars for a money limit, told apart from the limit."""
    return usd_apart(used, limit.amount)[0] if limit.unit == "usd" else f"{used:g}"


class Typical(NamedTuple):
    """What one of a profile's attempts uses, going by its recent ones (their medians)."""

    tokens: float
    cost_usd: float


def no_room_for_another(
    usages: list[WindowUsage],
    records: Callable[[int], Iterable[Consumption]],
    reported: list[WindowState],
    under_way: int,
    typical: Typical | None,
    unrecorded: Consumption | None,
    now: datetime,
    unknown_takes_rest: bool = False,
) -> tuple[str, datetime, bool] | None:
    """Whether one of the profile's own limits has no room for one more attempt beside its attempts under way and
    its finished ones not counted yet (`unrecorded`, the gateway's, written a moment later): why, and when it has
    room should nothing more start (`WindowUsage.no_room_until`). An attempt is expected to use a request, and
    the tokens and cost its recent ones used (`typical`; not known before one has ended: then a token or money
    window is judged on what is used and recorded only, or with `unknown_takes_rest` each is held at all that is left
    so that they go one at a time: the gateway's calls, which are told to come back in a second). The third value:
    the room is taken by what is pending (it may come back as that ends), not by what is recorded. None while the
    backend's reported windows judge the profile (as in `evaluate`). `records(i)`: window i's records."""
    if _live(reported, now):
        return None
    for i, usage in enumerate(usages):
        unit = usage.limit.unit
        each = (
            1.0 if unit == "req" else None if typical is None else typical.tokens if unit == "tok" else typical.cost_usd
        )
        done = unrecorded.amount(unit) if unrecorded is not None else 0.0
        if each is None and unknown_takes_rest:
            each = max(0.0, usage.limit.amount - usage.used - done)
        pending = done + under_way * (each or 0.0)
        extra = [unrecorded] if unrecorded is not None else []
        until = usage.no_room_until(partial(_joined, records, i, extra), pending, each, now)
        if until is not None:
            said = [f"{_amount(usage.used + done, usage.limit)} used"]
            if under_way:
                said.append(f"{under_way} attempt(s) under way")
            if unit != "req" and each and typical is not None:
                said.append(f"one costs about {usd(each)}" if unit == "usd" else f"one uses about {each:g}")
            busy = within(usage.used + done + min(each or 0.0, usage.limit.amount), usage.limit.amount)
            return f"{usage.limit.describe()}: {', '.join(said)}", until, busy
    return None


def cost_cap_taken(
    spent: float, cap: float, under_way: int, typical: Typical | None, unknown_takes_rest: bool = False
) -> bool:
    """Whether a profile's daily cost cap has no room for one more attempt: spent, or it would be passed by the
    attempts under way and one more, each at what its recent ones cost (not known before one has ended: then only
    what is spent counts, or with `unknown_takes_rest` one under way takes all that is left, as in
    `no_room_for_another`). One at $1.63 of a $2 cap was let in though each cost $0.82."""
    if typical is None:
        return reaches(spent, cap) or (unknown_takes_rest and under_way > 0)
    return cap_taken(spent, cap, typical.cost_usd, under_way)


def cost_room_at(costs: Sequence[tuple[datetime, float]], cap: float, typical: Typical | None) -> datetime | None:
    """When a daily cost cap that `cost_cap_taken` says is taken (nothing under way) has room again, should nothing
    more be spent: 24 h after the cost (of `costs`, the window's, oldest first) whose leaving it makes room for one more
    attempt at `typical`'s cost (unknown: for anything at all). None: there is room now."""
    return cap_room_at(costs, cap, typical.cost_usd if typical is not None else None)


def typical_of(recent: Sequence[tuple[float, float]]) -> Typical | None:
    """The medians of some attempts' (tokens, cost); None without any."""
    if not recent:
        return None
    return Typical(statistics.median(t for t, _ in recent), statistics.median(c for _, c in recent))


def _joined(records: Callable[[int], Iterable[Consumption]], i: int, extra: list[Consumption]) -> Iterable[Consumption]:
    return itertools.chain(records(i), extra)  # what is pending is as of now: after every record, oldest first


def _live(reported: list[WindowState], now: datetime) -> list[WindowState]:
    return [w for w in reported if w.resets_at is None or w.resets_at > now]


def used_fractions(usages: list[WindowUsage], reported: list[WindowState], now: datetime) -> list[float]:
    """How full each window is: the backend's reported windows while any is live (they win over fleetd's
    estimate), else fleetd's own count. What `evaluate` judges and `headroom` ranks by."""
    live = _live(reported, now)
    return [(w.used_percent or 0) / 100 for w in live] if live else [u.fraction for u in usages]


def headroom(usages: list[WindowUsage], reported: list[WindowState], now: datetime) -> float:
    """The smallest remaining share over every window (1.0 with none), by the same windows `evaluate` reads:
    a profile whose backend reports 42 % used is not ranked as if it were unused."""
    fractions = used_fractions(usages, reported, now)
    return max(0.0, min(1.0, 1.0 - max(fractions))) if fractions else 1.0


def after_attempt(
    prev: ProfileStatus,
    outcome: str,
    error_class: str | None,
    reset_at: datetime | None,
    message: str,
    now: datetime,
    default_reset: timedelta = UNKNOWN_RESET_BACKOFF,
) -> ProfileStatus:
    """What an attempt's result says about its profile."""
    if error_class == "rate_limited":
        until = reset_at if reset_at is not None and reset_at > now else now + default_reset
        return ProfileStatus("exhausted", until, f"rate limited: {message}"[:200])
    if error_class == "quota":
        until = reset_at if reset_at is not None and reset_at > now else None
        return ProfileStatus("parked", until, f"out of quota: {message}"[:200])
    if error_class == "auth":
        return ProfileStatus("disabled", None, f"auth failure: {message}"[:200])
    if outcome == "succeeded":
        if prev.state == "exhausted" and prev.counted:
            # Exhausted by fleetd's own count, not the provider's word: a call let through anyway (routed a moment
            # before) proves nothing against it. Each beat judges it again (a raised limit frees it).
            return prev
        state = prev.state if prev.state == "near_limit" else "available"
        return replace(
            prev,
            state=state,
            exhausted_until=None,
            unconfirmed=False,
            reason=prev.reason * (state != "available"),
            counted=False,
        )
    return prev


def _window_name(w: WindowState) -> str:
    if w.window_minutes:
        minutes = w.window_minutes
        return (
            f"{minutes // 1440}d"
            if minutes % 1440 == 0
            else f"{minutes // 60}h"
            if minutes % 60 == 0
            else f"{minutes}m"
        )
    return w.name or "usage"
