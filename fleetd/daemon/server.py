"""uvicorn on a Unix socket we bind ourselves (mode 0600 in a private directory), without uvicorn's
own signal handling: the daemon owns SIGTERM. Connections from another user are dropped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fleetd.daemon.startup import StartupError

log = logging.getLogger("fleetd.daemon")


class SocketServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _cut_at_the_stop(record: logging.LogRecord) -> bool:
    """uvicorn's ERROR for the answers a stop's grace cuts ("Cancel 2 running task(s), timeout graceful shutdown
    exceeded": gateway calls, API followers), the expected end of a stop, said as a warning in the daemon's words."""
    if record.levelno >= logging.ERROR and "timeout graceful shutdown exceeded" in record.getMessage():
        count = record.args[0] if isinstance(record.args, tuple) and record.args else "some"
        record.msg, record.args = "%s answer(s) still under way at the end of the stop grace: cut", (count,)
        record.levelno, record.levelname, record.name = logging.WARNING, "WARNING", "fleetd.daemon"
    return True


def uvicorn_logging() -> None:
    """uvicorn logs through the daemon's own handler (its time, format and filters): its default config gave lines
    with no time. Once per process."""
    error = logging.getLogger("uvicorn.error")
    if _cut_at_the_stop not in error.filters:
        error.addFilter(_cut_at_the_stop)


def peer_allowed(peer_uid: int | None, own_uid: int) -> bool:
    """Only the daemon's own user may talk to it. The socket's mode already says so; this is defence in
    depth against a loosened mode or directory. An unknown peer (no way to ask on this platform) is left
    to the file permissions."""
    return peer_uid is None or peer_uid == own_uid


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket, if the platform can tell."""
    try:
        if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid_t pid; uid_t uid; gid_t gid}
            _pid, uid, _gid = struct.unpack("iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            return uid
        if sys.platform == "darwin":  # getpeereid(3) is LOCAL_PEERCRED: struct xucred {u_int version; uid_t uid; ...}
            sol_local, local_peercred = 0, 1
            _version, uid = struct.unpack("2I", sock.getsockopt(sol_local, local_peercred, 76)[:8])
            return uid
    except OSError:
        return None
    return None


class PeerCheckedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection from another uid before reading a byte of it."""

    warned: set[int | None] = set()  # one line per foreign uid, so a hostile peer cannot flood the log

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if peer_allowed(uid, os.geteuid()):
            return
        if uid not in self.warned:
            self.warned.add(uid)
            log.warning("dropped a connection from uid %s: only uid %s may use this daemon", uid, os.geteuid())
        transport.close()


def bind_unix_socket(path: Path) -> socket.socket:
    """Bind the daemon's socket; its directory was prepared by `Paths.ensure` (private, ours)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a dead daemon; the instance lock says none is alive
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on the socket {path}: {e.strerror or e}") from None
    return sock


FOLLOWERS_GRACE = 2.0  # seconds open answers get once the daemon stops serving


def make_server(app: object) -> SocketServer:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=PeerCheckedH11Protocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        # A follower (`events --follow`, `runs logs --follow`) never closes its stream by itself: without
        # this, one left open kept a stopping daemon alive for good. Its client says the daemon went away.
        timeout_graceful_shutdown=FOLLOWERS_GRACE,
        log_config=None,  # its loggers reach the daemon's handler (`uvicorn_logging`)
    )
    uvicorn_logging()
    return SocketServer(config)
