from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.daemon.notify import sd_notify


@pytest.fixture
def receiver(short_home: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound at a filesystem path, like systemd's notify socket."""
    path = str(short_home / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_returns_false_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sd_notify("READY=1") is False


def test_sends_state_to_path_socket(monkeypatch: pytest.MonkeyPatch, receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sd_notify("READY=1") is True
    assert sock.recv(4096) == b"READY=1"
    assert sd_notify("STOPPING=1\nSTATUS=draining runs") is True
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining runs"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix sockets are Linux-only")
def test_sends_state_to_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"fleetd-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


def test_returns_false_when_nobody_listens(monkeypatch: pytest.MonkeyPatch, short_home: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_home / "missing.sock"))
    assert sd_notify("READY=1") is False


def test_returns_false_when_socket_is_closed(
    monkeypatch: pytest.MonkeyPatch, receiver: tuple[socket.socket, str]
) -> None:
    sock, path = receiver
    sock.close()  # the path stays, nobody receives: connect is refused
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sd_notify("READY=1") is False


@pytest.mark.parametrize("address", ["vsock:2:1234", "relative.sock", "/nul\0byte"])
def test_returns_false_for_unusable_addresses(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    if "\0" in address:
        # os.environ refuses NUL bytes; patch the lookup instead.
        monkeypatch.setattr(os, "environ", {"NOTIFY_SOCKET": address})
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sd_notify("READY=1") is False
