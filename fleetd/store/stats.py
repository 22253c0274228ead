"""The figures of `fleetd stats`: runs, attempts, success / fallback / escalation, durations, tokens, cost.

What is counted, and where (the README repeats this for users):
- The window holds what *started* at or after `since`: attempts by their own start, runs by theirs.
  Work counts once it has ended: an attempt when it finishes, a run when it reaches a final status
  (`running` and `waiting` runs are not counted yet; `skipped` runs have no attempts and never are).
- Attempt figures (attempts, duration percentiles, tokens by kind, cost) belong to the group of the
  attempt itself: its backend, profile, model, chain step, role, and its run's loop.
- A run is counted twice, each time in exactly one group: it *starts* in the group of its first
  attempt and *ends* in the group of its last `work` attempt (the attempt whose output decided it: a
  later reviewer's attempt judges that output, it does not make it). So `runs_started`, `fallbacks`
  and `escalations` say what happened to runs that began in a group ("how often did this backend,
  as the first choice, need another candidate"), `runs_ended` and `succeeded` where runs were
  decided ("how often did the last worker succeed"). A run that fell back from backend A to B is
  one start in A and one end in B. Every figure is therefore additive: the groups of a table sum to
  its total, and the totals do not depend on `by`.
- Fallback: the run's work attempts used more than one candidate, a candidate being one (chain step,
  profile); retrying the same profile is not a fallback. Escalation: its work attempts span more than
  one chain step (so every escalation is also a fallback).
- Rates: success = succeeded / runs_ended; fallback = fallbacks / runs_started; escalation =
  escalations / runs_started; cost per success = the group's whole cost (failed attempts included:
  that is what a success cost) / succeeded. A rate with a zero denominator is None.
- Percentiles are nearest-rank over the attempts' durations rounded to two significant digits (36.4 s
  is kept as 36 s). Rounding is monotonic, so each is the exact percentile, rounded the same way.

How it stays fast: triggers (schema migration 6) add each finished attempt and run to rollups keyed
by (period, loop, backend, profile, model, step, role), one per UTC day (`stats_daily`) and one per
hour (`stats_hourly`): counts, sums, and a histogram of the rounded durations. A query reads whole
days after `since` from the daily rollup, the whole hours left of its first day from the hourly one,
and only its first, partial hour from the raw rows, through the same views the triggers use
(`stats_attempt_facts`, `stats_run_facts`), so each part counts alike. Its cost grows with days times
groups, not with runs. The histograms are merged here, in Python: SQLite groups by sorting, and
sorting the (group, duration) pairs of a month cost more than the whole budget of a second.

The rollups' histograms are many small JSON texts (a month at a million attempts: ~8,600 of them, half a
million entries), and decoding and merging them took ~400 ms a query. So a StatsStore keeps each whole
period's histograms, merged by group, between queries (`rollups.PeriodHistograms`), and reads again only the periods
whose attempt count moved; what it reads is decoded and merged, and the percentiles ranked, in a worker thread,
so the event loop goes on firing and answering meanwhile. Invariant (the triggers of schema.py keep it): a rollup
row's `durations` change only as its `attempts` grow, so a period with the same attempt count (under the same
`loop` filter) has the same histograms.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetd.errors import InvalidArgument
from fleetd.store.db import Database
from fleetd.store.rollups import (
    Histogram,
    Period,
    PeriodHistograms,
    merged_histograms,
    percentile,
    whole_periods,
    window,
)
from fleetd.store.schema import PRUNED_ATTEMPT_COLUMNS, PRUNED_RUN_COLUMNS

GROUP_KEYS = ("backend", "profile", "model", "loop", "step", "role")
DEFAULT_BY = ("backend",)
DEFAULT_SINCE = "7d"

_SUMS = ("attempts", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd",
         "runs_started", "fallbacks", "escalations", "runs_ended", "succeeded")  # fmt: skip
_TUPLE = ("loop", "backend", "profile", "model", "step", "role")
_PeriodHistograms = PeriodHistograms  # its name here before store/rollups.py shared it


@dataclass
class StatsRow:
    """One group's figures (`group` maps each `by` key to its value; empty for the total)."""

    group: dict[str, Any]
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    runs_started: int = 0
    fallbacks: int = 0
    escalations: int = 0
    runs_ended: int = 0
    succeeded: int = 0
    p50_duration_ms: int | None = None
    p95_duration_ms: int | None = None

    @property
    def success_rate(self) -> float | None:
        return _ratio(self.succeeded, self.runs_ended)

    @property
    def fallback_rate(self) -> float | None:
        return _ratio(self.fallbacks, self.runs_started)

    @property
    def escalation_rate(self) -> float | None:
        return _ratio(self.escalations, self.runs_started)

    @property
    def cost_per_success(self) -> float | None:
        return _ratio(self.cost_usd, self.succeeded)


