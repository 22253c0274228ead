"""`fleetd stats --source gateway --since 30d --by route,profile` against a million gateway calls vs a thousand.

    .venv/bin/python bench/gateway_stats.py [--calls 1000000] [--repeat 5] [--db FILE]

Calls are written straight into the SQLite file (the daemon's own schema) before the daemon starts: spread
evenly over the last 30 days across 4 routes, 3 profiles and 3 client keys; one in ten fell back to a second
profile, one in fifty failed, a third streamed. Printed: the CLI's median (a fresh process) and the API call
over the socket (the time spent in the daemon), first call and the median after it. A --db FILE written by a
fleetd before schema migration 17 is migrated when the daemon starts (its rollups built: ~45 s at 1M calls).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import FLEETD, ThrowawayDaemon, first_and_later, time_command, write_json
from fleetd.store.db import Database
from fleetd.store.schema import GATEWAY_STATS_REBUILD

DAYS = 30
# one in ten calls fell back from profile p(n+1) to p(n); one in fifty failed
PROFILE, FALLBACK = "'p' || p", "'p' || ((p + 1) % 3)"
STATUS, Q_OVERLOADED = "CASE WHEN r < 2 THEN 529 ELSE 200 END", "'overloaded'"
BY = "route,profile"


def fill(db_path: Path, n: int, now: datetime) -> None:
    """`n` calls, generated inside SQLite (a Python loop over a million rows takes minutes), then the rollups
    (the store adds to them as it logs calls; bulk rows here, so they are built at the end, as migration 17 does)."""

    async def create() -> None:
        await (await Database.open(db_path)).close()

    asyncio.run(create())
    start, span = now.timestamp() - DAYS * 86400, DAYS * 86400 - 60
    iso = "strftime('%Y-%m-%dT%H:%M:%f+00:00', {}, 'unixepoch')"
    try_json = "json_object('profile', {}, 'model', 'm', 'status', {}, 'class', {}, 'latency_ms', 100)"
    began = time.perf_counter()
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        fell_back = (
            f"json_array({try_json.format(FALLBACK, 529, Q_OVERLOADED)}, {try_json.format(PROFILE, 200, 'NULL')})"
        )
        one_try = f"json_array({try_json.format(PROFILE, STATUS, 'NULL')})"
        conn.execute(
            f"WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {n - 1}), "
            "drawn AS MATERIALIZED (SELECT i, abs(random()) % 100 AS r, abs(random()) % 3 AS p, "
            "50 + abs(random()) % 4000 AS lat FROM seq) "
            "INSERT INTO gateway_calls (at, key_name, route, api, streamed, outcome, status, path_json, profile, "
            "model, ttft_ms, latency_ms, input_tokens, output_tokens, cost_usd) "
            f"SELECT {iso.format(f'{start} + {span}.0 * i / {n}')}, 'key' || (i % 3), 'route' || (i % 4), "
            "CASE WHEN i % 2 THEN 'openai' ELSE 'anthropic' END, r % 3 = 0, "
            f"CASE WHEN r < 2 THEN 'failed' ELSE 'succeeded' END, {STATUS}, "
            f"CASE WHEN r BETWEEN 2 AND 11 THEN {fell_back} ELSE {one_try} END, "
            "'p' || p, 'm', CASE WHEN r % 3 = 0 THEN lat / 4 END, lat, 1000 + lat, 100 + lat / 10, lat * 1e-6 "
            "FROM drawn"
        )
        conn.execute("COMMIT")
        rebuild = time.perf_counter()
        conn.executescript(f"BEGIN;\n{GATEWAY_STATS_REBUILD}\nCOMMIT;")  # the rollups the store adds to as it logs
        print(f"(rows {rebuild - began:.1f} s, rollups {time.perf_counter() - rebuild:.1f} s)", file=sys.stderr)
        conn.execute("ANALYZE")
        conn.execute("PRAGMA journal_mode=WAL")


def measure(n: int, repeat: int, db: Path | None) -> tuple[float, float, float]:
    daemon = ThrowawayDaemon()
    daemon.with_database(lambda path: fill(path, n, datetime.now(UTC)), db)
    daemon.start("--retain", "off", "--wait", "300")
    try:
        sock = Path(daemon.env["FLEETD_HOME"]) / "run" / "fleetd.sock"
        first, api = first_and_later(sock, f"/v1/stats?source=gateway&since=30d&by={BY}", repeat)
        cli = time_command([FLEETD, "stats", "--source", "gateway", "--since", "30d", "--by", BY], daemon.env, repeat)
        return cli, first, api
    finally:
        daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", type=Path, help="Keep the filled file here; start from a copy when it exists.")
    args = parser.parse_args()
    small = measure(1000, args.repeat, None)
    big = measure(args.calls, args.repeat, args.db)
    label = f"stats --source gateway --by {BY}"
    print(f"{label:<44}  {'CLI median':>10}  {'daemon, 1st call':>16}  {'daemon, median after':>20}")
    for calls, (cli, first, api) in ((1000, small), (args.calls, big)):
        print(f"{calls:>9} calls{'':<29}  {cli:7.1f} ms  {first:13.1f} ms  {api:17.1f} ms")
    print(f"ratio {args.calls} / 1000 calls: CLI {big[0] / small[0]:.2f}x, daemon {big[2] / small[2]:.2f}x")
    write_json("gateway_stats", {"calls": args.calls, "small": small, "big": big, "by": BY})


if __name__ == "__main__":
    main()
