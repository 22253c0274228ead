from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon


@pytest.fixture
def short_home() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes: keep homes short, not under pytest's deep tmp.
    path = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_daemon(short_home: Path) -> Iterator[type]:
    started: list[Daemon] = []

    def factory(*args: str) -> Daemon:
        daemon = Daemon(short_home / "home", "--kill-grace", "0.5s", *args)
        started.append(daemon)
        return daemon.start()

    yield factory  # type: ignore[misc]
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One daemon shared by a module's tests; tests use distinct loop names."""
    path = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    d = Daemon(path / "home", "--kill-grace", "0.5s", "--stop-grace", "2s").start()
    yield d
    d.stop()
    shutil.rmtree(path, ignore_errors=True)
