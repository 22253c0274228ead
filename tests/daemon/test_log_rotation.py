"""The daemon's own log rotates when the daemon owns the file (`daemon start`): size-capped, a few old
files, and the process's stdout/stderr follow each rotation. Run in a child process: the handler re-points
fds 1 and 2, which must not be pytest's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import Daemon, wait_until

CHILD = """
import logging, os, sys
from pathlib import Path
from fleetd.daemon.main import DaemonOptions, _setup_logging

_setup_logging(DaemonOptions(log_file=Path(sys.argv[1]), log_max_bytes=2000, log_backups=2))
log = logging.getLogger("fleetd.test")
for i in range(200):
    log.info("record %03d %s", i, "x" * 40)
    if i == 100:
        print("a stray line on stderr", file=sys.stderr, flush=True)
        os.write(1, b"a stray line on stdout\\n")
log.info("the last record")
print("the last stray line", file=sys.stderr, flush=True)
"""


def test_the_owned_log_is_size_capped_with_a_few_old_files(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", CHILD, str(log)], env=env, check=True, timeout=60)

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["daemon.log", "daemon.log.1", "daemon.log.2"]  # 200 records of ~90 bytes: rotated, capped
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2000 + 100
        assert (tmp_path / name).stat().st_mode & 0o077 == 0
    current = log.read_text()
    # What bypasses logging lands in the current file, not in a rotated one.
    assert "the last record" in current and current.rstrip().endswith("the last stray line")


def test_daemon_start_has_the_daemon_write_its_own_rotating_log(short_home: Path) -> None:
    daemon = Daemon(short_home / "home")
    daemon.home.mkdir(parents=True)
    daemon.cli("daemon", "start")
    try:
        pid = daemon.json("daemon", "status")["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        log = daemon.home / "logs" / "daemon.log"
        assert cmdline[cmdline.index(b"--log-file") + 1] == str(log).encode()
        assert os.readlink(f"/proc/{pid}/fd/2") == str(log)
        wait_until(lambda: "fleetd daemon ready" in log.read_text(), what="the ready line in daemon.log")
    finally:
        daemon.cli("daemon", "stop")
