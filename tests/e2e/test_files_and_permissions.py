"""Files and directories under the daemon: a run log deleted under a live run, a finished run's log gone,
a --config-dir fleetd must not take over, and a connection from another user."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from tests.harness import Daemon, wait_until


def test_a_logs_directory_deleted_mid_run_is_recreated_with_the_output(daemon: Daemon, tmp_path: Path) -> None:
    flag = tmp_path / "go-on"
    script = f"echo first; while [ ! -e {flag} ]; do sleep 0.02; done; echo second"
    daemon.cli("loop", "add", "cleaned", "--every", "1h", "--command", f"sh -c '{script}'")
    run = daemon.json("loop", "run", "cleaned")
    wait_until(lambda: "first" in daemon.cli("runs", "logs", str(run["id"])).stdout, what="the first line")
    shutil.rmtree(daemon.home / "logs" / "runs")
    flag.touch()
    assert daemon.wait_run(run["id"])["status"] == "succeeded"
    logs = daemon.cli("runs", "logs", str(run["id"]))
    assert logs.stdout.startswith("first\n")
    assert "[fleetd] this log file was deleted while the run was writing it: recreated it" in logs.stdout
    assert logs.stdout.rstrip().endswith("second")
    assert Path(daemon.json("runs", "show", str(run["id"]))["log_path"]).is_file()


def test_runs_logs_of_a_finished_run_whose_file_is_gone_says_so(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "gone", "--every", "1h", "--command", "echo hello")
    run = daemon.wait_run(daemon.json("loop", "run", "gone")["id"])
    Path(run["log_path"]).unlink()
    result = daemon.cli("runs", "logs", str(run["id"]), check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        f"fleetd: run {run['id']}'s log file {run['log_path']} is missing (deleted?): its output is lost"
    )


def test_config_dir_is_never_chmod_ed_nor_created_as_a_tree(daemon: Daemon, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    add = ("profile", "add", "--backend", "claude_code", "--config-dir")
    result = daemon.cli(*add, str(shared), "p-shared", check=False)
    assert result.returncode == 2, result.stderr
    assert f"refusing to use {shared} as the config directory of profile p-shared" in result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777

    deep = tmp_path / "no" / "such" / "tree"
    result = daemon.cli(*add, str(deep), "p-deep", check=False)
    assert result.returncode == 2 and f"its parent {deep.parent} does not exist" in result.stderr
    assert not (tmp_path / "no").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    os.chmod(mine, 0o755)
    daemon.cli(*add, str(mine), "p-mine")
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755  # the user's directory keeps the user's mode

    fresh = tmp_path / "fresh"
    daemon.cli(*add, str(fresh), "p-fresh")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700  # made by fleetd: private
    names = {p["name"] for p in daemon.json("profile", "list")}
    assert {"p-mine", "p-fresh"} <= names and not {"p-shared", "p-deep"} & names


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root (the unit test covers the rule)")
def test_a_connection_from_another_uid_is_dropped(daemon: Daemon) -> None:
    # Loosen what normally keeps other users out, so only the peer check is left to stop them.
    loosened = [(p, stat.S_IMODE(p.stat().st_mode)) for p in (daemon.home.parent, daemon.home, daemon.socket.parent)]
    for path, mode in loosened:
        os.chmod(path, mode | 0o011)
    os.chmod(daemon.socket, 0o666)
    try:
        pid = os.fork()
        if pid == 0:  # the child becomes `nobody` and asks for the daemon's health
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(10)
                    s.connect(str(daemon.socket))
                    try:
                        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        code = 0 if s.recv(100) == b"" else 1  # closed without an answer
                    except (BrokenPipeError, ConnectionResetError):
                        code = 0  # closed even before the request was read
            except OSError:
                code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # 1: it answered; 2: could not even connect
        assert daemon.cli("daemon", "status").returncode == 0  # our own uid still gets in
        assert "dropped a connection from uid 65534" in daemon.log_text()
    finally:
        os.chmod(daemon.socket, 0o600)
        for path, mode in loosened:
            os.chmod(path, mode)
