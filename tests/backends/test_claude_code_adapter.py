"""What a Claude Code attempt is started with (argv and environment), built from a plain context."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.backends.base import AttemptContext
from fleetd.backends.claude_code import ClaudeCodeAdapter
from fleetd.records.loop import Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.records.task import Task


def context(tmp_path: Path, secret: str | None) -> AttemptContext:
    loop = Loop(name="fix", schedule=Schedule("every", "1h", "UTC"), backend="claude_code", prompt="hi")
    profile = Profile("cc", "claude_code", "subscription", str(tmp_path / "cc"))
    return AttemptContext(1, Task.of(loop), "hi", profile, secret, None, str(tmp_path / "tmp"))


@pytest.mark.parametrize("secret", [None, "sk-ant-api03-TEST"])
def test_attempts_make_no_nonessential_outside_connections(tmp_path: Path, secret: str | None) -> None:
    # Without it Claude Code 2.1.330 made 3 connections per run to api.anthropic.com besides its calls to
    # the profile's provider, even with ANTHROPIC_BASE_URL pointing elsewhere (measured behind a recording proxy).
    spec = ClaudeCodeAdapter().build(context(tmp_path, secret))
    assert spec.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert spec.env["CLAUDE_CODE_MAX_RETRIES"] == "0" and spec.env["DISABLE_AUTOUPDATER"] == "1"
    assert spec.env["CLAUDE_CONFIG_DIR"] == str(tmp_path / "cc")
