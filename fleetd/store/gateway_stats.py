"""The figures of `fleetd stats --source gateway`: calls, success, fallbacks, streams, latency, tokens, cost.

What is counted (the README repeats this for users): every call logged at or after `since`, in the group of
its route, last profile, model, client key and API. A fallback is a call whose path tried more than one
profile; p50 / p95 latency and p50 time to first token are nearest-rank over the calls' milliseconds rounded
to two significant digits (36392 ms is kept as 36000; a call without a first token counts in latency only).

How it stays fast: as loop stats do (store/stats.py, store/rollups.py), with rollups (schema migration 17)
keyed by (period, route, profile, model, key, api), per UTC day and per hour: counts and sums
(`gateway_stats_{daily,hourly}`), and histograms of the rounded latency and time to first token as rows
(`gateway_histograms_{daily,hourly}`; schema.py says why not JSON). The store adds each batch of calls to them
in the transaction that inserts it (`add_to_rollups`: a few statements per batch; a trigger would run them for
each call). A query reads whole days and whole hours from them and only its first partial hour from the calls,
through the view the rollups are added from (`gateway_call_facts`), so each part counts alike.
Retention deletes calls, never rollups: pruned calls still count (but in a window's first partial hour).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
from fleetd.store.schema import GATEWAY_FACTS, GATEWAY_KEY, GATEWAY_METRICS, GATEWAY_SUMS, gateway_add

# `--by` key → its column (`key` is the client key's name)
COLUMNS = {"route": "route", "profile": "profile", "model": "model", "key": "key_name", "api": "api"}
_SUMS, _FACTS, _KEY = GATEWAY_SUMS, GATEWAY_FACTS, GATEWAY_KEY


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
    rejected: int = 0  # refused by fleetd for the key's own --daily-cost: not routed, and no provider's failure
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
    :days and :hours), each row's group led by its metric; the raw calls' histograms, likewise."""
    keys = ", ".join(COLUMNS[k] for k in by)
    daily = "gateway_stats_daily WHERE period > :day"  # the sums, and whole periods' call counts
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
    # Rows of (rounded ms, calls), grouped into one JSON object per period, metric and group: rollups.py's shape.
    histograms = " UNION ALL ".join(
        f"SELECT '{t}', period, metric, {keys}, json_group_object(ms, n) FROM ("
        f"SELECT period, metric, {keys}, ms, sum(calls) AS n FROM gateway_histograms_{table} "
        f"WHERE period IN (SELECT value FROM json_each(:{named})) GROUP BY period, metric, {keys}, ms"
        f") GROUP BY period, metric, {keys}"
        for t, table, named in (("d", "daily", "days"), ("h", "hourly", "hours"))
    )
    raw_histograms = " UNION ALL ".join(
        f"SELECT '{metric}', {keys}, {fact}, count(*) FROM {raw} AND {fact} IS NOT NULL GROUP BY {keys}, {fact}"
        for metric, fact in GATEWAY_METRICS
    )
    # In the primary key's order (period first): no sort.
    periods = (
        f"SELECT 'd', period, sum(calls) FROM {daily} GROUP BY period "
        f"UNION ALL SELECT 'h', period, sum(calls) FROM {hourly} GROUP BY period"
    )
    return figures, periods, histograms, raw_histograms


_ADD_BATCH = gateway_add("f.call_id IN (SELECT value FROM json_each(:ids))")


def add_to_rollups(conn: sqlite3.Connection, ids: list[int]) -> None:
    """Add the calls `ids` (just inserted, in this transaction) to the rollups: a few statements per batch, each an
    upsert per (period, group) or (period, group, rounded ms) the batch touches. By id, not "above the largest
    before": a call's id is given as it starts, so a batch's calls need not be the newest (journal.py)."""
    text = json.dumps(ids)
    for statement in _ADD_BATCH:
        conn.execute(statement, {"ids": text})


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
        whole = await whole_periods(self.db, self._periods, by, n + 1, periods, histograms, params)
        raw = await self.db.fetchall(raw_histograms, params)  # type: ignore[arg-type]
        result = GatewayStats(since=since, by=by)
        # Pure Python over what was read (as loop stats rank theirs): in a worker thread.
        await asyncio.to_thread(_rank, result, rows, whole, raw, n)
        return result


def _rank(
    result: GatewayStats,
    rows: dict[tuple[Any, ...], GatewayStatsRow],
    whole: dict[Period, dict[tuple[Any, ...], Histogram]],
    raw: list[Any],
    n: int,
) -> None:
    """`result`'s groups (`rows`, in the order of their values as text), their percentiles and the total, from the
    whole periods' histograms and the raw calls' (each group led by its metric). Touches nothing but its arguments:
    it runs in a worker thread."""
    # A group in a histogram but not in the figures was logged between the two reads: counted next time.
    merged = merged_histograms(whole, raw, n + 1, ())
    total = result.total
    overall: dict[str, dict[int, int]] = {metric: {} for metric, _ in GATEWAY_METRICS}
    for key, row in sorted(rows.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        result.groups.append(row)
        for name in _SUMS:
            setattr(total, name, getattr(total, name) + getattr(row, name))
        hists = {}
        for metric, _ in GATEWAY_METRICS:
            hists[metric] = {int(ms): count for ms, count in merged.get((metric, *key), {}).items()}
            for ms, count in hists[metric].items():
                overall[metric][ms] = overall[metric].get(ms, 0) + count
        _percentiles(row, hists)
    _percentiles(total, overall)


def _percentiles(row: GatewayStatsRow, hists: dict[str, dict[int, int]]) -> None:
    row.p50_latency_ms, row.p95_latency_ms = percentile(hists["latency"], 50), percentile(hists["latency"], 95)
    row.p50_ttft_ms = percentile(hists["ttft"], 50)
