"""The figures of `fleetd stats --source gateway`: calls, success, fallbacks, streams, latency, tokens, cost.

What is counted (the README repeats this for users): every call logged at or after `since`, in the group of
its route, last profile, model, client key and API. A fallback is a call whose path tried more than one
profile; p50 / p95 latency and p50 time to first token are nearest-rank over the calls' milliseconds rounded
to two significant digits (36392 ms is kept as 36000; a call without a first token counts in latency only).

How it stays fast: as loop stats do (store/stats.py, store/rollups.py). A trigger (schema migration 20) adds
each call, as it is logged, to rollups keyed by (period, route, profile, model, key, api), one per UTC day
(`gateway_stats_daily`) and one per hour (`gateway_stats_hourly`): counts, sums, and histograms of the rounded
latency and time to first token. A query reads whole days and whole hours from them and only its first
partial hour from the calls, through the view the trigger adds from (`gateway_call_facts`). Retention deletes
calls, never rollups: pruned calls still count (but in a window's first partial hour).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetd.store.db import Database
from fleetd.store.rollups import Histogram, PeriodHistograms, add_histograms, percentile, whole_periods, window

# `--by` key → its column (`key` is the client key's name)
COLUMNS = {"route": "route", "profile": "profile", "model": "model", "key": "key_name", "api": "api"}
_SUMS = ("calls", "succeeded", "fallbacks", "streamed", "stream_errors", "input_tokens", "output_tokens",
         "cache_read_tokens", "cache_write_tokens", "cost_usd")  # fmt: skip
_FACTS = ("1", "succeeded", "fallback", "streamed", "stream_error", "input_tokens", "output_tokens",
          "cache_read_tokens", "cache_write_tokens", "cost_usd")  # fmt: skip
_KEY = "route, profile, model, key_name, api"
# The two histograms, each a prefix of a group's key in the kept periods: (its rollup column, its fact column).
_HISTOGRAMS = {"latency": ("latencies", "latency_ms"), "ttft": ("ttfts", "ttft_ms")}


@dataclass
class GatewayStatsRow:
    """One group's figures (`group` maps each `by` key to its value, None when the call had none; empty for the
    total)."""

    group: dict[str, Any]
    calls: int = 0
    succeeded: int = 0
    fallbacks: int = 0
    streamed: int = 0
    stream_errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    p50_latency_ms: int | None = None
    p95_latency_ms: int | None = None
    p50_ttft_ms: int | None = None


@dataclass
class GatewayStats:
    since: datetime
    by: tuple[str, ...]
    groups: list[GatewayStatsRow] = field(default_factory=list)
    total: GatewayStatsRow = field(default_factory=lambda: GatewayStatsRow({}))


def queries(by: tuple[str, ...]) -> tuple[str, str, str, str]:
    """The figures per group; each whole period's call count; the histograms of the periods named (JSON arrays
    :days and :hours), each row's group led by the histogram's name; the raw calls' histograms, likewise."""
    keys = ", ".join(COLUMNS[k] for k in by)
    daily = "gateway_stats_daily WHERE period > :day"
    hourly = "gateway_stats_hourly WHERE period > :hour AND period < :next_day"
    raw = "gateway_call_facts WHERE at >= :since AND at < :next_hour"
    sums = ", ".join(_SUMS)
    figures = f"""
        SELECT {keys}, {", ".join(f"total({s})" for s in _SUMS)} FROM (
            SELECT {_KEY}, {sums} FROM {daily}
            UNION ALL
            SELECT {_KEY}, {sums} FROM {hourly}
            UNION ALL
            SELECT {_KEY}, {", ".join(_FACTS)} FROM {raw}
        ) GROUP BY {keys}
    """
    histograms = " UNION ALL ".join(
        f"SELECT '{t}', period, '{name}', {keys}, {column} FROM {table} "
        f"WHERE period IN (SELECT value FROM json_each(:{named})) AND {column} <> '{{}}'"
        for t, table, named in (("d", "gateway_stats_daily", "days"), ("h", "gateway_stats_hourly", "hours"))
        for name, (column, _) in _HISTOGRAMS.items()
    )
    raw_histograms = " UNION ALL ".join(
        f"SELECT '{name}', {keys}, {fact}, count(*) FROM {raw} AND {fact} IS NOT NULL GROUP BY {keys}, {fact}"
        for name, (_, fact) in _HISTOGRAMS.items()
    )
    # In the primary key's order (period first): no sort.
    periods = (
        f"SELECT 'd', period, sum(calls) FROM {daily} GROUP BY period "
        f"UNION ALL SELECT 'h', period, sum(calls) FROM {hourly} GROUP BY period"
    )
    return figures, periods, histograms, raw_histograms


class GatewayStatsStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._periods = PeriodHistograms()

    async def stats(self, *, since: datetime, by: tuple[str, ...]) -> GatewayStats:
        """The figures per group of `by` (one or two distinct keys of COLUMNS, checked by the caller) and in total,
        groups in the order of their values as text (no value first)."""
        assert by and len(set(by)) == len(by) and all(k in COLUMNS for k in by), by
        since = since.astimezone(UTC)
        params = window(since)
        figures, periods, histograms, raw_histograms = queries(by)
        n = len(by)
        rows: dict[tuple[Any, ...], GatewayStatsRow] = {}
        for r in await self.db.fetchall(figures, params):  # type: ignore[arg-type]
            key = tuple(r[:n])
            row = GatewayStatsRow({k: None if v == "" else v for k, v in zip(by, key, strict=True)})
            for name, value in zip(_SUMS, r[n:], strict=True):
                setattr(row, name, value if name == "cost_usd" else int(value))
            rows[key] = row
        # (histogram name, *group) → histogram. A group in a histogram but not in the figures was logged between
        # the two reads: counted next time.
        merged: dict[tuple[Any, ...], Histogram] = {}
        for groups in (await whole_periods(self.db, self._periods, by, n + 1, periods, histograms, params)).values():
            add_histograms(merged, groups)
        for r in await self.db.fetchall(raw_histograms, params):  # type: ignore[arg-type]
            hist = merged.setdefault(tuple(r[: n + 1]), {})
            hist[str(r[n + 1])] = hist.get(str(r[n + 1]), 0) + r[n + 2]
        result = GatewayStats(since=since, by=by)
        total = result.total
        overall: dict[str, dict[int, int]] = {name: {} for name in _HISTOGRAMS}
        for key, row in sorted(rows.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
            result.groups.append(row)
            for name in _SUMS:
                setattr(total, name, getattr(total, name) + getattr(row, name))
            hists = {}
            for name in _HISTOGRAMS:
                hists[name] = {int(ms): count for ms, count in merged.get((name, *key), {}).items()}
                for ms, count in hists[name].items():
                    overall[name][ms] = overall[name].get(ms, 0) + count
            _percentiles(row, hists)
        _percentiles(total, overall)
        return result


def _percentiles(row: GatewayStatsRow, hists: dict[str, dict[int, int]]) -> None:
    row.p50_latency_ms, row.p95_latency_ms = percentile(hists["latency"], 50), percentile(hists["latency"], 95)
    row.p50_ttft_ms = percentile(hists["ttft"], 50)
