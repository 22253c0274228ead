"""Crash recovery and stop with N stubborn runs in flight, through a real daemon.

    .venv/bin/python bench/recovery.py [--runs 20] [--fleetd PATH] [--pythonpath DIR] [--deadline 300]

Each run is tests/fixtures/forker.py: it ignores SIGTERM, as does its child, and a double-forked
grandchild leaves the session. With all N in flight the daemon gets SIGKILL and a new one starts on
the same home; the bench times (from its spawn) the socket answering, `daemon status --json` saying
"ok" (code without that field: the first answer), every leftover process gone, and checks that each
run ended `interrupted` with `finished_at`. Then N more run and the daemon gets SIGTERM: the time to
its exit is set against the service unit's TimeoutStopSec, after which systemd kills what is left.

`--pythonpath DIR` puts DIR first on PYTHONPATH for the daemon and the CLI, to measure another
checkout (`git worktree add /tmp/x COMMIT`, then `--pythonpath /tmp/x`). Every wait ends at the
deadline, reported as ">N s"; every process the bench saw is killed by pid at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import FLEETD  # noqa: E402
from tests.harness import alive  # noqa: E402

FORKER = ROOT / "tests" / "fixtures" / "forker.py"
KILL_GRACE = "5s"  # the daemon's defaults, passed explicitly so both checkouts get the same
STOP_GRACE = "30s"


def timeout_stop_sec() -> int | None:
    """TimeoutStopSec of the systemd unit shipped in this checkout."""
    try:
        found = re.search(r"^TimeoutStopSec=(\d+)\s*$", (ROOT / "systemd" / "fleetd.service").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) if found else None


@dataclass
class Bench:
    fleetd: str
    pythonpath: str | None
    deadline: float
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flr-", dir="/tmp")))
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    seen: dict[int, float] = field(default_factory=dict)  # every run process: pid -> create_time

    def __post_init__(self) -> None:
        self.home = self.dir / "home"
        self.env = {**os.environ, "FLEETD_HOME": str(self.home), "FLEETD_LOG_LEVEL": "INFO"}
        self.env.pop("NOTIFY_SOCKET", None)
        if self.pythonpath:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.pythonpath, os.environ.get("PYTHONPATH")]))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.fleetd, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise SystemExit(f"fleetd {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def code_location(self) -> str:
        """Where the daemon's interpreter finds fleetd (the fleetd script runs the venv's python)."""
        python = Path(self.fleetd).resolve().parent / "python"
        argv = [str(python if python.exists() else sys.executable), "-c", "import fleetd; print(fleetd.__file__)"]
        # cwd: `python -c` puts the working directory first on sys.path; the fleetd script does not
        out = subprocess.run(argv, env=self.env, cwd=self.dir, capture_output=True, text=True, timeout=60)
        return str(Path(out.stdout.strip()).parent) if out.returncode == 0 else "?"

    def start_daemon(self) -> subprocess.Popen[bytes]:
        self.home.mkdir(exist_ok=True)
        with open(self.dir / "daemon.log", "ab") as log:
            proc = subprocess.Popen(
                [self.fleetd, "daemon", "run", "--kill-grace", KILL_GRACE, "--stop-grace", STOP_GRACE],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.daemons.append(proc)
        return proc

    def health(self, proc: subprocess.Popen[bytes]) -> dict[str, Any] | None:
        """`daemon status --json`, or None while it does not exit 0."""
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}:\n{self.log_tail()}")
        result = self.cli("daemon", "status", "--json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait(self, what: str, predicate: Any, interval: float = 0.1) -> Any:
        limit = time.monotonic() + self.deadline
        while not (value := predicate()):
            if time.monotonic() > limit:
                raise SystemExit(f"timed out after {self.deadline:.0f} s waiting for {what}")
            time.sleep(interval)
        return value

    def fire_stubborn(self, runs: int, first: bool) -> tuple[list[int], list[int]]:
        """Fire every stubborn loop (adding them the first time) and wait for its three processes."""
        run_ids, pid_files = [], []
        for i in range(runs):
            name, pid_file = f"stubborn{i:02d}", self.dir / f"pids-{i:02d}"
            if first:
                command = shlex.join([sys.executable, str(FORKER), str(pid_file)])
                self.cli("loop", "add", name, "--every", "1h", "--paused", "--command", command)
            pid_file.unlink(missing_ok=True)  # the forker appends; the last round's pids are in self.seen
            run_ids.append(json.loads(self.cli("loop", "run", name, "--json").stdout)["id"])
            pid_files.append(pid_file)

        def all_three() -> bool:
            return all(f.exists() and len(f.read_text().split()) == 3 for f in pid_files)

        self.wait(f"{runs} runs' three processes each", all_three)
        pids = [int(p) for f in pid_files for p in f.read_text().split()]
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):  # gone already: nothing to clean up
                self.seen[pid] = psutil.Process(pid).create_time()
        return run_ids, pids

    def log_tail(self) -> str:
        try:
            return (self.dir / "daemon.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for pid, created in self.seen.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created:  # not a reused pid
                    process.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def seconds(value: float | None, deadline: float) -> str:
    """A measured time, or the bound it did not finish within."""
    return f">{deadline:.0f} s" if value is None else f"{value:.1f} s"


def recover(bench: Bench, run_ids: list[int], pids: list[int]) -> dict[str, Any]:
    """Start a daemon on the crashed home and time it, each clock from the spawn."""
    began = time.monotonic()
    proc = bench.start_daemon()
    limit = began + bench.deadline
    answered = ok = gone = None
    has_status = False
    while (ok is None or gone is None) and time.monotonic() < limit:
        if gone is None and not any(alive(p) for p in pids):
            gone = time.monotonic() - began
        if ok is None and (health := bench.health(proc)) is not None:
            now = time.monotonic() - began  # when the status command returned
            if answered is None:
                answered, has_status = now, "status" in health
            if health.get("status", "ok") == "ok":
                ok = now
        time.sleep(0.05)
    ended = 0
    if answered is not None:
        for run_id in run_ids:
            run = json.loads(bench.cli("runs", "show", str(run_id), "--json").stdout)
            ended += run["status"] == "interrupted" and run["finished_at"] is not None
    return {"proc": proc, "answered": answered, "ok": ok, "has_status": has_status, "gone": gone, "ended": ended}


def stop(bench: Bench, proc: subprocess.Popen[bytes], run_ids: list[int], pids: list[int]) -> dict[str, Any]:
    """SIGTERM with the runs in flight: the time to the daemon's exit and what it left."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(bench.deadline)
        took: float | None = time.monotonic() - began
    except subprocess.TimeoutExpired:
        code = took = None
    left = sum(alive(p) for p in pids)
    with sqlite3.connect(f"file:{bench.home / 'fleetd.db'}?mode=ro", uri=True) as db:
        rows = db.execute(
            f"SELECT status, finished_at FROM runs WHERE id IN ({','.join('?' * len(run_ids))})", run_ids
        ).fetchall()
    ended = sum(status == "interrupted" and finished is not None for status, finished in rows)
    return {"took": took, "code": code, "left": left, "ended": ended}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--fleetd", default=FLEETD, help="the fleetd executable (default: next to this python)")
    parser.add_argument("--pythonpath", help="put DIR first on PYTHONPATH for the daemon and the CLI")
    parser.add_argument("--deadline", type=float, default=300, help="bound on every wait, in seconds")
    args = parser.parse_args()
    bench = Bench(args.fleetd, args.pythonpath, args.deadline)
    try:
        where = bench.code_location()
        first = bench.start_daemon()
        bench.wait("the daemon's socket", lambda: bench.health(first) is not None)
        crashed_runs, crashed_pids = bench.fire_stubborn(args.runs, first=True)
        first.kill()
        first.wait(10)
        rec = recover(bench, crashed_runs, crashed_pids)
        st = None
        if rec["ok"] is not None:
            stopped_runs, stopped_pids = bench.fire_stubborn(args.runs, first=False)
            st = stop(bench, rec["proc"], stopped_runs, stopped_pids)
    finally:
        bench.cleanup()

    d, n, limit = args.deadline, args.runs, timeout_stop_sec()
    print(f"fleetd at {where}: {n} stubborn runs in flight, --kill-grace {KILL_GRACE} --stop-grace {STOP_GRACE}")
    print("kill -9, then a new daemon (seconds from its spawn):")
    row("socket answers (daemon status exits 0)", seconds(rec["answered"], d))
    if rec["has_status"]:
        row('daemon status --json says "ok"', seconds(rec["ok"], d))
    else:
        row("recovered (no status field: when it answers)", seconds(rec["ok"], d))
    row(f"every leftover process gone ({len(crashed_pids)} pids)", seconds(rec["gone"], d))
    row("runs interrupted with finished_at", f"{rec['ended']}/{n}" if rec["answered"] is not None else "n/a")
    if st is None:
        print("SIGTERM with runs in flight: not measured (the new daemon never recovered)")
        return
    print(f"SIGTERM with {n} runs in flight:")
    verdict = "" if limit is None or st["took"] is None else ("within" if st["took"] <= limit else "OVER")
    row(f"daemon exited (exit code {st['code']})", seconds(st["took"], d), f"{verdict} TimeoutStopSec={limit}")
    row("run processes alive when it exited", f"{st['left']}/{len(stopped_pids)}")
    row("runs interrupted with finished_at", f"{st['ended']}/{n}")


def row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<46}{value:>9}" + (f"   {note}" if note else ""))


if __name__ == "__main__":
    main()
