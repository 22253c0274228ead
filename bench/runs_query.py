"""`fleetd runs list --loop X --limit 50` against a million runs vs a thousand, same run.

    .venv/bin/python bench/runs_query.py [--runs 1000000] [--repeat 10]

Rows are written straight into the SQLite file (the daemon's own schema) before the daemon starts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import FLEETD, ThrowawayDaemon, time_command
from fleetd.store.db import Database

LOOPS = 50


def fill(db_path: Path, n: int) -> None:
    async def create() -> None:
        await (await Database.open(db_path)).close()

    asyncio.run(create())
    t = "2026-11-21T00:00:00.000+00:00"
    rows = ((f"loop{i % LOOPS:02d}", "schedule", "succeeded", t, t, t, 0, "command", f"/tmp/{i}.log") for i in range(n))
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, finished_at, exit_code, "
            "backend, log_path, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            rows,
        )


def measure(n: int, repeat: int) -> tuple[float, float]:
    daemon = ThrowawayDaemon()
    home = Path(daemon.env["FLEETD_HOME"])
    home.mkdir(parents=True)
    start = time.perf_counter()
    fill(home / "fleetd.db", n)
    fill_s = time.perf_counter() - start
    daemon.start()
    try:
        argv = [FLEETD, "runs", "list", "--loop", "loop07", "--limit", "50", "--json"]
        return time_command(argv, daemon.env, repeat), fill_s
    finally:
        daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    small, _ = measure(1000, args.repeat)
    big, fill_s = measure(args.runs, args.repeat)
    print(f"runs list --loop X --limit 50, 1000 runs        median {small:7.1f} ms  (baseline)")
    print(f"runs list --loop X --limit 50, {args.runs} runs  median {big:7.1f} ms  ratio {big / small:5.2f}x")
    print(f"(filling {args.runs} rows took {fill_s:.1f} s)")


if __name__ == "__main__":
    main()
