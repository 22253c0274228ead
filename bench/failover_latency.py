"""Failover latency: from a rate-limited attempt's end to the next attempt's start on another
profile, through a real daemon running the stand-in CLIs (which replay real captured output).

    .venv/bin/python bench/failover_latency.py [--runs 20]

Each run's pool is [a_i, b]: a_i reports a usage limit, b succeeds. The baseline is one plain
successful attempt on b in the same run (start to end).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import FLEETD, ThrowawayDaemon  # noqa: E402
from tests.harness import STANDIN_BIN, captures_dir  # noqa: E402


def cli(daemon: ThrowawayDaemon, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run([FLEETD, *args], env=daemon.env, check=True, capture_output=True, text=True, input=stdin)
    return out.stdout


def wait_run(daemon: ThrowawayDaemon, run_id: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = json.loads(cli(daemon, "runs", "show", str(run_id), "--json"))
        if run["status"] not in ("running", "waiting"):
            return run
        time.sleep(0.05)
    raise SystemExit(f"run {run_id} did not finish")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if not (captures_dir() / "cc_ok_stream").is_dir():
        raise SystemExit(f"captures not found at {captures_dir()} (set FLEETD_CAPTURES)")
    daemon = ThrowawayDaemon()
    standin = daemon.dir / "standin"
    standin.mkdir()
    daemon.env.update(PATH=f"{STANDIN_BIN}:{os.environ['PATH']}", STANDIN_DIR=str(standin),
                      STANDIN_CAPTURES=str(captures_dir()), FLEETD_SECRET_STORE="file")  # fmt: skip
    daemon.start()
    try:
        cli(daemon, "profile", "add", "b", "--backend", "claude_code", "--tier", "metered")
        (standin / "b.scenario").write_text("ok")
        cli(
            daemon,
            "loop",
            "add",
            "base",
            "--every",
            "1h",
            "--backend",
            "claude_code",
            "--prompt",
            "x",
            "--profile",
            "b",
        )
        baseline_run = wait_run(daemon, json.loads(cli(daemon, "loop", "run", "base", "--json"))["id"])
        (only,) = baseline_run["attempt_list"]
        baseline = (
            datetime.fromisoformat(only["finished_at"]) - datetime.fromisoformat(only["started_at"])
        ).total_seconds()
        gaps = []
        for i in range(args.runs):
            name = f"a{i:02d}"
            cli(daemon, "profile", "add", name, "--backend", "claude_code")
            (standin / f"{name}.scenario").write_text("usage_limit +3600")
            cli(daemon, "loop", "add", f"l{i:02d}", "--every", "1h", "--backend", "claude_code", "--prompt", "x",
                "--profile", f"{name},b")  # fmt: skip
            run = wait_run(daemon, json.loads(cli(daemon, "loop", "run", f"l{i:02d}", "--json"))["id"])
            first, second = run["attempt_list"]
            assert first["error_class"] == "rate_limited" and second["outcome"] == "succeeded", run
            gap = datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(first["finished_at"])
            gaps.append(gap.total_seconds())
    finally:
        daemon.close()
    median = statistics.median(gaps)
    print(f"one successful attempt (baseline)        {baseline * 1000:7.1f} ms")
    print(f"failover: rate-limited end → next start   median {median * 1000:7.1f} ms over {len(gaps)} runs "
          f"(min {min(gaps) * 1000:.1f}, max {max(gaps) * 1000:.1f})  ratio {median / baseline:5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
