"""Idle cost: the daemon's memory and CPU with loops defined but none due, beside a bare asyncio
process that only wakes once a second, sampled over the same seconds.

    .venv/bin/python bench/idle.py [--loops 100] [--seconds 20] [--gateway] [--json FILE]

The daemon gets `--loops` loops firing hourly (none due during the window) and, with `--gateway`, its
gateway listening; after a short settle its CPU time (user + system) and RSS are read at the start
and end of the window. The baseline is `python3 -c` running an asyncio loop that sleeps 1 s at a
time: what any idle Python daemon costs here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import ThrowawayDaemon, write_json
from fleetd.cli.client import Client
from fleetd.paths import resolve

BARE = "import asyncio\nasync def main():\n    while True:\n        await asyncio.sleep(1)\nasyncio.run(main())"


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--gateway", action="store_true", help="also listen on a loopback gateway port")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    daemon = ThrowawayDaemon().start(*(["--gateway", "127.0.0.1:0"] if args.gateway else []))
    bare = subprocess.Popen([sys.executable, "-c", BARE])
    try:
        client = Client(resolve(daemon.env).socket)
        for i in range(args.loops):
            client.call("POST", "/v1/loops", {"name": f"idle{i:03d}", "every": "1h", "command": "true"})
        pid = int(client.call("GET", "/v1/health")["pid"])
        procs = {"fleetd daemon": psutil.Process(pid), "bare asyncio (baseline)": psutil.Process(bare.pid)}
        time.sleep(3)  # settle: start-up work (first heartbeat, scans) is not idle cost
        before = {label: cpu_seconds(p) for label, p in procs.items()}
        start = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - start
        figures = {
            label: {
                "cpu_percent": 100 * (cpu_seconds(p) - before[label]) / elapsed,
                "rss_mb": p.memory_info().rss / 2**20,
            }
            for label, p in procs.items()
        }
    finally:
        bare.kill()
        bare.wait()
        daemon.close()
    width = max(map(len, figures))
    print(f"{'process'.ljust(width)}  CPU %   RSS MB   ({args.loops} loops, {elapsed:.0f} s)")
    for label, f in figures.items():
        print(f"{label.ljust(width)}  {f['cpu_percent']:5.2f}  {f['rss_mb']:7.1f}")
    path = write_json("idle", {"loops": args.loops, "seconds": elapsed, "gateway": args.gateway, "figures": figures},
                      args.json)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
