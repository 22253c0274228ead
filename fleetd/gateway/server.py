"""The gateway's listener: uvicorn on a TCP socket we bind ourselves (so `:0` works and its port is
known, and a bind failure is one clear line), inside the daemon's event loop, without uvicorn's own
signal handling (the daemon owns SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn

from fleetd.daemon.server import SocketServer, uvicorn_logging
from fleetd.errors import InvalidArgument
from fleetd.records.gateway import split_listen

START_TIMEOUT_S = 10.0


class GatewayListener:
    def __init__(self, app: object) -> None:
        self.app = app
        self.server: SocketServer | None = None
        self.task: asyncio.Task[None] | None = None
        self.sock: socket.socket | None = None
        self.address: str | None = None  # HOST:PORT as bound (the real port for :0)

    async def start(self, listen: str) -> str:
        host, port = split_listen(listen)
        sock = bind_tcp(host, port)
        config = uvicorn.Config(
            self.app,  # type: ignore[arg-type]
            lifespan="off",
            log_level="warning",
            log_config=None,  # its loggers reach the daemon's handler (daemon/server.uvicorn_logging)
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=30,
            # "auto": httptools (C, a dependency) parses a request in a fraction of h11's time; h11 without it.
            http="auto",
        )
        uvicorn_logging()
        server = SocketServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway")
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not server.started:
            if task.done() or asyncio.get_running_loop().time() > deadline:
                server.should_exit = True
                sock.close()
                raise InvalidArgument(f"the gateway could not start on {listen}")
            await asyncio.sleep(0.01)
        bound_host, bound_port = sock.getsockname()[:2]
        self.server, self.task, self.sock = server, task, sock
        self.address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        return self.address

    async def stop(self, grace: float | None = None) -> None:
        """No new connection; the calls in flight get `grace` seconds (None: as long as they take), then are
        cancelled (a call cancelled under way is recorded `interrupted`: journal.py)."""
        if self.server is None:
            return
        self.server.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]  # uvicorn's waits take floats
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.server = self.task = self.sock = None
        self.address = None


def bind_tcp(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise InvalidArgument(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise InvalidArgument(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock
