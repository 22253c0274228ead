"""The gateway's stack (aiohttp, the proxy, the protocols) loads only when the gateway listens: a daemon
that never serves it does not pay its start-up time or its memory."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Daemon


def _loaded(pid: int, needle: str) -> bool:
    """Whether the process has a shared object whose path holds `needle` mapped (aiohttp's C parser)."""
    return needle in Path(f"/proc/{pid}/maps").read_text()


def test_aiohttp_loads_only_once_the_gateway_listens(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "home").start()
    try:
        pid = d.json("daemon", "status")["pid"]
        assert not _loaded(pid, "/aiohttp/")
        d.cli("gateway", "enable", "--listen", "127.0.0.1:0")
        assert d.json("gateway", "status")["enabled"] is True
        assert _loaded(pid, "/aiohttp/")  # the check sees it when it is there
    finally:
        d.stop()
