"""The OpenAI-compatible HTTP adapter end to end against a loopback server: what each failure is called."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.base import AttemptContext
from fleetd.backends.openai_compat import OpenAICompatAdapter
from fleetd.records.loop import Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput
from fleetd.records.task import Task
from tests.integration.fake_provider import FakeProvider, running_fake_provider

NOW = datetime(2026, 11, 30, 3, 40, tzinfo=UTC)
TZ = ZoneInfo("UTC")


def call(base_url: str, tmp_path: Path, timeout: float = 10.0) -> ParsedOutput:
    loop = Loop(name="l", schedule=Schedule("every", "1h", "UTC"), backend="openai_compat", prompt="hi")
    profile = Profile(name="p", backend="openai_compat", tier="local", config_dir=str(tmp_path), base_url=base_url)
    ctx = AttemptContext(
        run_id=1, task=Task.of(loop), prompt="hi", profile=profile, secret="sk-x", model="m", tmpdir=str(tmp_path)
    )
    return asyncio.run(OpenAICompatAdapter().call(ctx, lambda data: None, timeout, NOW, TZ))


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with running_fake_provider() as provider:
        yield provider


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("529", "transient"),  # the OpenAI shape of "overloaded": 503
        ("500", "transient"),
        ("bad_key", "auth"),
        ("bad_request", "contract"),
        ("model_not_found", "contract"),
        ("quota", "quota"),  # 429 insufficient_quota
    ],
)
def test_http_failure_classes(mode: str, expected: str, server: FakeProvider, tmp_path: Path) -> None:
    server.mode = mode
    parsed = call(server.base_url + "/v1", tmp_path)
    assert (parsed.outcome, parsed.error_class) == ("failed", expected), parsed.message
    assert parsed.reset_at is None


def test_429_takes_its_reset_from_retry_after(server: FakeProvider, tmp_path: Path) -> None:
    server.mode = "429"
    parsed = call(server.base_url + "/v1", tmp_path)
    assert (parsed.outcome, parsed.error_class, parsed.reset_at) == ("failed", "rate_limited", NOW + timedelta(0, 1))


def test_a_lone_529_then_success(server: FakeProvider, tmp_path: Path) -> None:
    server.fail_first(1, "529")
    assert call(server.base_url + "/v1", tmp_path).error_class == "transient"
    assert call(server.base_url + "/v1", tmp_path).outcome == "succeeded"


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call: nothing listens there
    parsed = call(f"http://127.0.0.1:{port}/v1", tmp_path)
    assert (parsed.outcome, parsed.error_class) == ("failed", "transient"), parsed.message


def test_no_answer_in_time_is_transient(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # the kernel accepts the connection (backlog); nobody ever answers
        parsed = call(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", tmp_path, timeout=0.3)
    assert (parsed.outcome, parsed.error_class) == ("failed", "transient")
    assert parsed.message is not None and "in time" in parsed.message


@pytest.mark.parametrize("base_url", ["127.0.0.1:8000/v1", "ftp://127.0.0.1/v1", "http://[::1/v1"])
def test_a_base_url_that_cannot_be_called_makes_the_profile_unavailable(base_url: str, tmp_path: Path) -> None:
    parsed = call(base_url, tmp_path)
    assert (parsed.outcome, parsed.error_class) == ("failed", "unavailable"), parsed.message
