"""The daemon's socket serves only its own user: the decision, the uid a real socket reports, and the
protocol closing a connection from anyone else."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from fleetd.daemon import server
from fleetd.daemon.server import peer_allowed, peer_uid


@pytest.mark.parametrize(
    ("peer", "own", "allowed"),
    [(1000, 1000, True), (0, 0, True), (1001, 1000, False), (0, 1000, False), (1000, 0, False), (None, 1000, True)],
)
def test_peer_allowed(peer: int | None, own: int, allowed: bool) -> None:
    assert peer_allowed(peer, own) is allowed


def test_a_real_unix_socket_reports_our_own_uid() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.geteuid()


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"socket": self.sock}.get(name, default)

    def close(self) -> None:
        self.closed = True

    def __getattr__(self, name: str) -> Any:  # what uvicorn asks of a transport and we do not care about
        return lambda *a, **k: None


def _connect(monkeypatch: pytest.MonkeyPatch, uid: int) -> bool:
    import uvicorn
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a request must not reach the app")

    monkeypatch.setattr(server, "peer_uid", lambda sock: uid)
    config = uvicorn.Config(app, http=server.PeerCheckedH11Protocol)
    config.load()
    loop = asyncio.new_event_loop()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        protocol = server.PeerCheckedH11Protocol(config, ServerState(), {}, _loop=loop)
        transport = _Transport(a)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return not transport.closed
    finally:
        a.close()
        b.close()
        loop.close()


def test_a_connection_from_another_uid_is_closed_and_our_own_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _connect(monkeypatch, os.geteuid()) is True
    assert _connect(monkeypatch, os.geteuid() + 4242) is False
