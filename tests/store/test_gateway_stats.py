"""`fleetd stats --source gateway` over a real SQLite file: calls written as the recorder writes them (in
batches), so the rollups of schema migration 17 are added to as in production, against the plain
definition (what `views.gateway_stats` computed from every call before the rollups, kept here as the oracle)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from fleetd.gateway.views import gateway_stats
from fleetd.records.gateway import GatewayCall
from fleetd.store.db import Database, migrate
from fleetd.store.gateway import GatewayStore
from fleetd.store.retention import RetentionStore
from fleetd.store.schema import GATEWAY_STATS_REBUILD, MIGRATIONS
from fleetd.timefmt import to_iso

NOW = datetime(2026, 11, 30, 15, 37, 12, 345000, tzinfo=UTC)
CUTS = [("route",), ("profile",), ("key",), ("model", "api"), ("route", "profile"), ("api", "key")]
STARTS = [
    NOW - timedelta(days=4),  # before every call: whole days, whole hours, nothing raw
    NOW - timedelta(days=2),
    NOW - timedelta(days=1, hours=5, minutes=17, seconds=3),  # mid-day and mid-hour
    NOW.replace(hour=0, minute=0, second=0, microsecond=0),  # a day's first instant
    NOW - timedelta(minutes=41),  # the hour before this one, partly
    NOW - timedelta(minutes=5),  # inside the current hour
]


# -- the oracle: gateway_stats as it was, over every call (latencies rounded as the rollups round them) --


def _oracle(calls: list[GatewayCall], by: tuple[str, ...]) -> dict[str, Any]:
    groups: dict[tuple[Any, ...], list[GatewayCall]] = {}
    for call in calls:
        groups.setdefault(tuple(_value(call, k) for k in by), []).append(call)
    rows = [{"group": dict(zip(by, key, strict=True)), **_figures(members)} for key, members in sorted(
        groups.items(), key=lambda kv: tuple("" if v is None else str(v) for v in kv[0]))]  # fmt: skip
    return {"source": "gateway", "by": list(by), "groups": rows, "total": {"group": {}, **_figures(calls)}}


def _value(call: GatewayCall, key: str) -> Any:
    return {"route": call.route, "profile": call.profile, "model": call.model, "key": call.key, "api": call.api}[key]


def _figures(calls: list[GatewayCall]) -> dict[str, Any]:
    succeeded = sum(1 for c in calls if c.outcome == "succeeded")
    fallbacks = sum(1 for c in calls if len({p["profile"] for p in c.path}) > 1)
    rejected = sum(1 for c in calls if c.outcome == "rejected")
    # A call a crash cut, or one fleetd refused, is logged at 0 ms: not known, so in no latency (it pulled p50 down).
    latencies = sorted(c.latency_ms for c in calls if c.outcome not in ("interrupted", "rejected"))
    ttfts = sorted(c.ttft_ms for c in calls if c.ttft_ms is not None)
    return {
        "calls": len(calls),
        "succeeded": succeeded,
        "fallbacks": fallbacks,
        "streamed": sum(1 for c in calls if c.streamed),
        "stream_errors": sum(1 for c in calls if c.outcome == "stream_error"),
        # Refused by fleetd for the key's own cap: apart, and no part of the rates (they counted as failed calls).
        "rejected": rejected,
        "success_rate": round(succeeded / (len(calls) - rejected), 4) if len(calls) > rejected else None,
        "fallback_rate": round(fallbacks / (len(calls) - rejected), 4) if len(calls) > rejected else None,
        "p50_latency_ms": _rank(latencies, 0.5),
        "p95_latency_ms": _rank(latencies, 0.95),
        "p50_ttft_ms": _rank(ttfts, 0.5),
        "tokens": {
            "input": sum(c.input_tokens for c in calls),
            "output": sum(c.output_tokens for c in calls),
            "cache_read": sum(c.cache_read_tokens for c in calls),
            "cache_write": sum(c.cache_write_tokens for c in calls),
        },
        "cost_usd": round(sum(c.cost_usd for c in calls), 6),
    }


def _rank(values: list[int], q: float) -> int | None:
    return values[max(0, math.ceil(q * len(values)) - 1)] if values else None


def _two_digits(ms: int) -> int:
    """Two significant digits, halves up (36392 → 36000, 105 → 110); below 100 as is."""
    if ms < 100:
        return max(ms, 0)
    digit = 10 ** (len(str(ms)) - 2)
    return (ms + digit // 2) // digit * digit


def _rounded(call: GatewayCall) -> GatewayCall:
    ttft = None if call.ttft_ms is None else _two_digits(call.ttft_ms)
    return GatewayCall(**{**call.__dict__, "latency_ms": _two_digits(call.latency_ms), "ttft_ms": ttft})


def expected(calls: list[GatewayCall], since: datetime, by: tuple[str, ...]) -> dict[str, Any]:
    return _oracle([_rounded(c) for c in calls if c.at >= since], by)


# -- calls ----------------------------------------------------------------------------------------


def random_calls(rnd: random.Random, n: int, *, after: datetime | None = None) -> list[GatewayCall]:
    """Spread over the three days before NOW (or after `after`, up to NOW): every kind of call the gateway logs."""
    start = after or NOW - timedelta(days=3)
    calls = []
    for _ in range(n):
        outcome = rnd.choice(("succeeded", "succeeded", "succeeded", "failed", "rejected", "stream_error",
                              "interrupted"))  # fmt: skip
        tries = [rnd.choice(("p1", "p2", "p3")) for _ in range(rnd.choice((1, 1, 2, 3)))]
        if outcome == "rejected":
            tries = []
        streamed = outcome == "stream_error" or rnd.random() < 0.4
        calls.append(GatewayCall(
            at=start + (NOW - start) * rnd.random(),
            key=rnd.choice(("k1", "k2", None)), route=rnd.choice(("fast", "smart")),
            api=rnd.choice(("chat", "messages")), streamed=streamed, outcome=outcome,
            status=200 if outcome == "succeeded" else 529,
            path=[{"profile": p, "model": "m", "status": 200, "class": None, "latency_ms": 5} for p in tries],
            profile=tries[-1] if tries else None, model=rnd.choice(("m1", "m2")) if tries else None,
            ttft_ms=rnd.randint(0, 30_000) if streamed and rnd.random() < 0.9 else None,
            latency_ms=0 if outcome in ("interrupted", "rejected")
            else rnd.choice((rnd.randint(0, 120), rnd.randint(0, 300_000))),
            input_tokens=rnd.randint(0, 5000), output_tokens=rnd.randint(0, 900), cache_read_tokens=rnd.randint(0, 9),
            cache_write_tokens=rnd.randint(0, 3), cost_usd=rnd.randint(0, 500) / 1000,
        ))  # fmt: skip
    return calls


async def add(store: GatewayStore, calls: list[GatewayCall], batch: int = 37) -> None:
    """In batches, as recorder.py writes them."""
    for i in range(0, len(calls), batch):
        await store.add_calls(calls[i : i + batch])


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "f.db"


def in_store(db_path: Path, fn: Any) -> Any:
    async def go() -> Any:
        db = await Database.open(db_path)
        try:
            return await fn(GatewayStore(db), db)
        finally:
            await db.close()

    return asyncio.run(go())


async def answer(store: GatewayStore, since: datetime, by: tuple[str, ...]) -> dict[str, Any]:
    return gateway_stats(await store.stats(since=since, by=by))


# -- the figures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_rollups_agree_with_every_call_wherever_the_window_starts(db_path: Path, seed: int) -> None:
    """Whole days from the daily rollup, whole hours of the first day from the hourly one, the first partial
    hour from the calls: every cut and every grouping must give what grouping the calls themselves gives."""
    calls = random_calls(random.Random(seed), 400)

    async def go(store: GatewayStore, db: Database) -> None:
        await add(store, calls)
        for since in STARTS:
            for by in CUTS:
                assert await answer(store, since, by) == expected(calls, since, by), (since, by)

    in_store(db_path, go)


def test_a_store_that_answered_before_sees_every_later_call(db_path: Path) -> None:
    """Whole periods' histograms are kept between queries: calls added later, to periods already kept (a call
    logged late, dated days ago, included), must count in the next answer."""
    rnd = random.Random(5)
    calls = random_calls(rnd, 200)

    async def go(store: GatewayStore, db: Database) -> None:
        await add(store, calls)
        for round_ in range(3):
            for since in STARTS[:3] + STARTS[4:5]:
                for by in (("route",), ("profile", "key")):
                    assert await answer(store, since, by) == expected(calls, since, by), (round_, since, by)
            later = random_calls(rnd, 40)
            for call in later:  # slower than any before: every percentile a stale histogram could keep moves
                call.latency_ms = rnd.randint(400_000 * (round_ + 1), 500_000 * (round_ + 1))
            await add(store, later)
            calls.extend(later)

    in_store(db_path, go)


def test_latencies_are_rounded_to_two_significant_digits(db_path: Path) -> None:
    at = NOW - timedelta(minutes=1)
    lat = [0, 7, 99, 100, 104, 105, 994, 995, 36_392, 1_234_567]
    calls = [GatewayCall(at, "k", "r", "chat", True, "succeeded", latency_ms=ms, ttft_ms=ms) for ms in lat]

    async def go(store: GatewayStore, db: Database) -> None:
        await store.add_calls(calls)
        (row,) = (await answer(store, NOW - timedelta(hours=1), ("route",)))["groups"]
        assert (row["p50_latency_ms"], row["p95_latency_ms"], row["p50_ttft_ms"]) == (100, 1_200_000, 100)
        for metric in ("latency", "ttft"):
            rows = await db.fetchall(
                "SELECT ms, calls FROM gateway_histograms_daily WHERE metric = ? ORDER BY ms", (metric,)
            )
            rounded = [0, 7, 99, 100, 100, 110, 990, 1000, 36_000, 1_200_000]
            assert [tuple(r) for r in rows] == sorted(Counter(rounded).items())

    in_store(db_path, go)


def test_an_empty_window(db_path: Path) -> None:
    async def go(store: GatewayStore, db: Database) -> None:
        await store.add_calls(random_calls(random.Random(3), 10))
        got = await answer(store, NOW + timedelta(hours=1), ("route", "profile"))
        assert got["groups"] == [] and got["total"]["calls"] == 0 and got["total"]["p50_latency_ms"] is None
        assert got == expected([], NOW, ("route", "profile"))

    in_store(db_path, go)


# -- retention and older databases ----------------------------------------------------------------


def test_pruned_calls_still_count(db_path: Path) -> None:
    """As for loops' runs: the rollups keep the figures of calls that retention deleted (a window that starts
    inside the pruned time may miss its first, partial hour, which is read from the calls)."""
    calls = random_calls(random.Random(7), 300)

    async def go(store: GatewayStore, db: Database) -> None:
        await add(store, calls)
        retention = RetentionStore(db)
        while await retention.delete_gateway_calls_before(NOW - timedelta(hours=12), 100):
            pass
        left = (await db.fetchone("SELECT count(*) FROM gateway_calls"))[0]  # type: ignore[index]
        assert 0 < left < len(calls) // 3
        for by in CUTS[:3]:
            assert await answer(store, NOW - timedelta(days=4), by) == expected(calls, NOW - timedelta(days=4), by)

    in_store(db_path, go)


def test_calls_logged_before_migration_20_are_counted_after_it(db_path: Path) -> None:
    calls = random_calls(random.Random(11), 250)

    async def old() -> None:
        async with aiosqlite.connect(db_path, isolation_level=None) as conn:
            assert await migrate(conn, upto=16) == 16

    asyncio.run(old())
    rows = [
        (to_iso(c.at), c.key, c.route, c.api, int(c.streamed), c.outcome, c.status, json.dumps(c.path), c.profile,
         c.model, c.ttft_ms, c.latency_ms, c.input_tokens, c.output_tokens, c.cache_read_tokens,
         c.cache_write_tokens, c.cost_usd)
        for c in calls
    ]  # fmt: skip
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        conn.executemany(
            "INSERT INTO gateway_calls (at, key_name, route, api, streamed, outcome, status, path_json, profile, "
            "model, ttft_ms, latency_ms, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
            "cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    async def go(store: GatewayStore, db: Database) -> None:
        assert (await db.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS) >= 17  # type: ignore[index]
        for since in STARTS[:3]:
            for by in CUTS[:4]:
                assert await answer(store, since, by) == expected(calls, since, by), (since, by)

    in_store(db_path, go)


def test_rebuild_gives_what_the_batches_added(db_path: Path) -> None:
    """GATEWAY_STATS_REBUILD (migration 17's backfill, and bench/ after bulk inserts, in SQL) and the store's
    per-batch additions (`add_to_rollups`, histograms merged in Python) are two writers of one rollup."""
    calls = random_calls(random.Random(13), 300)

    async def go(store: GatewayStore, db: Database) -> None:
        await add(store, calls)

    in_store(db_path, go)

    def snapshot() -> list[tuple[Any, ...]]:
        with sqlite3.connect(db_path) as conn:
            rows = []
            for period in ("daily", "hourly"):
                for r in conn.execute(f"SELECT * FROM gateway_stats_{period} ORDER BY 1, 2, 3, 4, 5, 6"):
                    rows.append((period, *r[:15], round(r[15], 9), *r[16:]))  # (r[15]: cost_usd)
                rows += conn.execute(f"SELECT * FROM gateway_histograms_{period} ORDER BY 1, 2, 3, 4, 5, 6, 7, 8")
            return rows

    kept = snapshot()
    assert kept
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        conn.executescript(f"BEGIN; {GATEWAY_STATS_REBUILD} COMMIT;")
    assert snapshot() == kept
