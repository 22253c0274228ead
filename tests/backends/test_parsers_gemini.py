"""Gemini CLI forms beyond the captures: quota error classes, exit codes, stream errors, older stats."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers.gemini import is_rate_limit_line, parse_json, parse_stream_json
from fleetd.records.result import TokenUsage

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TZ = ZoneInfo("Europe/Berlin")
SID = "7cb2e026-0000-4000-8000-000000000002"
LOGS = "Warning: 256-color support not detected.\nRipgrep is not available. Falling back to GrepTool.\n"


def error_json(error: dict[str, object]) -> str:
    return json.dumps({"session_id": SID, "error": error}, indent=2)


def test_terminal_daily_quota_resets_at_pacific_midnight() -> None:
    # Requests-per-day lift by themselves at midnight Pacific time: a long rate limit, not quota.
    stderr = LOGS + error_json(
        {
            "type": "TerminalQuotaError",
            "message": "You have exhausted your daily quota on this model.",
            "code": 429,
        }
    )
    parsed = parse_json("", stderr, 173, NOW, TZ)
    midnight = datetime(2026, 3, 11, 0, 0, tzinfo=ZoneInfo("America/Los_Angeles"))  # NOW is 05:00 PDT on the 10th
    assert (parsed.outcome, parsed.error_class, parsed.reset_at) == ("failed", "rate_limited", midnight)
    assert parsed.session_id == SID
    assert parsed.message == "You have exhausted your daily quota on this model."


def test_retryable_quota_error_with_retry_delay() -> None:
    message = (
        "You exceeded your current quota, please check your plan and billing details.\n"
        "* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, "
        "limit: 2\nPlease retry in 54.887755558s."
    )
    parsed = parse_json("", LOGS + error_json({"type": "RetryableQuotaError", "message": message}), 1, NOW, TZ)
    assert parsed.error_class == "rate_limited"
    assert parsed.reset_at == NOW + timedelta(seconds=54.887755558)


def test_error_object_on_stdout_is_also_read() -> None:
    parsed = parse_json(error_json({"type": "FatalAuthenticationError", "message": "login required"}), "", 41, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "auth")


@pytest.mark.parametrize(
    ("exit_code", "stderr", "expected"),
    [
        (41, "Please set an Auth method in your settings.json\n", "auth"),
        (42, "No input provided via stdin.\n", "contract"),
        (52, "Invalid configuration in settings.json\n", "contract"),
        (55, "Gemini CLI is not running in a trusted directory.\n", "contract"),
        (173, "something about status 429\n", "rate_limited"),
        (244, "boom\n", "transient"),  # 500 mod 256
        (
            1,
            "Error: request to https://127.0.0.1/ failed, reason: connect ECONNREFUSED 127.0.0.1:9\n",
            "transient",
        ),
        (1, "", "transient"),
        (1, "a log line nobody recognises\n", "unknown"),
    ],
)
def test_exit_codes_without_json(exit_code: int, stderr: str, expected: str) -> None:
    parsed = parse_json("", stderr, exit_code, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", expected)


def test_older_stats_without_input_field_and_thoughts_count_as_output() -> None:
    stats = {
        "models": {
            "gemini-2.5-pro": {
                "tokens": {
                    "prompt": 24939,
                    "candidates": 20,
                    "total": 25113,
                    "cached": 21263,
                    "thoughts": 154,
                    "tool": 0,
                }
            }
        }
    }
    stdout = json.dumps({"session_id": SID, "response": "Paris.", "stats": stats})
    parsed = parse_json(stdout, LOGS, 0, NOW, TZ)
    assert parsed.outcome == "succeeded"
    assert parsed.usage == TokenUsage(input_tokens=3676, output_tokens=174, cache_read_tokens=21263)
    assert (parsed.model, parsed.final_text) == ("gemini-2.5-pro", "Paris.")


def test_success_body_with_nonzero_exit_is_failed_but_keeps_usage() -> None:
    stdout = json.dumps({"session_id": SID, "response": "x", "stats": {"models": {"m": {"tokens": {"input": 5}}}}})
    parsed = parse_json(stdout, "", 53, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "contract")
    assert parsed.usage.input_tokens == 5


def stream(*events: dict[str, object]) -> str:
    return "\n".join(json.dumps({"timestamp": "2026-03-10T12:00:00Z", **e}) for e in events) + "\n"


def test_stream_result_error() -> None:
    stdout = stream(
        {"type": "init", "session_id": SID, "model": "gemini-2.5-pro"},
        {"type": "message", "role": "assistant", "content": "par", "delta": True},
        {
            "type": "result",
            "status": "error",
            "error": {
                "type": "TerminalQuotaError",
                "message": "You have exhausted your daily quota on this model.",
            },
            "stats": {"total_tokens": 0},
        },
    )
    parsed = parse_stream_json(stdout, "", 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class, parsed.session_id) == ("failed", "rate_limited", SID)


def test_stream_error_events_without_result() -> None:
    stdout = stream(
        {"type": "init", "session_id": SID, "model": "auto"},
        {"type": "error", "severity": "error", "message": "[API Error: 503 Service Unavailable]"},
    )
    parsed = parse_stream_json(stdout, "", 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class, parsed.session_id) == ("failed", "transient", SID)


def test_stream_without_result_and_exit_0_is_unknown() -> None:
    stdout = stream({"type": "init", "session_id": SID, "model": "auto"})
    assert parse_stream_json(stdout, "", 0, NOW, TZ).outcome == "unknown"


def test_stream_model_falls_back_to_init_unless_auto() -> None:
    result = {
        "type": "result",
        "status": "success",
        "stats": {"input_tokens": 10, "output_tokens": 2, "cached": 4},
    }
    stdout = stream({"type": "init", "session_id": SID, "model": "gemini-2.5-pro"}, result)
    parsed = parse_stream_json(stdout, "", 0, NOW, TZ)
    assert (parsed.model, parsed.usage) == (
        "gemini-2.5-pro",
        TokenUsage(input_tokens=6, output_tokens=2, cache_read_tokens=4),
    )
    auto = parse_stream_json(stream({"type": "init", "session_id": SID, "model": "auto"}, result), "", 0, NOW, TZ)
    assert auto.model is None


def test_stream_429_on_stderr_with_empty_stdout() -> None:
    stderr = LOGS + error_json(
        {"type": "Error", "message": "Resource has been exhausted (e.g. check quota).", "code": 429}
    )
    parsed = parse_stream_json("", stderr, 173, NOW, TZ)
    assert (parsed.outcome, parsed.error_class, parsed.session_id) == ("failed", "rate_limited", SID)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Attempt 1 failed with status 429. Retrying with backoff... _ApiError: {...}", True),
        ("Usage limit reached for gemini-2.5-pro.", True),
        (
            '{"type":"error","severity":"error","message":"You have exhausted your daily quota on this model."}',
            True,
        ),
        ('{"type":"result","status":"error","error":{"type":"RetryableQuotaError","message":"x"}}', True),
        (
            '{"type":"message","role":"assistant","content":"RESOURCE_EXHAUSTED means quota","delta":true}',
            False,
        ),
        ("Ripgrep is not available. Falling back to GrepTool.", False),
        # 0.61.0 on a 503: the CLI's class name says "Quota", the server said "overloaded".
        (
            "Error when talking to Gemini API Full report available at: /tmp/gemini-client-error.json "
            "RetryableQuotaError: The model is overloaded. Please try again later. (fake)",
            False,
        ),
        ("Attempt 1 failed: The model is overloaded. Please try again later. (fake). Max attempts reached", False),
    ],
)
def test_is_rate_limit_line(text: str, expected: bool) -> None:
    assert is_rate_limit_line(text) is expected


def test_daily_quota_reset_is_the_providers_retry_in_when_the_dump_shows_it() -> None:
    dump = (
        "TerminalQuotaError: You have exhausted your daily quota on this model.\n  cause: {\n    code: 429,\n"
        "    message: 'You exceeded your current quota … limit: 250\\n' +\n      'Please retry in 34860.5s.',\n"
    )
    error = {"type": "Error", "message": "You have exhausted your daily quota on this model.", "code": 429}
    parsed = parse_json("", LOGS + dump + error_json(error), 173, NOW, TZ)
    assert (parsed.error_class, parsed.reset_at) == ("rate_limited", NOW + timedelta(seconds=34860.5))


def test_a_provider_body_in_the_message_is_reported_by_its_own_message() -> None:
    # 0.61.0 puts the whole 400 body in `message`; the class comes from its words, the excerpt from its message.
    body = (
        '{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.",'
        '"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}'
    )
    parsed = parse_json("", LOGS + error_json({"type": "Error", "message": body, "code": 400}), 144, NOW, TZ)
    assert (parsed.outcome, parsed.error_class, parsed.reset_at) == ("failed", "auth", None)
    assert parsed.message == "API key not valid. Please pass a valid API key."
