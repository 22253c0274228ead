"""`fleetd.cli.common.show`, how `loop list` prints: the daemon's bytes as they come when the daemon says it
laid them out as --json does, and otherwise (an older daemon still running, an error) as every command does."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.cli.client import CliError
from fleetd.cli.common import show

LOOPS = [{"name": "café", "enabled": True, "env": {}, "timeout_s": 1.5}]


class _Daemon:
    """Answers each connection with one canned HTTP answer, and keeps the request lines it got."""

    def __init__(self, path: Path) -> None:
        self.requests: list[str] = []
        self.answer = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def reply(self, status: str, body: bytes, *headers: str) -> None:
        head = [f"HTTP/1.1 {status}", "content-type: application/json", f"content-length: {len(body)}", *headers]
        self.answer = ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                self.requests.append(request.split(b"\r\n")[0].decode())
                conn.sendall(self.answer)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def daemon(short_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Daemon]:
    (short_home / "run").mkdir()
    monkeypatch.setenv("FLEETD_HOME", str(short_home))
    stub = _Daemon(short_home / "run" / "fleetd.sock")
    yield stub
    stub.close()


def test_laid_out_answer_is_printed_as_it_comes(daemon: _Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.reply("200 OK", b"[the daemon's own bytes]", "X-Fleetd-Indent: 2")
    show("/v1/loops", True, lambda loops: "text")
    assert capsys.readouterr().out == "[the daemon's own bytes]\n"
    assert daemon.requests == ["GET /v1/loops?indent=2 HTTP/1.1"]


def test_an_answer_not_laid_out_is_printed_as_every_json(daemon: _Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.reply("200 OK", json.dumps(LOOPS, separators=(",", ":"), ensure_ascii=False).encode())
    show("/v1/loops", True, lambda loops: "text")
    assert capsys.readouterr().out == json.dumps(LOOPS, indent=2) + "\n"


def test_text_asks_for_the_compact_answer(daemon: _Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.reply("200 OK", json.dumps(LOOPS).encode())
    show("/v1/loops", False, lambda loops: f"{len(loops)} loop: {loops[0]['name']}")
    assert capsys.readouterr().out == "1 loop: café\n"
    assert daemon.requests == ["GET /v1/loops HTTP/1.1"]


def test_an_error_is_the_daemons_one_line(daemon: _Daemon) -> None:
    error = {"error": {"code": "store_unavailable", "message": "the database cannot be read: disk full"}}
    daemon.reply("503 Service Unavailable", json.dumps(error).encode(), "X-Fleetd-Indent: 2")
    with pytest.raises(CliError, match=r"^the database cannot be read: disk full$"):
        show("/v1/loops", True, lambda loops: "text")
