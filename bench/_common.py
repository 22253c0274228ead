"""Shared bench plumbing: a throwaway daemon and a timer for whole commands."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
FLEETD = shutil.which("fleetd", path=str(BIN)) or "fleetd"


def time_command(argv: list[str], env: dict[str, str], repeat: int) -> float:
    """Median wall time of a fresh process, in milliseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def first_and_later(sock_path: Path, path: str, repeat: int) -> tuple[float, float]:
    """The first call after the daemon starts, and the median of `repeat` calls after it, in milliseconds."""
    first = time_api(sock_path, path, 1)
    return first, statistics.median([time_api(sock_path, path, 1) for _ in range(repeat)])


def time_api(sock_path: Path, path: str, repeat: int) -> float:
    """Median of one HTTP request over the Unix socket, connect to last byte, in milliseconds."""
    request = f"GET {path} HTTP/1.1\r\nHost: fleetd\r\nConnection: close\r\n\r\n".encode()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(sock_path))
            sock.sendall(request)
            # A bytearray: `bytes +=` copies all received so far at every chunk (~75 ms of this process's CPU for a
            # 4 MB answer in 64 KB chunks, on the cores the daemon needs), which the daemon's time then included.
            answer = bytearray()
            while data := sock.recv(1 << 20):
                answer += data
        samples.append((time.perf_counter() - start) * 1000)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"GET {path} failed: {answer[:300]!r}")
    return statistics.median(samples)


class ThrowawayDaemon:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="flb-", dir="/tmp"))
        self.env = {**os.environ, "FLEETD_HOME": str(self.dir / "home")}
        self.proc: subprocess.Popen[bytes] | None = None

    def with_database(
        self, fill: Callable[[Path], None], keep: Path | None, reuse: Callable[[Path], bool] = Path.exists
    ) -> float:
        """Make the daemon's home and its database: a copy of `keep` when `reuse(keep)`, else one `fill` writes (kept
        at `keep` for the next run). Returns the seconds that took."""
        home = Path(self.env["FLEETD_HOME"])
        home.mkdir(parents=True)
        start = time.perf_counter()
        if keep is not None and reuse(keep):
            shutil.copy(keep, home / "fleetd.db")
        else:
            fill(home / "fleetd.db")
            if keep is not None:
                shutil.copy(home / "fleetd.db", keep)
        return time.perf_counter() - start

    def start(self, *args: str) -> ThrowawayDaemon:
        subprocess.run([FLEETD, "daemon", "start", *args], env=self.env, check=True, stdout=subprocess.DEVNULL)
        return self

    def cli(self, *args: str) -> None:
        subprocess.run([FLEETD, *args], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def close(self) -> None:
        subprocess.run([FLEETD, "daemon", "stop"], env=self.env, check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


RESULTS = Path(__file__).resolve().parent / "results"  # git-ignored


def counts(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """A comma-separated list of positive whole numbers given to `flag`, or the parser's usage error."""
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        parser.error(f"{flag}: not a list of numbers: {text!r}")
    if any(n < 1 for n in numbers):
        parser.error(f"{flag} must be positive")
    return numbers


def write_json(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    """The bench's figures as JSON (bench/results/NAME.json unless `path`); returns where."""
    target = path or RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2) + "\n")
    return target


def with_pythonpath(env: dict[str, str], pythonpath: str | None) -> dict[str, str]:
    """`env` with `pythonpath` first on PYTHONPATH: the daemon and the CLI then run that checkout
    (`git worktree add /tmp/x main`, then `--pythonpath /tmp/x` measures main)."""
    if not pythonpath:
        return env
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)}
