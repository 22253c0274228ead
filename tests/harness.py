"""A real fleetd daemon in a subprocess, driven through the real CLI, with deadline-based waits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
FLEETD = shutil.which("fleetd", path=str(Path(sys.executable).parent)) or "fleetd"
STANDIN_BIN = Path(__file__).resolve().parent / "standins" / "bin"


CAPTURES = Path(__file__).resolve().parent / "fixtures" / "captures"


def captures_dir() -> Path:
    """The captures of the real CLIs the tests replay: tests/fixtures/captures, or FLEETD_CAPTURES."""
    override = os.environ.get("FLEETD_CAPTURES")
    return Path(override) if override else CAPTURES


def capture_folder(name: str) -> Path:
    """One capture's folder. A missing one is a failure, never a skip: a clone must run what CI runs."""
    folder = captures_dir() / name
    if not folder.is_dir():
        raise AssertionError(f"capture folder {folder} is missing (tests/fixtures/captures, or FLEETD_CAPTURES)")
    return folder


def standin_env(standin_dir: Path, bin_dir: Path = STANDIN_BIN) -> dict[str, str]:
    """What a daemon needs to run the stand-in CLIs: them first on PATH, their scenario directory, the
    captures they replay, and API keys in the opt-in file store (no keyring in tests)."""
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STANDIN_DIR": str(standin_dir),
        "STANDIN_CAPTURES": str(captures_dir()),
        "FLEETD_SECRET_STORE": "file",
    }


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Daemon:
    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "FLEETD_HOME": str(home), "FLEETD_LOG_LEVEL": "INFO"}
        self.env.pop("NOTIFY_SOCKET", None)

    @property
    def socket(self) -> Path:
        return self.home / "run" / "fleetd.sock"

    def start(self, until: str = "ok") -> Daemon:
        """Start it and wait until `daemon status` says `until` ("ok": recovered and scheduling;
        "answers": the socket answers, whatever the status)."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "daemon-test.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [FLEETD, "daemon", "run", *self.args],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        wait_until(lambda: self._answers(until), timeout=20, what=f"daemon status {until}")
        return self

    def status(self) -> str | None:
        """The health status ("ok", "recovering"), or None while the socket does not answer."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
        status = self.cli("daemon", "status", "--json", check=False)
        return json.loads(status.stdout)["status"] if status.returncode == 0 else None

    def _answers(self, until: str) -> bool:
        status = self.status()
        return status is not None and (until == "answers" or status == until)

    def log_text(self) -> str:
        try:
            return (self.home / "daemon-test.log").read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([FLEETD, *args], env=self.env, capture_output=True, text=True, input=input, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"fleetd {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def runs(self, *filters: str) -> list[dict[str, Any]]:
        return self.json("runs", "list", "--limit", "1000", *filters)  # type: ignore[no-any-return]

    def wait_run(self, run_id: int, timeout: float = 30) -> dict[str, Any]:
        """The run once it is neither running nor waiting."""
        return wait_until(
            lambda: (r := self.json("runs", "show", str(run_id)))["status"] not in ("running", "waiting") and r,
            timeout=timeout,
            what=f"run {run_id} to finish",
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"daemon ignored SIGTERM for {timeout}s:\n{self.log_text()}") from None
