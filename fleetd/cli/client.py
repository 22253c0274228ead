"""A minimal HTTP/1.1 client over the daemon's Unix socket.

Its imports are most of a short command's latency, so it loads almost nothing: `_socket` (the C
module under `socket`, whose Python layer pulls in `selectors`, `array` and `enum` helpers), `io`
(loaded at start-up anyway), and `json` and `urllib.parse` only where a call needs them; `http.client`
would import `ssl`. One request per connection (`Connection: close`); bodies are either Content-Length
or chunked (streamed logs).
"""

from __future__ import annotations

import _socket
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from os import PathLike

    SocketPath = str | PathLike[str]


class CliError(Exception):
    """Printed as one line; `exit_code` 2 for bad input, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class DaemonNotRunning(CliError):
    def __init__(self, socket_path: SocketPath) -> None:
        super().__init__(f"the daemon is not running (socket {socket_path}); start it with `fleetd daemon start`")


class StreamCut(CliError):
    """The daemon's answer stopped before its end: the daemon went away (killed, crashed, stopped)."""

    def __init__(self) -> None:
        super().__init__("the fleetd daemon went away mid-answer (connection closed)")


class _SocketReader(io.RawIOBase):
    """The socket as a raw stream, for `io.BufferedReader`'s readline and read (what `socket.makefile` does)."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


class Response:
    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._file = io.BufferedReader(_SocketReader(sock))
        status_line = self._file.readline(65536).decode("latin-1")
        if not status_line:  # closed with no answer at all: killed or crashed while it handled the request
            raise CliError("the fleetd daemon went away before it answered (connection closed)")
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
            # A chunked answer ends with a chunk of size 0: EOF before it means the daemon went away.
            while True:
                try:
                    size_line = self._file.readline(1024)
                    if not size_line:
                        raise StreamCut()
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        return
                    data = self._file.read(size)
                    self._file.readline(8)
                except (OSError, ValueError):  # reset by the peer; a torn size line
                    raise StreamCut() from None
                if len(data) < size:
                    raise StreamCut()
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


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def decoded(self) -> Any:
        """The JSON body; an error status raised as the CliError the daemon's message says."""
        return _decode(self.status, self.body)


class Client:
    def __init__(self, socket_path: SocketPath, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _send(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Response:
        payload = b""
        if body is not None:
            import json

            payload = json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: fleetd\r\nConnection: close\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(payload)}\r\n\r\n"
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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
            from fleetd.paths import socket_path_problem

            if problem := socket_path_problem(str(self.socket_path)):
                raise CliError(problem) from None
            raise CliError(f"cannot talk to the fleetd daemon at {self.socket_path}: {e}") from None

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        if query:
            from urllib.parse import urlencode

            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return self.request(method, path, body).decoded()

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        """One exchange, the answer's body read whole and not decoded; an error status is the caller's."""
        resp = self._send(method, path, body, self.timeout)
        try:
            return Answer(resp.status, resp.headers, resp.read())
        except (TimeoutError, OSError, ValueError) as e:
            raise CliError(f"fleetd daemon answer was cut short: {e}") from None
        finally:
            resp.close()

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
    from urllib.parse import quote

    return quote(value, safe="")


def _decode(status: int, raw: bytes) -> Any:
    import json

    try:
        data = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        raise CliError(f"fleetd daemon sent an unreadable answer (HTTP {status})") from None
    if status >= 400:
        err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
        message = err.get("message") or f"HTTP {status}"
        raise CliError(message, exit_code=2 if status == 400 else 1)
    return data
