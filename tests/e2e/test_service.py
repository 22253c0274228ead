"""The daemon tells systemd it is ready only once its socket answers; `service install --print`."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.harness import FLEETD, Daemon


def test_daemon_sends_ready_after_the_socket_answers_and_stopping_on_sigterm(short_home: Path) -> None:
    notify_path = short_home / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    d = Daemon(short_home / "home")
    d.env["NOTIFY_SOCKET"] = str(notify_path)
    try:
        d.start()
        assert listener.recv(1024) == b"READY=1"
        assert d.cli("daemon", "status").returncode == 0
        assert d.stop() == 0
        assert listener.recv(1024) == b"STOPPING=1"
        assert not d.socket.exists()  # removed on a clean stop
    finally:
        d.stop()
        listener.close()


def test_service_install_print_fills_in_the_installed_fleetd(short_home: Path) -> None:
    d = Daemon(short_home / "home")
    result = d.cli("service", "install", "--print")
    assert f"ExecStart={FLEETD} daemon run" in result.stdout
    assert f"Environment=FLEETD_HOME={d.home}" in result.stdout
    assert "Type=notify" in result.stdout and "KillMode=mixed" in result.stdout
    # The PATH of the shell that installs it, so the agent CLIs found there are found by the service too.
    recorded = ":".join(dict.fromkeys(p for p in d.env["PATH"].split(":") if p.startswith("/")))  # each dir once
    assert f"Environment=PATH={recorded}" in result.stdout.splitlines()
