"""Aider forms beyond the captures: analytics log usage, token/cost lines, recovery, other errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers.aider import is_rate_limit_line, live_failure, parse_output
from fleetd.records.result import TokenUsage

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TZ = ZoneInfo("Europe/Berlin")
BANNER = "Aider v0.86.2\nModel: openai/qwen3-coder with whole edit format\nGit repo: none\nRepo-map: disabled\n\n"
RATE_LIMITED = (
    "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for\n"
    "requests. Please try again in 20s.\n"
    "The API provider has rate limited you. Try again later or check your quotas.\n"
)


def analytics(*events: dict[str, object]) -> str:
    return "\n".join(json.dumps({"user_id": "u", "time": 1773144000, **e}) for e in events) + "\n"


def test_analytics_log_gives_exact_usage_and_session_cost() -> None:
    log = analytics(
        {"event": "message_send_starting", "properties": {}},
        {
            "event": "message_send",
            "properties": {
                "main_model": "openai/qwen3-coder",
                "prompt_tokens": 2400,
                "completion_tokens": 312,
                "total_tokens": 2712,
                "cost": 0.0081,
                "total_cost": 0.0081,
            },
        },
        {
            "event": "message_send",
            "properties": {
                "main_model": "openai/qwen3-coder",
                "prompt_tokens": 3000,
                "completion_tokens": 88,
                "total_tokens": 3088,
                "cost": 0.0119,
                "total_cost": 0.02,
            },
        },
        {"event": "exit", "properties": {"reason": "Completed --message"}},
    )
    stdout = BANNER + "Done.\nTokens: 2.4k sent, 312 received.\nDone again.\nTokens: 3.0k sent, 88 received.\n"
    parsed = parse_output(stdout, "", 0, log, NOW, TZ)
    assert parsed.outcome == "succeeded"
    assert parsed.usage == TokenUsage(input_tokens=5400, output_tokens=400)
    assert parsed.cost_usd == pytest.approx(0.02)
    assert parsed.model == "openai/qwen3-coder"
    assert parsed.final_text == "Done again."


def test_token_and_cost_lines_when_there_is_no_analytics_log() -> None:
    stdout = BANNER + "Edited hello.py\nTokens: 13k sent, 1.2k cache write, 3.4k cache hit, 312 received.\n"
    stdout += "Cost: $0.0081 message, $0.02 session.\n"
    parsed = parse_output(stdout, "", 0, None, NOW, TZ)
    assert parsed.outcome == "succeeded"
    assert parsed.usage == TokenUsage(
        input_tokens=8400, output_tokens=312, cache_read_tokens=3400, cache_write_tokens=1200
    )
    assert parsed.cost_usd == pytest.approx(0.02)
    assert parsed.model == "openai/qwen3-coder"
    assert parsed.final_text == "Edited hello.py"


def test_reference_example_line() -> None:
    stdout = BANNER + "ok\nTokens: 2.4k sent, 312 received. Cost: $0.0081 message, $0.02 session.\n"
    parsed = parse_output(stdout, "", 0, None, NOW, TZ)
    assert (parsed.usage, parsed.cost_usd) == (
        TokenUsage(input_tokens=2400, output_tokens=312),
        pytest.approx(0.02),
    )


def test_gave_up_on_rate_limit_with_exit_0_is_failed_with_provider_reset() -> None:
    stdout = BANNER + (RATE_LIMITED + "Retrying in 0.2 seconds...\n") * 2 + RATE_LIMITED
    parsed = parse_output(stdout, "", 0, None, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")
    assert parsed.reset_at == datetime(2026, 3, 10, 12, 0, 20, tzinfo=UTC)


def test_rate_limit_then_recovery_is_a_success() -> None:
    stdout = BANNER + RATE_LIMITED + "Retrying in 0.2 seconds...\nhello\nTokens: 593 sent, 1 received.\n"
    parsed = parse_output(stdout, "", 0, None, NOW, TZ)
    assert (parsed.outcome, parsed.final_text) == ("succeeded", "hello")
    assert parsed.usage == TokenUsage(input_tokens=593, output_tokens=1)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key provided\n"
            "The API provider is not able to authenticate you. Check your API key.\n",
            "auth",
        ),
        (
            "litellm.APIConnectionError: APIConnectionError: OpenAIException - Connection error.\n",
            "transient",
        ),
        ("litellm.InternalServerError: InternalServerError: OpenAIException - boom\n", "transient"),
        ("litellm.NotFoundError: NotFoundError: OpenAIException - model 'nope' not found\n", "contract"),
        (
            "litellm.RateLimitError: RateLimitError: OpenAIException - You exceeded your current quota, "
            "please check your plan and billing details. insufficient_quota\n",
            "quota",
        ),
    ],
)
def test_other_errors_with_exit_0(error: str, expected: str) -> None:
    parsed = parse_output(BANNER + error, "", 0, None, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", expected)
    assert parsed.message is not None and parsed.message.startswith("litellm.")


def test_bad_arguments_exit_2() -> None:
    stderr = "usage: aider [-h] ...\naider: error: unrecognized arguments: --bogus\n"
    parsed = parse_output("", stderr, 2, None, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "contract")


def test_crash_without_output_is_transient() -> None:
    parsed = parse_output("", "", 1, None, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "transient")


def test_no_banner_no_tokens_is_unknown() -> None:
    parsed = parse_output("something else entirely\n", "", 0, None, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("unknown", "unknown")
    assert parsed.message is not None and "something else entirely" in parsed.message


def test_garbled_analytics_log_falls_back_to_token_lines() -> None:
    stdout = BANNER + "hi\nTokens: 1.2k sent, 7 received.\n"
    parsed = parse_output(stdout, "", 0, '{"event":"message_send","properties":{"prompt_t\n\x00\x01', NOW, TZ)
    assert parsed.usage == TokenUsage(input_tokens=1200, output_tokens=7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for", True),
        ("The API provider has rate limited you. Try again later or check your quotas.", True),
        ("Retrying in 0.2 seconds...", False),
        ("Tokens: 593 sent, 1 received.", False),
        ("Model: openai/fake with whole edit format", False),
    ],
)
def test_is_rate_limit_line(text: str, expected: bool) -> None:
    assert is_rate_limit_line(text) is expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # The first line of each error block Aider 0.86.2 printed, then sat out ~90 s of its own retries.
        ("litellm.ServiceUnavailableError: ServiceUnavailableError: OpenAIException - The", "transient"),
        ("litellm.InternalServerError: InternalServerError: OpenAIException - Connection", "transient"),
        ("The API provider's servers are down or overloaded.", "transient"),
        ("litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for", "rate_limited"),
        ("The API provider has rate limited you. Try again later or check your quotas.", "rate_limited"),
        # A quota 429 also opens with "RateLimitError"; its wrapped words say more, and parse_output reads them.
        ("litellm.RateLimitError: RateLimitError: OpenAIException - You exceeded your", "rate_limited"),
        ("current quota, please check your plan and billing details. For more information", None),
        # Errors Aider does not retry: it exits by itself.
        ("litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect", None),
        ("Retrying in 0.2 seconds...", None),
        ("Tokens: 593 sent, 1 received.", None),
    ],
)
def test_live_failure(line: str, expected: str | None) -> None:
    assert live_failure(line) == expected
    assert is_rate_limit_line(line) is (expected == "rate_limited")
