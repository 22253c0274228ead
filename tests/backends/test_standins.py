"""The stand-in CLIs (tests/standins) act out each failure so that the parsers read it as the real programs'.

The e2e and router tests drive the daemon with these stand-ins; if a stand-in's shape drifted from what the
real CLI prints, those tests would prove nothing. The real CLIs' output for the same cases is pinned in
test_classification.py and checked live in tests/integration/test_real_clis.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers import aider, claude_code, codex, gemini
from fleetd.records.result import ParsedOutput
from tests.harness import STANDIN_BIN, captures_dir

NOW = datetime(2026, 11, 30, 3, 40, tzinfo=UTC)
TZ = ZoneInfo("UTC")

ARGV = {
    "claude": ["-p", "--output-format", "stream-json", "--verbose", "--model", "claude-opus-5-5", "--", "x"],
    "codex": ["exec", "--json", "--skip-git-repo-check", "-m", "gpt-5.5", "--", "x"],
    "gemini": ["--prompt=x", "-o", "json", "-m", "gemini-2.5-pro"],
    "aider": ["--message=x", "--yes-always", "--no-pretty"],
}


def parse(cli: str, stdout: str, stderr: str, exit_code: int) -> ParsedOutput:
    if cli == "claude":
        return claude_code.parse_stream_json(stdout, stderr, exit_code, NOW, TZ)
    if cli == "codex":
        return codex.parse_exec_jsonl(stdout, stderr, exit_code, NOW, TZ)
    if cli == "gemini":
        return gemini.parse_json(stdout, stderr, exit_code, NOW, TZ)
    return aider.parse_output(stdout, stderr, exit_code, None, NOW, TZ)


@pytest.fixture
def standin_env(tmp_path: Path) -> dict[str, str]:
    if not (captures_dir() / "cc_ok_stream").is_dir():
        pytest.skip(f"captures not found at {captures_dir()} (set FLEETD_CAPTURES)")
    return {
        **os.environ,
        "STANDIN_DIR": str(tmp_path),
        "STANDIN_CAPTURES": str(captures_dir()),
        "STANDIN_TIME_SCALE": "0",  # Aider's back-off rounds without the waiting
        "FLEETD_PROFILE": "p1",
        "CODEX_HOME": str(tmp_path / "codex-home"),
    }


def run_standin(cli: str, env: dict[str, str], scenario: str) -> ParsedOutput:
    result = subprocess.run(
        [sys.executable, str(STANDIN_BIN / cli), *ARGV[cli]],
        env={**env, "STANDIN_SCENARIO": scenario},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return parse(cli, result.stdout, result.stderr, result.returncode)


CASES = [
    (cli, scenario, expected)
    for scenario, expected in [
        ("overloaded", "transient"),
        ("server_error", "transient"),
        ("crash_silent", "transient"),
        ("quota", "quota"),
        ("bad_key", "auth"),
        ("bad_request", "contract"),
        ("model_not_found", "contract"),
    ]
    for cli in ("claude", "codex", "gemini", "aider")
] + [
    ("claude", "refused", "transient"),
    ("gemini", "refused", "transient"),
    ("aider", "refused", "transient"),
    ("claude", "not_logged_in", "auth"),
    ("gemini", "bad_key_400", "auth"),
    ("gemini", "daily_quota", "rate_limited"),
]


@pytest.mark.parametrize(("cli", "scenario", "expected"), CASES)
def test_standin_failure_is_classified_like_the_real_cli(
    cli: str, scenario: str, expected: str, standin_env: dict[str, str]
) -> None:
    parsed = run_standin(cli, standin_env, scenario)
    assert (parsed.outcome, parsed.error_class) == ("failed", expected), parsed.message


def test_codex_refused_reconnects_until_it_is_stopped(standin_env: dict[str, str]) -> None:
    process = subprocess.Popen(
        [sys.executable, str(STANDIN_BIN / "codex"), *ARGV["codex"]],
        env={**standin_env, "STANDIN_SCENARIO": "refused"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if codex.live_failure(line) is not None:
            break
    assert process.poll() is None  # like the real one, it would go on reconnecting
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert codex.live_failure(lines[-1]) == "transient"
    assert parse("codex", "".join(lines), stderr, process.returncode).error_class == "transient"


@pytest.mark.parametrize("cli", ["claude", "codex", "gemini", "aider"])
def test_flaky_fails_n_times_then_succeeds(cli: str, standin_env: dict[str, str]) -> None:
    outcomes = [run_standin(cli, standin_env, "flaky 2") for _ in range(3)]
    assert [(p.outcome, p.error_class) for p in outcomes] == [
        ("failed", "transient"),
        ("failed", "transient"),
        ("succeeded", None),
    ]
    # The count is per profile: another profile starts its own.
    other = run_standin(cli, {**standin_env, "FLEETD_PROFILE": "p2"}, "flaky 2")
    assert (other.outcome, other.error_class) == ("failed", "transient")


def test_flaky_takes_its_count_and_failure_from_the_environment_or_the_scenario(standin_env: dict[str, str]) -> None:
    env = {**standin_env, "STANDIN_FAIL_TIMES": "1"}
    first, second = (run_standin("gemini", env, "flaky server_error") for _ in range(2))
    assert (first.error_class, first.message) == ("transient", "An internal error has occurred.")
    assert second.outcome == "succeeded"
