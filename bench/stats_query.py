"""`fleetd stats --since 30d --by backend` against a million runs vs a thousand, same run.

    .venv/bin/python bench/stats_query.py [--runs 1000000] [--repeat 5]

Rows are written straight into the SQLite file (the daemon's own schema) before the daemon starts:
runs spread evenly over the last 30 days, ~1.5 attempts each (a third of them fall back to another
profile or escalate to a later chain step), 1 % skipped. Printed: the CLI's median (a fresh process,
as a user runs it) and the API call's median alone over the socket (the time spent in the daemon).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import FLEETD, ThrowawayDaemon, time_command
from fleetd.store.db import Database

LOOPS = 50
DAYS = 30
# (backend, profiles, model) per chain step
STEPS = [
    ("claude_code", ("cc-a", "cc-b"), "sonnet"),
    ("codex", ("cx-a",), "gpt-5"),
    ("gemini", ("gm-a",), "gemini-2.5-pro"),
]


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds")


def rows(n: int, now: datetime, seed: int = 7) -> Iterator[tuple[tuple[object, ...], list[tuple[object, ...]]]]:
    """(run row, its attempt rows) in start order, as the daemon writes them."""
    rnd = random.Random(seed)
    span = DAYS * 86400 - 3600  # the newest run has an hour to finish
    start = now - timedelta(days=DAYS)
    for i in range(n):
        t = start + timedelta(seconds=span * i / n)
        loop = f"loop{i % LOOPS:02d}"
        if rnd.random() < 0.01:
            yield (loop, "schedule", "skipped", _iso(t), _iso(t), _iso(t), None, "claude_code", "", 0), []
            continue
        r = rnd.random()
        # one candidate (65 %), a second profile of the first step (15 %), the next step (15 %), three steps (5 %)
        plan = [(0, 0)] if r < 0.65 else [(0, 0), (0, 1)] if r < 0.80 else [(0, 0), (1, 0)] if r < 0.95 else [
            (0, 0), (1, 0), (2, 0)]  # fmt: skip
        status = "succeeded" if rnd.random() < 0.88 else "failed"
        at, attempts = t, []
        for number, (step, p) in enumerate(plan, start=1):
            backend, profiles, model = STEPS[step]
            duration_ms = int(rnd.lognormvariate(10.5, 0.8))  # median ~36 s
            end = at + timedelta(milliseconds=duration_ms)
            last = number == len(plan)
            outcome = ("succeeded" if status == "succeeded" else "failed") if last else "failed"
            error_class = None if outcome == "succeeded" else rnd.choice(("rate_limited", "transient", "auth"))
            tin, tout = rnd.randint(1_000, 50_000), rnd.randint(100, 8_000)
            attempts.append((number, backend, profiles[p], model, _iso(at), _iso(end), outcome, error_class, tin, tout,
                             tin * 4, tin // 2, round(tin * 3e-6 + tout * 15e-6, 6), step, "work", duration_ms))  # fmt: skip
            at = end
        run = (loop, "schedule", status, _iso(t), _iso(t), _iso(at), 0 if status == "succeeded" else 1,
               attempts[-1][1], attempts[-1][2], len(attempts))  # fmt: skip
        yield run, attempts


def fill(db_path: Path, n: int, now: datetime) -> None:
    async def create() -> None:
        await (await Database.open(db_path)).close()

    asyncio.run(create())
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        run_id = 0
        batch_runs: list[tuple[object, ...]] = []
        batch_attempts: list[tuple[object, ...]] = []
        for run, attempts in rows(n, now):
            run_id += 1
            batch_runs.append((run_id, *run))
            batch_attempts.extend((run_id, *a) for a in attempts)
            if len(batch_runs) >= 50_000:
                _insert(conn, batch_runs, batch_attempts)
                batch_runs, batch_attempts = [], []
        _insert(conn, batch_runs, batch_attempts)
        conn.execute("ANALYZE")


def _insert(conn: sqlite3.Connection, runs: list[tuple[object, ...]], attempts: list[tuple[object, ...]]) -> None:
    conn.executemany(
        "INSERT INTO runs (id, loop, trigger, status, scheduled_at, started_at, finished_at, exit_code, backend, "
        "profile, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        runs,
    )
    conn.executemany(
        "INSERT INTO attempts (run_id, number, backend, profile, model, started_at, finished_at, outcome, "
        "error_class, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, step, role, "
        "duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        attempts,
    )


def time_api(sock_path: Path, path: str, repeat: int) -> float:
    """Median of one HTTP request over the Unix socket, connect to last byte, in milliseconds."""
    request = f"GET {path} HTTP/1.1\r\nHost: fleetd\r\nConnection: close\r\n\r\n".encode()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(sock_path))
            sock.sendall(request)
            answer = b""
            while data := sock.recv(65536):
                answer += data
        samples.append((time.perf_counter() - start) * 1000)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"GET {path} failed: {answer[:300]!r}")
    return statistics.median(samples)


def measure(n: int, repeat: int) -> tuple[float, float, float]:
    daemon = ThrowawayDaemon()
    home = Path(daemon.env["FLEETD_HOME"])
    home.mkdir(parents=True)
    start = time.perf_counter()
    fill(home / "fleetd.db", n, datetime.now(UTC))
    fill_s = time.perf_counter() - start
    daemon.start()
    try:
        api = time_api(home / "run" / "fleetd.sock", "/v1/stats?since=30d&by=backend", repeat)
        cli = time_command([FLEETD, "stats", "--since", "30d", "--by", "backend"], daemon.env, repeat)
        return cli, api, fill_s
    finally:
        daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    small_cli, small_api, _ = measure(1000, args.repeat)
    big_cli, big_api, fill_s = measure(args.runs, args.repeat)
    label = "stats --since 30d --by backend"
    print(f"{label}, 1000 runs      CLI median {small_cli:7.1f} ms  in daemon {small_api:7.1f} ms  (baseline)")
    print(f"{label}, {args.runs} runs  CLI median {big_cli:7.1f} ms  in daemon {big_api:7.1f} ms  "
          f"ratio {big_cli / small_cli:5.2f}x (CLI), {big_api / small_api:5.2f}x (daemon)")  # fmt: skip
    print(f"(filling {args.runs} runs took {fill_s:.1f} s)")


if __name__ == "__main__":
    main()
