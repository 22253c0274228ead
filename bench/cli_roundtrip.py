"""CLI round trip: `fleetd loop list --json` with 100 loops vs `python3 -c "import click"` and
`python3 -c pass`, measured interleaved in the same run (so machine load hits all alike).

.venv/bin/python bench/cli_roundtrip.py [--loops 100] [--repeat 30] [--json bench/results/cli_roundtrip.json]

Target (issue 10): `loop list --json` within 1.2x of importing click alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import FLEETD, ThrowawayDaemon
from fleetd.cli.client import Client
from fleetd.paths import resolve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", type=Path, default=Path("bench/results/cli_roundtrip.json"))
    args = parser.parse_args()
    commands = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        'python3 -c "import click" (baseline)': [sys.executable, "-c", "import click"],
        f"fleetd loop list --json ({args.loops} loops)": [FLEETD, "loop", "list", "--json"],
        "fleetd daemon status --json": [FLEETD, "daemon", "status", "--json"],
        "fleetd --help": [FLEETD, "--help"],
    }
    samples: dict[str, list[float]] = {label: [] for label in commands}
    daemon = ThrowawayDaemon().start()
    try:
        client = Client(resolve(daemon.env).socket)
        for i in range(args.loops):
            client.call("POST", "/v1/loops", {"name": f"loop{i:03d}", "every": "1h", "command": "true"})
        for _ in range(args.repeat):
            for label, argv in commands.items():
                start = time.perf_counter()
                subprocess.run(argv, env=daemon.env, check=True, stdout=subprocess.DEVNULL)
                samples[label].append((time.perf_counter() - start) * 1000)
    finally:
        daemon.close()
    medians = {label: statistics.median(values) for label, values in samples.items()}
    baseline = medians['python3 -c "import click" (baseline)']
    width = max(map(len, medians))
    print(f"{'command'.ljust(width)}  median ms  vs import click")
    for label, ms in medians.items():
        print(f"{label.ljust(width)}  {ms:9.1f}  {ms / baseline:5.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"repeat": args.repeat, "loops": args.loops, "median_ms": medians,
              "ratio_to_import_click": {k: v / baseline for k, v in medians.items()}}  # fmt: skip
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
