"""A minimal HTTP/1.1 client over the daemon's Unix socket.

Stdlib sockets only: `http.client` imports `ssl` and costs ~20 ms per CLI invocation, and the CLI's
start-up time is most of a command's latency. One request per connection (`Connection: close`);
bodies are either Content-Length or chunked (streamed logs).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class CliError(Exception):
    """Printed as one line; `exit_code` 2 for bad input, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class DaemonNotRunning(CliError):
    def __init__(self, socket_path: Path) -> None:
        super().__init__(f"fleetd daemon is not running (socket {socket_path}); start it with `fleetd daemon start`")


class Response:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file: IO[bytes] = sock.makefile("rb")
        status_line = self._file.readline(65536).decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise CliError("fleetd daemon sent an unreadable answer")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        while (line := self._file.readline(65536)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def chunks(self) -> Iterator[bytes]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self._file.readline(1024)
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = self._file.read(size)
                self._file.readline(8)
                yield data
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            while remaining > 0 and (data := self._file.read1(min(remaining, 65536))):
                remaining -= len(data)
                yield data
        else:
            while data := self._file.read1(65536):
                yield data

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def close(self) -> None:
        self._file.close()
        self._sock.close()


class Client:
    def __init__(self, socket_path: Path, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _send(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Response:
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: fleetd\r\nConnection: close\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(payload)}\r\n\r\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket_path))
            sock.sendall(head.encode() + payload)
            return Response(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise DaemonNotRunning(self.socket_path) from None
        except TimeoutError:
            sock.close()
            raise CliError(f"fleetd daemon did not answer in time (socket {self.socket_path})") from None
        except OSError as e:
            sock.close()
            raise CliError(f"cannot talk to the fleetd daemon at {self.socket_path}: {e}") from None

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        if query:
            path += "?" + "&".join(f"{quote(str(k))}={quote(str(v))}" for k, v in query.items() if v is not None)
        resp = self._send(method, path, body, self.timeout)
        try:
            raw = resp.read()
        except (TimeoutError, OSError, ValueError) as e:
            raise CliError(f"fleetd daemon answer was cut short: {e}") from None
        finally:
            resp.close()
        return _decode(resp.status, raw)

    def stream(self, path: str) -> Iterator[bytes]:
        resp = self._send("GET", path, None, self.timeout)
        resp._sock.settimeout(None)  # a followed log may stay quiet for a long time
        try:
            if resp.status >= 400:
                _decode(resp.status, resp.read())
            yield from resp.chunks()
        finally:
            resp.close()

    def ping(self) -> dict[str, Any] | None:
        try:
            return self.call("GET", "/v1/health")  # type: ignore[no-any-return]
        except CliError:
            return None


def segment(value: str) -> str:
    return quote(value)


def _decode(status: int, raw: bytes) -> Any:
    try:
        data = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        raise CliError(f"fleetd daemon sent an unreadable answer (HTTP {status})") from None
    if status >= 400:
        err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
        message = err.get("message") or f"HTTP {status}"
        raise CliError(message, exit_code=2 if status == 400 else 1)
    return data


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote(value: str) -> str:
    """Percent-encode all but RFC 3986's unreserved characters (urllib.parse.quote with safe="", without
    importing urllib.parse and ipaddress on every CLI call)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in value.encode("utf-8", "surrogatepass"))
