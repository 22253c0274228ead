"""The CLI's client when the daemon goes away: what it says names what happened."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from fleetd.cli.client import Client, CliError


def test_a_daemon_that_closes_before_it_answers_went_away(short_home: Path) -> None:
    """A daemon killed while it handled the request (`loop stop` waiting out a grace) closes the connection with
    no answer: that was "sent an unreadable answer", as if the daemon spoke garbage."""
    path = short_home / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def accept_and_close() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    closer = threading.Thread(target=accept_and_close)
    closer.start()
    try:
        with pytest.raises(CliError) as raised:
            Client(path, timeout=10).call("POST", "/v1/loops/x/stop")
    finally:
        closer.join(10)
        server.close()
    assert raised.value.message == "the fleetd daemon went away before it answered (connection closed)"
