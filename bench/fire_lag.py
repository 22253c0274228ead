"""Fire lag and fire-to-process at 200 and 500 loops firing every second, with missed fires, and
how long `daemon stop` then takes, through a real daemon.

    .venv/bin/python bench/fire_lag.py [--loops 200,500] [--seconds 10] [--pythonpath DIR]

Each loop runs `date +%s.%N` every second; the loops are written into the store before the daemon
starts (adding hundreds through the API while the first ones fire measures the API under load, not
the fires), their grids spread evenly over the second. After a warm-up, every `schedule` slot of the
measured window is read from the database: *fire lag* is the recorded `started_at` minus the slot,
*fire-to-process* is the time the command printed (its first instruction, ~1 ms after the child's
creation: the baseline row is that offset for a lone spawn from a bare asyncio loop) minus the slot. *Missed* counts the
window's slots without a run that started: *skipped* (the loop's previous run was still going: a
`skipped` row stands for as many slots as its count, its own and those after it), *told* (a late
fire's `loop.fire_missed` event stands for the slot its timer passed over) or *missing* (neither a
row nor an event: a fire lost). *cpu/run* is the daemon's own CPU over the window per run started (a
cost that, unlike the skips near saturation, does not flip between runs), *loop* the part of it on the event
loop's thread, and *idle* the cores the machine left idle meanwhile. Then, once the window's last
slots have had 3 s to fire (the loops still firing), `daemon stop` is timed against the stop grace +
kill grace (30 s + 5 s by default).
`--pythonpath DIR` runs the daemon from another checkout (see bench/_common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import FLEETD, ThrowawayDaemon, counts, with_pythonpath, write_json  # noqa: E402
from fleetd.records.loop import Loop, Schedule  # noqa: E402
from fleetd.store.db import Database  # noqa: E402
from fleetd.store.loops import LoopStore  # noqa: E402
from fleetd.timefmt import to_iso  # noqa: E402

COMMAND = "date +%s.%N"
STOP_GRACE, KILL_GRACE = 30.0, 5.0  # the daemon's defaults, passed explicitly
SETTLE = 3.0  # seconds between the window's end and the stop: more than the fire lag at 500 loops (~1 s at worst)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _spawn_offsets(n: int) -> list[float]:
    out = []
    for _ in range(n):
        before = time.time()
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", COMMAND, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        printed, _ = await proc.communicate()
        out.append(float(printed) - before)
    return out


def baseline(n: int = 30) -> float:
    """Median offset, in seconds, from a bare asyncio spawn to the command's own timestamp."""
    return statistics.median(asyncio.run(_spawn_offsets(n)))


def _to_ms(moment: datetime) -> datetime:
    """`moment` to the millisecond, as the store writes times: a slot then falls inside [start, end) for the query
    exactly as for the count (with microseconds, a slot a moment before `end` was counted but not fetched)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _slots(created: datetime, start: datetime, end: datetime) -> list[datetime]:
    """The loop's 1 s grid (from its creation) inside [start, end)."""
    first = max(1, int((start - created).total_seconds()) + 1)
    slots = []
    k = first
    while (slot := created + timedelta(seconds=k)) < end:
        if slot >= start:
            slots.append(slot)
        k += 1
    return slots


