"""The child's base environment is cached (`executor._daemon_env`), but never stale."""

from __future__ import annotations

import os

import pytest

from fleetd.loops.executor import _daemon_env


def test_daemon_env_follows_changes_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    first = _daemon_env()
    assert first == dict(os.environ)
    monkeypatch.setenv("FLEETD_TEST_CACHED_ENV", "one")
    assert _daemon_env()["FLEETD_TEST_CACHED_ENV"] == "one"
    monkeypatch.setenv("FLEETD_TEST_CACHED_ENV", "two")  # same keys, another value
    assert _daemon_env()["FLEETD_TEST_CACHED_ENV"] == "two"
    monkeypatch.delenv("FLEETD_TEST_CACHED_ENV")
    assert "FLEETD_TEST_CACHED_ENV" not in _daemon_env()


def test_daemon_env_is_the_callers_own_copy() -> None:
    env = _daemon_env()
    env["FLEETD_TEST_SCRIBBLE"] = "x"
    assert "FLEETD_TEST_SCRIBBLE" not in _daemon_env()
    assert "FLEETD_TEST_SCRIBBLE" not in os.environ