@dataclass
class Stats:
    since: datetime
    by: tuple[str, ...]
    loop: str | None
    groups: list[StatsRow] = field(default_factory=list)
    total: StatsRow = field(default_factory=lambda: StatsRow({}))


def parse_by(text: str | None) -> tuple[str, ...]:
    """`backend` or `loop,step` → the group keys; an unknown or repeated key is an InvalidArgument."""
    if text is None:
        return DEFAULT_BY
    keys = tuple(k.strip() for k in text.split(","))
    for key in keys:
        if key not in GROUP_KEYS:
            raise InvalidArgument(f"unknown --by {key!r} (one of: {', '.join(GROUP_KEYS)}; or two, e.g. loop,step)")
    if len(set(keys)) != len(keys):
        raise InvalidArgument(f"--by {text!r} names a key twice")
    if len(keys) > 2:
        raise InvalidArgument(f"--by {text!r}: at most two keys")
    return keys


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _queries(by: tuple[str, ...], loop: str | None) -> tuple[str, str, str, str]:
    """The figures per group; each whole period's attempt count; the duration histograms of the periods named
    (JSON arrays :days and :hours); the raw rows' durations."""
    keys = ", ".join(by)
    tuple_ = ", ".join(_TUPLE)
    only = " AND loop = :loop" if loop is not None else ""
    daily = f"stats_daily WHERE period > :day{only}"
    hourly = f"stats_hourly WHERE period > :hour AND period < :next_day{only}"
    raw = f"started_at >= :since AND started_at < :next_hour{only}"
    zeros = ", ".join(["0"] * 6)
    # The raw rows: those still in runs and attempts, and the facts runs pruned by count left (store/retention.py).
    raw_attempts = (
        f"SELECT {PRUNED_ATTEMPT_COLUMNS} FROM stats_attempt_facts WHERE {raw} "
        f"UNION ALL SELECT {PRUNED_ATTEMPT_COLUMNS} FROM stats_pruned_attempts WHERE {raw}"
    )
    figures = f"""
        WITH raw_runs AS (SELECT {PRUNED_RUN_COLUMNS} FROM stats_run_facts WHERE {raw}
                          UNION ALL SELECT {PRUNED_RUN_COLUMNS} FROM stats_pruned_runs WHERE {raw})
        SELECT {keys}, {", ".join(f"total({s})" for s in _SUMS)} FROM (
            SELECT {tuple_}, {", ".join(_SUMS)} FROM {daily}
            UNION ALL
            SELECT {tuple_}, {", ".join(_SUMS)} FROM {hourly}
            UNION ALL
            SELECT {tuple_}, 1, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,
                   0, 0, 0, 0, 0 FROM ({raw_attempts})
            UNION ALL
            SELECT loop, first_backend, first_profile, first_model, first_step, first_role, {zeros},
                   1, fallback, escalated, 0, 0 FROM raw_runs
            UNION ALL
            SELECT loop, last_backend, last_profile, last_model, last_step, last_role, {zeros},
                   0, 0, 0, 1, succeeded FROM raw_runs
        ) GROUP BY {keys} ORDER BY {keys}
    """
    histograms = (
        f"SELECT 'd', period, {keys}, durations FROM stats_daily WHERE period IN (SELECT value FROM json_each(:days))"
        f"{only} UNION ALL SELECT 'h', period, {keys}, durations FROM stats_hourly "
        f"WHERE period IN (SELECT value FROM json_each(:hours)){only}"
    )
    raw_durations = (
        f"SELECT {keys}, duration_ms, count(*) FROM ({raw_attempts}) WHERE duration_ms IS NOT NULL "
        f"GROUP BY {keys}, duration_ms"
    )
    # In the primary key's order (period first): no sort.
    periods = (
        f"SELECT 'd', period, sum(attempts) FROM {daily} GROUP BY period "
        f"UNION ALL SELECT 'h', period, sum(attempts) FROM {hourly} GROUP BY period"
    )
    return figures, periods, histograms, raw_durations