def _daemon_pid(env: dict[str, str]) -> int:
    status = subprocess.run([FLEETD, "daemon", "status", "--json"], env=env, capture_output=True, check=True)
    return int(json.loads(status.stdout)["pid"])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (all its threads; not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loop_cpu_seconds(pid: int) -> float:
    """CPU of the daemon's main thread (its event loop) so far."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_seconds() -> float:
    """The machine's idle CPU seconds so far, every core."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def _printed(log_path: str | None) -> float | None:
    try:
        return float(Path(log_path or "").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def _prefill(db_path: Path, loops: int, lead: float) -> None:
    """`loops` loops every 1s, created a moment ago at even offsets over one second, each due first
    `lead` seconds from now or just after (the daemon arms them at start)."""
    db = await Database.open(db_path)
    try:
        store, now = LoopStore(db), datetime.now(UTC)
        base = now.replace(microsecond=0) - timedelta(seconds=1)
        for i in range(loops):
            created = base + timedelta(milliseconds=1000 * i // loops)
            first = created + timedelta(seconds=int((now - created).total_seconds() + lead) + 1)
            await store.insert(Loop(f"f{i:03d}", Schedule("every", "1s", "UTC"), "command", command=COMMAND,
                                    created_at=created, updated_at=created, next_fire_at=first))  # fmt: skip
    finally:
        await db.close()


def measure(loops: int, seconds: float, warmup: float, pythonpath: str | None) -> dict[str, Any]:
    daemon = ThrowawayDaemon()
    daemon.env = with_pythonpath(daemon.env, pythonpath)
    home = daemon.dir / "home"
    home.mkdir(parents=True)
    asyncio.run(_prefill(home / "fleetd.db", loops, lead=2.0))
    daemon.start("--stop-grace", f"{STOP_GRACE:g}s", "--kill-grace", f"{KILL_GRACE:g}s")
    try:
        pid = _daemon_pid(daemon.env)
        time.sleep(warmup + 2.0)
        start = _to_ms(datetime.now(UTC))
        cpu_before, loop_before = _cpu_seconds(pid), _loop_cpu_seconds(pid)
        idle_before, wall = _idle_seconds(), time.monotonic()
        time.sleep(seconds)
        cpu = _cpu_seconds(pid) - cpu_before
        loop_cpu = _loop_cpu_seconds(pid) - loop_before
        idle = (_idle_seconds() - idle_before) / (time.monotonic() - wall)
        end = _to_ms(datetime.now(UTC))
        # The window's last slots get the time to fire (a slot a moment before `end` fired after it, and a stop at
        # once would count it missing); the loops go on firing meanwhile, so the stop is timed under the same load.
        time.sleep(SETTLE)
        stop_started = time.monotonic()
        stop = subprocess.run([FLEETD, "daemon", "stop", "--wait", "120"], env=daemon.env, capture_output=True)
        stop_s = time.monotonic() - stop_started
        if stop.returncode != 0:
            print(f"daemon stop failed after {stop_s:.1f}s: {stop.stderr.decode(errors='replace').strip()}")
            stop_s = float("inf")
        with sqlite3.connect(daemon.dir / "home" / "fleetd.db") as db:
            grids = db.execute("SELECT name, created_at FROM loops").fetchall()
            rows = db.execute(
                "SELECT loop, status, scheduled_at, started_at, log_path FROM runs WHERE trigger = 'schedule' "
                "AND scheduled_at >= ? AND scheduled_at < ?",
                (to_iso(start), to_iso(end)),
            ).fetchall()
            # A skipped row stands for `skipped_count` fires: its own slot and the ones after it (skips against one
            # run coalesce; a late fire's passed-over slots count in), one a second. Rows from before the window too.
            skipped_slots = {
                (loop, datetime.fromisoformat(scheduled) + timedelta(seconds=k))
                for loop, scheduled, count in db.execute(
                    "SELECT loop, scheduled_at, skipped_count FROM runs WHERE trigger = 'schedule' "
                    "AND status = 'skipped' AND scheduled_at >= ? AND scheduled_at < ?",
                    (to_iso(start - timedelta(seconds=120)), to_iso(end)),
                )
                for k in range(count)
            }
            left = db.execute("SELECT count(*) FROM runs WHERE status IN ('running', 'waiting')").fetchone()[0]
            # Slots a late timer passed over are told by its fire's `loop.fire_missed` (missed, from first_missed_at).
            told_slots = {
                (e["loop"], datetime.fromisoformat(e["first_missed_at"]) + timedelta(seconds=k))
                for (data,) in db.execute("SELECT data_json FROM events WHERE type = 'loop.fire_missed'")
                for e in [json.loads(data)]
                for k in range(e["missed"])
            }
        by_slot: dict[tuple[str, datetime], list[tuple[str, str, str | None]]] = defaultdict(list)
        for loop, status, scheduled, started, log_path in rows:
            by_slot[(loop, datetime.fromisoformat(scheduled))].append((status, started, log_path))
        lags, to_process, expected, no_row, told, skipped = [], [], 0, 0, 0, 0
        for name, created in grids:
            for slot in _slots(datetime.fromisoformat(created), start, end):
                expected += 1
                found = by_slot.get((name, slot))
                if not found:
                    if (name, slot) in skipped_slots:
                        skipped += 1
                    elif (name, slot) in told_slots:
                        told += 1
                    else:
                        no_row += 1
                    continue
                status, started, log_path = found[0]
                if status == "skipped":
                    skipped += 1
                    continue
                lags.append((datetime.fromisoformat(started) - slot).total_seconds())
                if (printed := _printed(log_path)) is not None:
                    to_process.append(printed - slot.timestamp())
    finally:
        daemon.close()
    return {
        "loops": loops, "expected": expected, "started": len(lags), "missing": no_row, "told_missed": told,
        "skipped": skipped, "lag_p50_ms": pct(lags, 0.5) * 1000, "lag_p99_ms": pct(lags, 0.99) * 1000,
        "proc_p50_ms": pct(to_process, 0.5) * 1000, "proc_p99_ms": pct(to_process, 0.99) * 1000,
        "proc_max_ms": max(to_process, default=float("nan")) * 1000, "stop_s": stop_s, "left_running": left,
        "cpu_ms_per_run": cpu * 1000 / len(lags) if lags else float("nan"),
        "loop_cpu_ms_per_run": loop_cpu * 1000 / len(lags) if lags else float("nan"), "idle_cores": idle,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default="200,500", help="comma-separated loop counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per loop count")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--pythonpath", help="run the daemon from this checkout")
    parser.add_argument("--json", type=Path, help="where to write the figures (default bench/results/fire_lag.json)")
    args = parser.parse_args()
    loops = counts(parser, "--loops", args.loops)
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be > 0, --warmup >= 0")
    floor = baseline()
    results = [measure(n, args.seconds, args.warmup, args.pythonpath) for n in loops]
    print(f"fire lag / fire-to-process, loops of `{COMMAND}` every 1s, {args.seconds:g}s measured (ms)")
    print(f"{'loops':>5}  {'lag p50':>8}  {'lag p99':>8}  {'proc p50':>8}  {'proc p99':>8}  {'proc max':>8}  "
          f"{'slots':>6}  {'missing':>7}  {'told':>5}  {'skipped':>7}  {'stop s':>6}  {'left':>4}  "
          f"{'cpu/run':>7}  {'loop':>5}  {'idle':>5}")  # fmt: skip
    print(f"{'bare':>5}  {'':>8}  {'':>8}  {floor * 1000:8.1f}  {'':>8}  {'':>8}  (baseline: a lone spawn's offset)")
    for r in results:
        print(f"{r['loops']:>5}  {r['lag_p50_ms']:8.1f}  {r['lag_p99_ms']:8.1f}  {r['proc_p50_ms']:8.1f}  "
              f"{r['proc_p99_ms']:8.1f}  {r['proc_max_ms']:8.1f}  {r['expected']:>6}  {r['missing']:>7}  "
              f"{r['told_missed']:>5}  "
              f"{r['skipped']:>7}  {r['stop_s']:6.1f}  {r['left_running']:>4}  {r['cpu_ms_per_run']:7.2f}  "
              f"{r['loop_cpu_ms_per_run']:5.2f}  {r['idle_cores']:5.2f}")  # fmt: skip
    print("cpu/run: the daemon's CPU (all its threads, not its children) over the window per run started, ms;"
          " loop: its event loop's thread alone; idle: cores the machine left idle meanwhile")  # fmt: skip
    print(f"targets: proc p50 <= 20, p99 <= 100 at 200 loops; no missed fire at 500; stop <= "
          f"{STOP_GRACE + KILL_GRACE:g} s")  # fmt: skip
    payload = {"seconds": args.seconds, "baseline_spawn_ms": floor * 1000, "results": results}
    print(f"(JSON: {write_json('fire_lag', payload, args.json)})")


if __name__ == "__main__":
    main()
