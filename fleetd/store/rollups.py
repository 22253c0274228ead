"""What the two kinds of stats share (`fleetd stats`: store/stats.py; `--source gateway`: store/gateway_stats.py):
rollups per UTC day and per hour that triggers keep, histograms of rounded milliseconds in them, and a window
cut into three parts, each read alike.

A window from `since` is read as: whole days after its first day from the daily rollup (`period > :day`), the
whole hours left of its first day from the hourly one (`period > :hour AND period < :next_day`), and only its
first, partial hour from the raw rows (`>= :since AND < :next_hour`), through the view the triggers add from.

Histograms are JSON objects {"rounded ms": count} in the rollups, merged here, in Python: SQLite groups by
sorting, and sorting the (group, value) pairs of a month costs more than the whole budget of a second. Whole
periods' merged histograms are kept between queries (`PeriodHistograms`) and read again only when the period's
count moved; the periods read (every one, at a store's first query) are decoded and merged in a worker thread,
so the event loop goes on firing and answering meanwhile. Invariant (the triggers keep it): a rollup row's
histograms change only as its count grows, so a period with the same count (under the same filters) has the same
histograms.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from fleetd.store.db import Database
from fleetd.timefmt import to_iso

Histogram = dict[str, int]  # rounded duration in ms, as text (as the JSON has it) → attempts
Period = tuple[str, str]  # ('d', '2026-11-21') or ('h', '2026-11-21T09')
Kept = dict[Period, tuple[int, dict[tuple[Any, ...], Histogram]]]  # period → (its attempts, its groups' histograms)


def window(since: datetime) -> dict[str, str]:
    """The parameters that cut the window from `since` (UTC) into whole days, whole hours and its first partial
    hour: since, day, hour, next_day, next_hour."""
    hour = since.replace(minute=0, second=0, microsecond=0)
    next_day = (hour.replace(hour=0) + timedelta(days=1)).date().isoformat()
    return {
        "since": to_iso(since),
        "day": hour.date().isoformat(),
        "hour": hour.strftime("%Y-%m-%dT%H"),
        "next_day": next_day,
        "next_hour": to_iso(hour + timedelta(hours=1)),
    }


def percentile(histogram: dict[int, int], p: float) -> int | None:
    """Nearest rank: the smallest duration with at least p % of the attempts at or below it."""
    total = sum(histogram.values())
    below = 0
    for duration in sorted(histogram):
        below += histogram[duration]
        if below * 100 >= total * p:
            return duration
    return None


def add_histograms(merged: dict[tuple[Any, ...], Histogram], groups: dict[tuple[Any, ...], Histogram]) -> None:
    """Each group's histogram in `groups` added to the same group's in `merged`."""
    time.sleep(0)  # hands the GIL over: this runs in a worker thread (see `merge_read`)
    for key, period_hist in groups.items():
        hist = merged.setdefault(key, {})
        for duration, count in period_hist.items():
            hist[duration] = hist.get(duration, 0) + count


def merged_histograms(
    whole: dict[Period, dict[tuple[Any, ...], Histogram]], raw: list[Any], n: int, keys: Iterable[tuple[Any, ...]]
) -> dict[tuple[Any, ...], Histogram]:
    """The whole periods' histograms and the raw rows' (a group of `n` keys, a rounded value, its count) merged by
    group, each of `keys` there even when empty. Reads `whole` without changing it (it may be kept between
    queries): for a worker thread."""
    merged: dict[tuple[Any, ...], Histogram] = {key: {} for key in keys}
    for groups in whole.values():
        add_histograms(merged, groups)
    for r in raw:
        hist = merged.setdefault(tuple(r[:n]), {})
        hist[str(r[n])] = hist.get(str(r[n]), 0) + r[n + 1]
    return merged


class PeriodHistograms:
    """Whole periods' histograms merged by group, for each (by, loop) asked lately, with the attempt count
    they were read at. Bounded: at most MAX_ENTRIES entries in all; past it, a (by, loop) keeps only the
    periods of its last query, and the least recently asked go first (one bigger than that alone is not kept)."""

    MAX_ENTRIES = 200_000  # ~20 MB of dicts at most; `--by backend` over 30 days at a million attempts: ~16k

    def __init__(self) -> None:
        self._kept: dict[tuple[Any, ...], tuple[int, Kept]] = {}

    def get(self, key: tuple[Any, ...]) -> Kept:
        return self._kept.get(key, (0, {}))[1]

    def put(self, key: tuple[Any, ...], asked: Kept) -> None:
        """`asked`: the periods of the query just answered; those kept from earlier queries stay while they fit."""
        _, earlier = self._kept.pop(key, (0, {}))
        for periods in ({**earlier, **asked}, asked):
            entries = sum(len(h) for _, groups in periods.values() for h in groups.values())
            if entries <= self.MAX_ENTRIES:
                self._kept[key] = (entries, periods)  # last in the dict: the most recently asked
                break
        while sum(n for n, _ in self._kept.values()) > self.MAX_ENTRIES:
            del self._kept[next(iter(self._kept))]


async def whole_periods(
    db: Database,
    kept_periods: PeriodHistograms,
    key: tuple[Any, ...],
    n: int,
    periods: str,
    histograms: str,
    params: dict[str, Any],
) -> dict[Period, dict[tuple[Any, ...], Histogram]]:
    """The histograms of the window's whole days and hours, merged by group: kept ones while their period's
    attempt count stands, the others read (and kept for the next query).

    `periods` answers (table, period, count) for each whole period ('d' or 'h'); `histograms` answers
    (table, period, group..., histogram JSON) for the periods named in JSON arrays :days and :hours, a group
    being its first `n` columns after the period; `key` names the query's filters in `kept_periods`."""
    kept = kept_periods.get(key)
    now: Kept = {}
    stale: dict[Period, int] = {}
    for table, period, attempts in await db.fetchall(periods, params):  # type: ignore[arg-type]
        seen = kept.get((table, period))
        if seen is not None and seen[0] == attempts:
            now[(table, period)] = seen
        else:
            stale[(table, period)] = attempts
    if stale:
        # Counted before reading: a period that grows meanwhile is read again next time, never kept stale.
        wanted = {
            **params,
            "days": json.dumps([p for t, p in stale if t == "d"]),
            "hours": json.dumps([p for t, p in stale if t == "h"]),
        }
        rows = await db.fetchall(histograms, wanted)  # type: ignore[arg-type]
        # Pure Python over rows already read, ~400 ms for a month at a million attempts: in a worker thread,
        # so the event loop goes on firing and answering meanwhile.
        fresh = await asyncio.to_thread(merge_read, rows, n, stale)
        now.update({p: (attempts, fresh[p]) for p, attempts in stale.items()})
    kept_periods.put(key, now)
    return {p: groups for p, (_, groups) in now.items()}


def merge_read(rows: list[Any], n: int, periods: dict[Period, int]) -> dict[Period, dict[tuple[Any, ...], Histogram]]:
    """The histograms read (rows of a `histograms` query over `periods`), decoded and merged by period and group
    of `n` keys. Touches nothing but its arguments: it runs in a worker thread."""
    merged: dict[Period, dict[tuple[Any, ...], Histogram]] = {p: {} for p in periods}
    for i, r in enumerate(rows):
        # Hands the GIL over: else each turn of the event loop (each wait in epoll gives the GIL up) waits up to
        # the switch interval (5 ms) for it, and an API call of a few dozen turns takes a hundred ms or more.
        if i % 64 == 63:
            time.sleep(0)
        hist = merged[(r[0], r[1])].setdefault(tuple(r[2 : 2 + n]), {})
        for duration, count in json.loads(r[2 + n]).items():
            hist[duration] = hist.get(duration, 0) + count
    return merged
