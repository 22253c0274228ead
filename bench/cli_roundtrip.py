"""CLI round trip: `fleetd loop list --json` with 100 loops vs `python3 -c pass`, same run.

.venv/bin/python bench/cli_roundtrip.py [--loops 100] [--repeat 10]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import FLEETD, ThrowawayDaemon, time_command
from fleetd.cli.client import Client
from fleetd.paths import resolve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    daemon = ThrowawayDaemon().start()
    try:
        client = Client(resolve(daemon.env).socket)
        for i in range(args.loops):
            client.call("POST", "/v1/loops", {"name": f"loop{i:03d}", "every": "1h", "command": "true"})
        baseline = time_command([sys.executable, "-c", "pass"], daemon.env, args.repeat)
        listing = time_command([FLEETD, "loop", "list", "--json"], daemon.env, args.repeat)
        status = time_command([FLEETD, "daemon", "status", "--json"], daemon.env, args.repeat)
    finally:
        daemon.close()
    print(f"python3 -c pass                      median {baseline:7.1f} ms  (baseline)")
    label = f"fleetd loop list --json ({args.loops} loops)"
    print(f"{label}  median {listing:7.1f} ms  ratio {listing / baseline:5.1f}x")
    print(f"fleetd daemon status --json          median {status:7.1f} ms  ratio {status / baseline:5.1f}x")


if __name__ == "__main__":
    main()
