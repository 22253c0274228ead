"""`fleetd runs list` with every filter combination, against a million runs vs a thousand, same run.

    .venv/bin/python bench/runs_query.py [--runs 1000000] [--repeat 7] [--json bench-runs.json] [--db FILE] [--no-cli]

Rows are written straight into the SQLite file (the daemon's own schema, no ANALYZE: the daemon never runs it) before
the daemon starts (`--db FILE` keeps the filled million-run file there and starts from a copy of it while it is less
than an hour old: its runs end at the time it was filled, and `--since` counts back from now): runs spread evenly over
the last 100 days across 50 loops (each loop in turn), 5 % failed, 2 % skipped, 1 % timed out, the rest succeeded. Per
combination, printed at 1k runs (the baseline) and at 1M: the API call's median over the socket (the time spent in the
daemon: query, JSON, HTTP) and the daemon's CPU time per call (on a shared machine the wall time also counts waiting
for a core); the daemon's SQL alone (store.runs.array_query with views.RUN_JSON_SQL: the answer's bytes); and the CLI's
median, a fresh process as a user runs it, with `--json` and as the text table (its output to /dev/null). Also `stats
--since 30d` for the record (bench/stats_query.py measures stats at a million attempts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import struct
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import FLEETD, ThrowawayDaemon, time_api, time_command
from fleetd.daemon.views import RUN_JSON_SQL
from fleetd.store.db import Database
from fleetd.store.runs import array_query
from fleetd.store.schema import duration_ms_sql
from fleetd.timefmt import parse_duration

LOOPS = 50
DAYS = 100
# (label, CLI flags): every combination of --loop / --status / --since, and the two big --limit cases of issue 12.
CASES: list[tuple[str, list[str]]] = [
    ("(no filter)", []),
    ("--loop X", ["--loop", "loop02"]),
    ("--status failed", ["--status", "failed"]),
    ("--status running", ["--status", "running"]),
    ("--since 1h", ["--since", "1h"]),
    ("--since 24h", ["--since", "24h"]),
    ("--loop X --status failed", ["--loop", "loop02", "--status", "failed"]),
    ("--loop X --since 24h", ["--loop", "loop02", "--since", "24h"]),
    ("--status failed --since 1h", ["--status", "failed", "--since", "1h"]),
    ("--loop X --status failed --since 24h", ["--loop", "loop02", "--status", "failed", "--since", "24h"]),
    ("--since 24h --limit 10000", ["--since", "24h", "--limit", "10000"]),
    ("--status failed --limit 10000", ["--status", "failed", "--limit", "10000"]),
]


def fill(db_path: Path, n: int, now: datetime) -> None:
    """`n` runs evenly over the last DAYS days, generated inside SQLite (a Python loop is too slow)."""

    async def create() -> None:
        await (await Database.open(db_path)).close()

    asyncio.run(create())
    start = (now - timedelta(days=DAYS)).timestamp()
    span = DAYS * 86400 - 60
    iso = "strftime('%Y-%m-%dT%H:%M:%f+00:00', {}, 'unixepoch')"
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO runs (id, loop, trigger, status, scheduled_at, started_at, finished_at, exit_code, backend, "
            "log_path, attempts) "
            f"WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {n - 1}), "
            f"t AS (SELECT i, {start} + {span}.0 * i / {n} AS t, (i / {LOOPS}) % 100 AS k FROM seq) "
            f"SELECT i + 1, 'loop' || printf('%02d', i % {LOOPS}), 'schedule', "
            "CASE WHEN k < 5 THEN 'failed' WHEN k < 7 THEN 'skipped' WHEN k < 8 THEN 'timed_out' "
            "ELSE 'succeeded' END, "
            f"{iso.format('t')}, {iso.format('t')}, {iso.format('t + 30')}, CASE WHEN k < 5 THEN 1 ELSE 0 END, "
            "'command', '/tmp/' || i || '.log', 1 FROM t"
        )
        # each run's duration_ms, as RunStore.finish writes it; the newest few are still running
        conn.execute(f"UPDATE runs SET duration_ms = {duration_ms_sql('finished_at', 'started_at')}")
        conn.execute(
            "UPDATE runs SET status = 'running', finished_at = NULL, exit_code = NULL, duration_ms = NULL "
            f"WHERE id > {n - 3}"
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")


def query(flags: list[str], limit: int = 50) -> dict[str, str]:
    q: dict[str, str] = {"limit": str(limit)}
    for name, value in zip(flags[::2], flags[1::2], strict=True):
        q[name.lstrip("-")] = value
    return q


def time_sql(db_path: Path, flags: list[str], repeat: int) -> tuple[float, int]:
    """Median of the daemon's own SQL for these flags (store.runs.array_query with views.RUN_JSON_SQL: each row's
    JSON and their array built by SQLite), in ms; and how many rows it gives. What is left of the API's time is
    sending them."""
    q = query(flags)
    since = datetime.now(UTC) - timedelta(seconds=parse_duration(q["since"])) if "since" in q else None
    sql, params = array_query(
        RUN_JSON_SQL, loop=q.get("loop"), status=q.get("status"), since=since, limit=int(q["limit"])
    )
    samples, body = [], b"[]"
    with sqlite3.connect(db_path) as conn:
        for _ in range(repeat):
            start = time.perf_counter()
            body = conn.execute(sql, params).fetchone()[0]
            samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), len(json.loads(body))


# case → (API wall, the daemon's CPU per call, SQL, rows, CLI json, CLI text)
Figures = dict[str, tuple[float, float, float, int, float | None, float | None]]


def daemon_pid(sock_path: Path) -> int:
    """The pid of the process answering on the socket (its peer credentials)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(sock_path))
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return pid


