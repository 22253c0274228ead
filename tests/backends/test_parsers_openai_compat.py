"""One HTTP exchange with an OpenAI-compatible server: usage, error classes, reset headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers.openai_compat import header_reset, parse_chat_response
from fleetd.records.result import TokenUsage

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TZ = ZoneInfo("Europe/Berlin")
RATE_LIMIT_BODY = json.dumps(
    {
        "error": {
            "message": "Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, Used 3.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
)


def test_chat_completion_usage_splits_out_cached_tokens() -> None:
    body = {
        "id": "chatcmpl-1",
        "model": "qwen3-coder",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "total_tokens": 107,
            "prompt_tokens_details": {"cached_tokens": 64},
        },
    }
    parsed = parse_chat_response(200, {}, json.dumps(body), NOW, TZ)
    assert parsed.outcome == "succeeded"
    assert parsed.usage == TokenUsage(input_tokens=36, output_tokens=7, cache_read_tokens=64)
    assert (parsed.model, parsed.final_text) == ("qwen3-coder", "hi")


def test_responses_api_body() -> None:
    body = {
        "model": "gpt-5",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hello"}]}],
        "usage": {"input_tokens": 50, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 10}},
    }
    parsed = parse_chat_response(200, {}, json.dumps(body), NOW, TZ)
    assert (parsed.outcome, parsed.final_text) == ("succeeded", "Hello")
    assert parsed.usage == TokenUsage(input_tokens=40, output_tokens=5, cache_read_tokens=10)


def test_streamed_body_with_include_usage() -> None:
    chunks = [
        {"model": "llama", "choices": [{"delta": {"content": "he"}}]},
        {"model": "llama", "choices": [{"delta": {"content": "llo"}}]},
        {"model": "llama", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}},
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    parsed = parse_chat_response(200, {"Content-Type": "text/event-stream"}, body, NOW, TZ)
    assert (parsed.outcome, parsed.final_text, parsed.model) == ("succeeded", "hello", "llama")
    assert parsed.usage == TokenUsage(input_tokens=12, output_tokens=2)


@pytest.mark.parametrize(
    ("headers", "reset_at"),
    [
        ({"Retry-After": "30"}, NOW + timedelta(seconds=30)),
        ({"retry-after-ms": "1500"}, NOW + timedelta(milliseconds=1500)),
        ({"Retry-After": "Wed, 11 Mar 2026 07:28:00 GMT"}, datetime(2026, 3, 11, 7, 28, tzinfo=UTC)),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-reset-tokens": "20ms",
            },
            NOW + timedelta(minutes=6),
        ),
        (
            {
                "x-ratelimit-remaining-requests": "5",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-reset-tokens": "1.5s",
            },
            NOW + timedelta(seconds=1.5),
        ),
        (
            {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "20ms"},
            NOW + timedelta(seconds=1),
        ),
        ({"X-RateLimit-Reset": "1773151200"}, datetime(2026, 3, 10, 14, 0, tzinfo=UTC)),
        ({}, None),
    ],
)
def test_429_reset_from_headers(headers: dict[str, str], reset_at: datetime | None) -> None:
    parsed = parse_chat_response(429, headers, RATE_LIMIT_BODY, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")
    assert parsed.reset_at == reset_at
    assert parsed.message == "HTTP 429: Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, Used 3."


def test_429_reset_from_the_message_when_no_header() -> None:
    body = json.dumps(
        {"error": {"message": "Rate limit reached. Please try again in 20s.", "code": "rate_limit_exceeded"}}
    )
    assert parse_chat_response(429, {}, body, NOW, TZ).reset_at == NOW + timedelta(seconds=20)


@pytest.mark.parametrize(
    "code", ["insufficient_quota", "credit_balance_exhausted", "organization_spend_limit_exceeded"]
)
def test_quota_errors_are_quota_even_off_429(code: str) -> None:
    body = json.dumps({"error": {"message": "You exceeded your current quota.", "type": code, "code": code}})
    for status in (429, 403):
        parsed = parse_chat_response(status, {}, body, NOW, TZ)
        assert (parsed.outcome, parsed.error_class, parsed.reset_at) == ("failed", "quota", None)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, '{"error":{"code":500,"message":"boom","type":"server_error"}}', "transient"),
        (503, '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}', "transient"),
        (502, "<html>Bad Gateway</html>", "transient"),
        (401, '{"error":{"code":401,"message":"Invalid API Key","type":"authentication_error"}}', "auth"),
        (403, '{"error":{"code":403,"message":"nope","type":"permission_error"}}', "auth"),
        (
            400,
            '{"error":{"code":400,"message":"context too big","type":"exceed_context_size_error"}}',
            "contract",
        ),
        (404, '{"error":{"message":"model \\"x\\" not found","type":"not_found_error"}}', "contract"),
        (400, '{"object":"error","message":"bad param","type":"BadRequestError","code":400}', "contract"),
        (0, "", "transient"),
        (302, "", "unknown"),
    ],
)
def test_status_classes(status: int, body: str, expected: str) -> None:
    parsed = parse_chat_response(status, {}, body, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", expected)
    assert parsed.message is not None and parsed.message.startswith("HTTP" if status else "no response")


def test_error_object_in_a_200_body() -> None:
    body = '{"error":{"message":"upstream overloaded"}}'
    parsed = parse_chat_response(200, {}, body, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "transient")


@pytest.mark.parametrize("body", ["", "{", '{"id":"x","choi', "[1,2]", '{"id":"x"}', "\x00\x01\ufffd"])
def test_unusable_2xx_body_is_unknown(body: str) -> None:
    parsed = parse_chat_response(200, {}, body, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("unknown", "unknown")
    assert parsed.message is not None and len(parsed.message) <= 300


def test_header_reset_ignores_junk_values() -> None:
    assert header_reset({"retry-after": "soon", "x-ratelimit-reset-requests": "later"}, NOW, TZ) is None
