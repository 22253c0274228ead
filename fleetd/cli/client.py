"""A minimal HTTP client over the daemon's Unix socket (stdlib only: start-up time matters)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode


class CliError(Exception):
    """Printed as one line; `exit_code` 2 for bad input, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class DaemonNotRunning(CliError):
    def __init__(self, socket_path: Path) -> None:
        super().__init__(
            f"fleetd daemon is not running (socket {socket_path}); start it with `fleetd daemon start`"
        )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("fleetd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, socket_path: Path, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _send(self, method: str, path: str, body: Any = None, timeout: float | None = None):  # type: ignore[no-untyped-def]
        conn = _UnixConnection(self.socket_path, timeout if timeout is not None else self.timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            return conn, conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            raise DaemonNotRunning(self.socket_path) from None
        except TimeoutError:
            conn.close()
            raise CliError(f"fleetd daemon did not answer in time (socket {self.socket_path})") from None
        except OSError as e:
            conn.close()
            raise CliError(f"cannot talk to the fleetd daemon at {self.socket_path}: {e}") from None

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        conn, resp = self._send(method, path, body)
        try:
            raw = resp.read()
        finally:
            conn.close()
        return _decode(resp.status, raw)

    def stream(self, path: str) -> Iterator[bytes]:
        conn, resp = self._send("GET", path, timeout=None)
        try:
            if resp.status >= 400:
                _decode(resp.status, resp.read())
            while chunk := resp.read1(65536):
                yield chunk
        finally:
            conn.close()

    def ping(self) -> dict[str, Any] | None:
        try:
            return self.call("GET", "/v1/health")  # type: ignore[no-any-return]
        except CliError:
            return None


def segment(value: str) -> str:
    return quote(value, safe="")


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
