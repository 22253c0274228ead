"""Soak: many loops firing every second with random outcomes while clients list runs; every fire
must be recorded exactly once, and the daemon's memory and open files must stay flat.

    .venv/bin/python bench/soak.py [--minutes 1] [--loops 20] [--clients 3]

Each loop's command, at random: succeeds (60%), fails (20%), sleeps past its 2 s timeout (10%;
the fires that find it still running are recorded as `skipped`), or prints ~1.3 MB through a
256 kB output cap (10%). Meanwhile client threads list runs over the API without pause, and the
daemon's RSS and open fd count are sampled. After a clean stop, each loop's `schedule` runs are
read from the database: their `scheduled_at` must be exactly the loop's 1 s grid from its
creation, with none missing (up to the last second before the stop) and none twice.
Exits 1 when a fire is missing, duplicated or off the grid; not part of `make bench` (it is long).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import FLEETD, ThrowawayDaemon  # noqa: E402
from fleetd import paths  # noqa: E402
from fleetd.cli.client import Client, CliError  # noqa: E402

COMMAND = r"""r=$(od -An -N1 -tu1 /dev/urandom); r=$((r % 10))
if [ "$r" -lt 6 ]; then echo ok; exit 0; fi
if [ "$r" -lt 8 ]; then echo "failing on purpose" >&2; exit 3; fi
if [ "$r" -lt 9 ]; then exec sleep 5; fi
yes 'soak: a line of output that is long enough to fill the cap quickly' | head -n 20000"""
STOP_SLACK = timedelta(seconds=1)  # a slot due in the last second before the stop may not fire


@dataclass
class Clients:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def work(self, client: Client, stop: threading.Event) -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                client.call("GET", "/v1/runs", query={"limit": 50})
                error = None
            except CliError as e:
                error = e.message
            took = time.monotonic() - start
            with self.lock:
                self.requests += 1
                self.slowest_s = max(self.slowest_s, took)
                if error is not None:
                    self.errors.append(error)


@dataclass
class Samples:
    rss_mb: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def take(self, proc: psutil.Process) -> None:
        self.rss_mb.append(proc.memory_info().rss / 2**20)
        self.fds.append(proc.num_fds())

    @staticmethod
    def line(name: str, values: list[float] | list[int], fmt: str) -> str:
        first, last, peak = values[0], values[-1], max(values)
        return f"{name:<8} first {first:{fmt}}  last {last:{fmt}}  max {peak:{fmt}}  ({len(values)} samples)"


@dataclass
class Accounting:
    expected: int = 0
    recorded: int = 0
    missing: int = 0
    duplicated: int = 0
    off_grid: int = 0
    late_extra: int = 0  # fired in the last second before the stop: allowed
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.off_grid)


def account(db_path: Path, stopped_at: datetime) -> tuple[Accounting, Counter[str], int]:
    """Compare each loop's recorded schedule slots with its 1 s grid from creation to the stop."""
    acc = Accounting()
    with sqlite3.connect(db_path) as db:
        loops = db.execute("SELECT name, created_at FROM loops WHERE schedule_kind = 'every'").fetchall()
        statuses = Counter(dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()))
        still_running = db.execute("SELECT count(*) FROM runs WHERE status IN ('running', 'waiting')").fetchone()[0]
        for name, created_text in loops:
            created = datetime.fromisoformat(created_text)
            rows = db.execute(
                "SELECT scheduled_at FROM runs WHERE loop = ? AND trigger = 'schedule'", (name,)
            ).fetchall()
            counts: Counter[int] = Counter()
            for (text,) in rows:
                offset = (datetime.fromisoformat(text) - created).total_seconds()
                k = round(offset)
                if k < 1 or abs(offset - k) > 0.002:
                    acc.off_grid += 1
                    acc.examples.append(f"{name}: off-grid slot {text}")
                    continue
                counts[k] += 1
            last_due = int((stopped_at - STOP_SLACK - created).total_seconds())
            acc.expected += max(last_due, 0)
            acc.recorded += len(rows)
            for k in range(1, last_due + 1):
                if counts[k] == 0:
                    acc.missing += 1
                    acc.examples.append(f"{name}: slot {created + timedelta(seconds=k)} missing")
            for k, n in counts.items():
                if n > 1:
                    acc.duplicated += n - 1
                    acc.examples.append(f"{name}: slot {created + timedelta(seconds=k)} recorded {n} times")
                if k > last_due:
                    acc.late_extra += 1
    return acc, statuses, still_running


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--loops", type=int, default=20)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS/fd samples")
    args = parser.parse_args()
    if args.minutes <= 0 or args.loops < 1 or args.clients < 0:
        parser.error("--minutes must be > 0, --loops >= 1, --clients >= 0")

    daemon = ThrowawayDaemon().start()
    try:
        client = Client(paths.resolve(daemon.env).socket, timeout=60)
        health = client.ping()
        assert health is not None, "the daemon does not answer"
        proc = psutil.Process(health["pid"])
        for i in range(args.loops):
            daemon.cli("loop", "add", f"soak{i:02d}", "--every", "1s", "--timeout", "2s", "--output-cap", "256k",
                       "--command", COMMAND)  # fmt: skip
        samples, clients, stop = Samples(), Clients(), threading.Event()
        threads = [
            threading.Thread(target=clients.work, args=(Client(client.socket_path, timeout=60), stop), daemon=True)
            for _ in range(args.clients)
        ]
        for t in threads:
            t.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        samples.take(proc)
        while (now := time.monotonic()) < end:
            time.sleep(min(args.sample_every, end - now))
            samples.take(proc)
            print(
                f"  {time.monotonic() - started:6.0f}s  rss {samples.rss_mb[-1]:6.1f} MB  fds {samples.fds[-1]:4d}",
                flush=True,
            )
        stop.set()
        for t in threads:
            t.join(60)
        stopped_at = datetime.now().astimezone()
        stop_started = time.monotonic()
        subprocess.run([FLEETD, "daemon", "stop", "--wait", "120"], env=daemon.env, check=True, capture_output=True)
        stop_took = time.monotonic() - stop_started

        acc, statuses, still_running = account(daemon.dir / "home" / "fleetd.db", stopped_at)
        print(f"soak: {args.loops} loops every 1s for {args.minutes:g} min, {args.clients} client(s) listing runs")
        print(
            f"fires    expected {acc.expected}  recorded {acc.recorded}  missing {acc.missing}  "
            f"duplicated {acc.duplicated}  off-grid {acc.off_grid}  (in the last second: {acc.late_extra})"
        )
        print("runs     " + "  ".join(f"{status} {n}" for status, n in sorted(statuses.items())))
        print(f"         left running/waiting after a clean stop: {still_running}; stop took {stop_took:.1f}s")
        print(Samples.line("rss MB", samples.rss_mb, ".1f"))
        print(Samples.line("fds", samples.fds, "d"))
        print(f"clients  {clients.requests} listings, {len(clients.errors)} errors, slowest {clients.slowest_s:.2f}s")
        for example in acc.examples[:10] + clients.errors[:5]:
            print(f"  {example}")
        return 0 if acc.ok else 1
    finally:
        subprocess.run([FLEETD, "daemon", "stop"], env=daemon.env, check=False, capture_output=True)
        shutil.rmtree(daemon.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
