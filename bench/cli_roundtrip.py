"""CLI round trip: `fleetd loop list --json` with 100 loops vs `python3 -c "import click"` and
`python3 -c pass`, measured interleaved in the same run (so machine load hits all alike).

.venv/bin/python bench/cli_roundtrip.py [--loops 100] [--repeat 30] [--json bench/results/cli_roundtrip.json]
                                      [--from-source]

Target (issue 10): `loop list --json` within 1.2x of importing click alone.

Every command runs from cached bytecode, as an installed fleetd does (pip compiles it at install): the
bytecode goes to a private PYTHONPYCACHEPREFIX, made by one round before the timed ones, whatever the
caller's PYTHONDONTWRITEBYTECODE says. Left to that variable (set in some sandboxes and CI images), an
editable fleetd would be compiled from source at every call while click, installed, comes from its
bytecode: `--from-source` measures that, the caller's environment as it is.
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
    parser.add_argument("--from-source", action="store_true", help="the caller's environment as it is (see above)")
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
    env = dict(daemon.env)
    if not args.from_source:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(daemon.dir / "pycache")
    try:
        client = Client(resolve(daemon.env).socket)
        for i in range(args.loops):
            client.call("POST", "/v1/loops", {"name": f"loop{i:03d}", "every": "1h", "command": "true"})
        for n in range(args.repeat + 1):
            for label, argv in commands.items():
                start = time.perf_counter()
                subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
                if n:  # the first round writes the bytecode
                    samples[label].append((time.perf_counter() - start) * 1000)
    finally:
        daemon.close()
    medians = {label: statistics.median(values) for label, values in samples.items()}
    baseline = medians['python3 -c "import click" (baseline)']
    width = max(map(len, medians))
    print("from source (fleetd compiled at each call)" if args.from_source else "from cached bytecode")
    print(f"{'command'.ljust(width)}  median ms  vs import click")
    for label, ms in medians.items():
        print(f"{label.ljust(width)}  {ms:9.1f}  {ms / baseline:5.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"repeat": args.repeat, "loops": args.loops, "from_source": args.from_source, "median_ms": medians,
              "ratio_to_import_click": {k: v / baseline for k, v in medians.items()}}  # fmt: skip
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