def _rank(
    result: Stats,
    rows: dict[tuple[Any, ...], StatsRow],
    whole: dict[Period, dict[tuple[Any, ...], Histogram]],
    raw: list[Any],
    n: int,
) -> None:
    """The percentiles of each group of `rows` (the groups of `result`) and the total's figures, from the whole
    periods' histograms and the raw rows' durations. Reads the histograms without changing them (they may be
    kept between queries) and touches nothing else but its arguments: it runs in a worker thread."""
    # A group in a histogram but not in the figures ended between the two reads: counted next time.
    merged = merged_histograms(whole, raw, n, rows)
    total, overall = result.total, dict[int, int]()
    for key, row in rows.items():
        for name in _SUMS:
            setattr(total, name, getattr(total, name) + getattr(row, name))
        hist = {int(duration): count for duration, count in merged[key].items()}
        row.p50_duration_ms, row.p95_duration_ms = percentile(hist, 50), percentile(hist, 95)
        for duration, count in hist.items():
            overall[duration] = overall.get(duration, 0) + count
    total.p50_duration_ms, total.p95_duration_ms = percentile(overall, 50), percentile(overall, 95)


class StatsStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._periods = PeriodHistograms()

    async def stats(self, *, since: datetime, by: tuple[str, ...] = DEFAULT_BY, loop: str | None = None) -> Stats:
        """The figures per group of `by` (distinct keys from GROUP_KEYS, checked by the caller) and in total."""
        assert by and len(set(by)) == len(by) and all(k in GROUP_KEYS for k in by), by
        since = since.astimezone(UTC)
        params: dict[str, Any] = {**window(since), "loop": loop}
        figures, periods, histograms, raw_durations = _queries(by, loop)
        n = len(by)
        rows: dict[tuple[Any, ...], StatsRow] = {}
        for r in await self.db.fetchall(figures, params):  # type: ignore[arg-type]
            key = tuple(r[:n])
            row = StatsRow({k: None if k == "model" and v == "" else v for k, v in zip(by, key, strict=True)})
            for name, value in zip(_SUMS, r[n:], strict=True):
                setattr(row, name, value if name == "cost_usd" else int(value))
            rows[key] = row
        whole = await self._whole_periods(by, loop, periods, histograms, params)
        raw = await self.db.fetchall(raw_durations, params)  # type: ignore[arg-type]
        result = Stats(since=since, by=by, loop=loop, groups=list(rows.values()))
        # Pure Python over what was read: up to ~a million entries (`--by loop` over a month, more periods than are
        # kept between queries), so in a worker thread too.
        await asyncio.to_thread(_rank, result, rows, whole, raw, n)
        return result

    async def _whole_periods(
        self, by: tuple[str, ...], loop: str | None, periods: str, histograms: str, params: dict[str, Any]
    ) -> dict[Period, dict[tuple[Any, ...], Histogram]]:
        """The histograms of the window's whole days and hours, merged by group (rollups.whole_periods)."""
        return await whole_periods(self.db, self._periods, (by, loop), len(by), periods, histograms, params)