def cpu_ms(pid: int) -> float:
    """User + system CPU time the process has spent, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def time_api_cpu(sock: Path, pid: int, path: str, repeat: int) -> tuple[float, float]:
    """time_api's median wall time, and the daemon's mean CPU time per call, in ms."""
    before = cpu_ms(pid)
    wall = time_api(sock, path, repeat)
    return wall, (cpu_ms(pid) - before) / repeat


def fresh(db: Path) -> bool:
    return db.exists() and time.time() - db.stat().st_mtime < 3600


def measure(n: int, repeat: int, db: Path | None = None, cli: bool = True) -> tuple[Figures, float]:
    daemon = ThrowawayDaemon()
    home = Path(daemon.env["FLEETD_HOME"])
    fill_s = daemon.with_database(lambda path: fill(path, n, datetime.now(UTC)), db, reuse=fresh)
    # No pruning during the measurement (the oldest runs are past the default retention); a loaded
    # machine's quick_check of a million-run file can take a while.
    daemon.start("--retain", "off", "--wait", "120")
    sock = home / "run" / "fleetd.sock"
    pid = daemon_pid(sock)
    results: Figures = {}
    try:
        for label, flags in CASES:
            api, cpu = time_api_cpu(sock, pid, "/v1/runs?" + urlencode(query(flags)), repeat)
            sql, rows = time_sql(home / "fleetd.db", flags, repeat)
            cli_json = time_command([FLEETD, "runs", "list", *flags, "--json"], daemon.env, repeat) if cli else None
            cli_text = time_command([FLEETD, "runs", "list", *flags], daemon.env, repeat) if cli else None
            results[label] = (api, cpu, sql, rows, cli_json, cli_text)
        stats, cpu = time_api_cpu(sock, pid, "/v1/stats?since=30d&by=backend", repeat)
        results["stats --since 30d --by backend"] = (stats, cpu, float("nan"), 0, None, None)
        return results, fill_s
    finally:
        daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", dest="json_path", help="Also write the figures here.")
    parser.add_argument("--db", type=Path, help="Keep the filled file here; start from a copy while it is <1 h old.")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="Time the daemon and its SQL only.")
    args = parser.parse_args()
    small, _ = measure(1000, args.repeat, cli=args.cli)
    big, fill_s = measure(args.runs, args.repeat, args.db, args.cli)
    width = max(len(label) for label in big)
    big_n = f"{args.runs // 1000}k" if args.runs < 1_000_000 else f"{args.runs / 1e6:g}M"

    def pair(a: float | None, b: float | None) -> str:
        return f"{'-':>7} {'-':>7}" if a is None or b is None or a != a else f"{a:7.1f} {b:7.1f}"

    print(
        f"{'':<{width}}  {'in daemon (API call), ms':^23}  {'its CPU, ms':^15}  {'its SQL, ms':^15}  {'rows':>5}  "
        f"{'CLI --json, ms':^15}  {'CLI table, ms':>15}\n"
        f"{'runs list …':<{width}}  {'1k':>7} {big_n:>7} {'ratio':>7}  {'1k':>7} {big_n:>7}  {'1k':>7} {big_n:>7}  "
        f"{big_n:>5}  " + f"{'1k':>7} {big_n:>7}  " * 2
    )
    rows = []
    for label, (api, cpu, sql, n_rows, cli_json, cli_text) in big.items():
        api_1k, cpu_1k, sql_1k, _, json_1k, text_1k = small[label]
        print(
            f"{label:<{width}}  {api_1k:7.1f} {api:7.1f} {api / api_1k:6.1f}x  {pair(cpu_1k, cpu)}  "
            f"{pair(sql_1k, sql)}  {n_rows:5d}  "
            f"{pair(json_1k, cli_json)}  {pair(text_1k, cli_text)}"
        )
        rows.append(
            {
                "case": label,
                "api_ms_1k": round(api_1k, 2),
                "api_ms": round(api, 2),
                "cpu_ms_1k": round(cpu_1k, 2),
                "cpu_ms": round(cpu, 2),
                "sql_ms_1k": round(sql_1k, 2) if sql == sql else None,
                "sql_ms": round(sql, 2) if sql == sql else None,
                "rows": n_rows,
                "cli_json_ms_1k": None if json_1k is None else round(json_1k, 1),
                "cli_json_ms": None if cli_json is None else round(cli_json, 1),
                "cli_text_ms_1k": None if text_1k is None else round(text_1k, 1),
                "cli_text_ms": None if cli_text is None else round(cli_text, 1),
            }
        )
    print(f"(median of {args.repeat}; filling {args.runs} runs took {fill_s:.1f} s)")
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps({"runs": args.runs, "repeat": args.repeat, "cases": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
