"""`fleetd stats --since 30d --by backend` against a million runs vs a thousand, same run.

    .venv/bin/python bench/stats_query.py [--runs 1000000] [--repeat 5] [--db FILE]

Rows are written straight into the SQLite file (the daemon's own schema) before the daemon starts:
runs spread evenly over the last 30 days across 50 loops, ~1.4 attempts each (a third of them fall
back to another profile or escalate to a later chain step), 1 % skipped; then the stats rollups are
built as the schema migration builds them (~3 minutes at a million runs on 2 busy cores: `--db FILE` keeps
the filled file there, or starts from a copy of it when it exists). Printed: the CLI's median (a fresh
process, as a user runs it) and the API call over the socket (the time spent in the daemon): its first
call after the daemon starts, and the median of the calls after it (a daemon keeps whole periods'
histograms between queries, store/stats.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import FLEETD, ThrowawayDaemon, first_and_later, time_command
from fleetd.store.db import Database
from fleetd.store.schema import STATS_REBUILD

LOOPS = 50
DAYS = 30
# How a run went: (its plan, share in 1000), a plan being its attempts as (backend, profile, model, chain step).
# One candidate; a second profile of the first step (a fallback); the next step (an escalation); three steps.
CC, CC2 = ("claude_code", "cc-a", "sonnet", 0), ("claude_code", "cc-b", "sonnet", 0)
CX, GM = ("codex", "cx-a", "gpt-5", 1), ("gemini", "gm-a", "gemini-2.5-pro", 2)
PLANS = [([CC], 650), ([CC, CC2], 150), ([CC, CX], 150), ([CC, CX, GM], 50)]


def fill(db_path: Path, n: int, now: datetime) -> None:
    """`n` runs evenly over the last 30 days, generated inside SQLite (a Python loop over 2.5 million rows
    takes minutes), then the stats rollups built as the schema migration builds them."""

    async def create() -> None:
        await (await Database.open(db_path)).close()

    asyncio.run(create())
    start = (now - timedelta(days=DAYS)).timestamp()
    span = DAYS * 86400 - 3600  # the newest run has an hour to finish
    began = time.perf_counter()
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.execute("CREATE TEMP TABLE plan_steps (plan INTEGER, number INTEGER, backend TEXT, profile TEXT, "
                     "model TEXT, step INTEGER)")  # fmt: skip
        conn.executemany(
            "INSERT INTO plan_steps VALUES (?, ?, ?, ?, ?, ?)",
            [(p, i, *att) for p, (atts, _) in enumerate(PLANS) for i, att in enumerate(atts, start=1)],
        )
        # each run's plan by its share: 0..999 → the plan whose cumulative share covers it (drawn once: a
        # flattened random() would be drawn again at each use)
        bounds, edge = [], 0
        for p, (_, share) in enumerate(PLANS):
            edge += share
            bounds.append(f"WHEN r < {edge} THEN {p}")
        conn.execute(
            "CREATE TEMP TABLE run_plan AS WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq "
            f"WHERE i < {n - 1}), "
            "drawn AS MATERIALIZED (SELECT i, abs(random()) % 1000 AS r, abs(random()) % 100 AS s FROM seq) "
            f"SELECT i + 1 AS id, {start} + {span}.0 * i / {n} AS t, "
            f"CASE WHEN s = 0 THEN -1 {' '.join(bounds)} END AS plan, abs(random()) % 100 < 88 AS ok FROM drawn"
        )
        iso = "strftime('%Y-%m-%dT%H:%M:%f+00:00', {}, 'unixepoch')"
        conn.execute(
            "WITH drawn AS MATERIALIZED (SELECT rp.id, rp.t, ps.*, 2000 + abs(random()) % 80000 "
            "+ (abs(random()) % 20 = 0) * (abs(random()) % 400000) AS d, 1000 + abs(random()) % 49000 AS tin, "
            "100 + abs(random()) % 7900 AS tout FROM run_plan rp JOIN plan_steps ps ON ps.plan = rp.plan) "
            "INSERT INTO attempts (run_id, number, backend, profile, model, started_at, finished_at, outcome, "
            "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, step, role, duration_ms) "
            f"SELECT id, number, backend, profile, model, {iso.format('t + 90 * (number - 1)')}, "
            f"{iso.format('t + 90 * (number - 1) + d / 1000.0')}, 'succeeded', tin, tout, tin * 4, tin / 2, "
            "round(tin * 3e-6 + tout * 15e-6, 6), step, 'work', d FROM drawn ORDER BY id, number"
        )
        conn.execute(
            "INSERT INTO runs (id, loop, trigger, status, scheduled_at, started_at, finished_at, exit_code, backend, "
            f"profile, attempts) SELECT id, 'loop' || printf('%02d', id % {LOOPS}), 'schedule', "
            "CASE WHEN plan < 0 THEN 'skipped' WHEN ok THEN 'succeeded' ELSE 'failed' END, "
            f"{iso.format('t')}, {iso.format('t')}, {iso.format('t + 300')}, CASE WHEN plan < 0 THEN NULL "
            "WHEN ok THEN 0 ELSE 1 END, 'claude_code', '', "
            "(SELECT count(*) FROM plan_steps WHERE plan = run_plan.plan) FROM run_plan ORDER BY id"
        )
        conn.execute("COMMIT")
        rebuild = time.perf_counter()
        conn.executescript(f"BEGIN;\n{STATS_REBUILD}\nCOMMIT;")
        print(f"(rows {rebuild - began:.1f} s, rollups {time.perf_counter() - rebuild:.1f} s)", file=sys.stderr)
        conn.execute("ANALYZE")
        conn.execute("PRAGMA journal_mode=WAL")


def measure(n: int, repeat: int, db: Path | None) -> tuple[float, float, float, float]:
    daemon = ThrowawayDaemon()
    fill_s = daemon.with_database(lambda path: fill(path, n, datetime.now(UTC)), db)
    daemon.start("--retain", "off", "--wait", "300")
    try:
        sock = Path(daemon.env["FLEETD_HOME"]) / "run" / "fleetd.sock"
        first, api = first_and_later(sock, "/v1/stats?since=30d&by=backend", repeat)
        cli = time_command([FLEETD, "stats", "--since", "30d", "--by", "backend"], daemon.env, repeat)
        return cli, first, api, fill_s
    finally:
        daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", type=Path, help="Keep the filled file here; start from a copy when it exists.")
    args = parser.parse_args()
    small = measure(1000, args.repeat, None)
    big = measure(args.runs, args.repeat, args.db)
    label = "stats --since 30d --by backend"
    print(f"{label:<31}  {'CLI median':>10}  {'daemon, 1st call':>16}  {'daemon, median after':>20}")
    for runs, (cli, first, api, _) in ((1000, small), (args.runs, big)):
        print(f"{runs:>9} runs{'':<17}  {cli:7.1f} ms  {first:13.1f} ms  {api:17.1f} ms")
    print(f"ratio {args.runs} / 1000 runs: CLI {big[0] / small[0]:.2f}x, daemon after the first call "
          f"{big[2] / small[2]:.2f}x; (filling {args.runs} runs took {big[3]:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
