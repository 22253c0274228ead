"""Every parser against junk (truncated JSON, random bytes, empty input): "unknown", never an exception."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers import aider, claude_code, codex, gemini, openai_compat
from fleetd.records.result import ParsedOutput

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TZ = ZoneInfo("Europe/Berlin")


def random_text(seed: int, size: int = 2048) -> str:
    data = random.Random(seed).randbytes(size)
    return data.decode("utf-8", errors="replace")


JSON_JUNK = {
    "empty": "",
    "whitespace": "  \n\t\n",
    "open_brace": "{",
    "truncated_result": '{"type":"result","subtype":"success","is_error":false,"usage":{"input_tok',
    "truncated_stream": '{"type":"system","subtype":"init","session_id":"abc"\n{"type":"assis',
    "not_objects": '[1, 2, 3]\nnull\n42\n"str"',
    "wrong_types": '{"type": 5, "result": [], "usage": "lots", "session_id": {}}',
    "deep_nesting": "{" * 50_000,
    "random_bytes_1": random_text(1),
    "random_bytes_2": random_text(2),
    "nul_bytes": "\x00" * 64,
}
# Plain-text formats cannot tell a truncated JSON line from an answer, so they only face byte junk.
BYTE_JUNK = {
    k: v for k, v in JSON_JUNK.items() if k in ("empty", "whitespace", "random_bytes_1", "random_bytes_2", "nul_bytes")
}

StdParser = Callable[..., ParsedOutput]

JSON_PARSERS: dict[str, StdParser] = {
    "claude.json": claude_code.parse_json,
    "claude.stream": claude_code.parse_stream_json,
    "codex.exec": codex.parse_exec_jsonl,
    "gemini.json": gemini.parse_json,
    "gemini.stream": gemini.parse_stream_json,
}
TEXT_PARSERS: dict[str, StdParser] = {
    "claude.text": claude_code.parse_text,
    "aider": lambda out, err, code, now, tz: aider.parse_output(out, err, code, None, now, tz),
}


def assert_unknown(parsed: ParsedOutput) -> None:
    assert (parsed.outcome, parsed.error_class) == ("unknown", "unknown")
    assert parsed.message is not None and 0 < len(parsed.message) <= 300
    assert parsed.reset_at is None


@pytest.mark.parametrize("exit_code", [0, None])
@pytest.mark.parametrize("junk", sorted(JSON_JUNK))
@pytest.mark.parametrize("parser", sorted(JSON_PARSERS))
def test_json_parsers_call_junk_unknown(parser: str, junk: str, exit_code: int | None) -> None:
    assert_unknown(JSON_PARSERS[parser](JSON_JUNK[junk], JSON_JUNK[junk], exit_code, NOW, TZ))


@pytest.mark.parametrize("junk", sorted(BYTE_JUNK))
@pytest.mark.parametrize("parser", sorted(TEXT_PARSERS))
def test_text_parsers_call_byte_junk_unknown(parser: str, junk: str) -> None:
    assert_unknown(TEXT_PARSERS[parser](BYTE_JUNK[junk], "", 0, NOW, TZ))


@pytest.mark.parametrize("junk", sorted(JSON_JUNK))
def test_aider_with_junk_analytics_log(junk: str) -> None:
    assert_unknown(aider.parse_output(JSON_JUNK[junk], "", 0, JSON_JUNK[junk], NOW, TZ))


@pytest.mark.parametrize("junk", sorted(JSON_JUNK))
def test_openai_compat_2xx_junk(junk: str) -> None:
    assert_unknown(openai_compat.parse_chat_response(200, {"X": "y"}, JSON_JUNK[junk], NOW, TZ))


@pytest.mark.parametrize("junk", sorted(JSON_JUNK))
def test_openai_compat_status_still_decides_with_a_junk_body(junk: str) -> None:
    parsed = openai_compat.parse_chat_response(429, {"retry-after": "\ufffd"}, JSON_JUNK[junk], NOW, TZ)
    assert (parsed.outcome, parsed.error_class, parsed.reset_at) == ("failed", "rate_limited", None)


@pytest.mark.parametrize("junk", sorted(JSON_JUNK))
def test_line_detectors_and_rollout_on_junk(junk: str) -> None:
    text = JSON_JUNK[junk]
    for detector in (
        claude_code.is_rate_limit_line,
        codex.is_rate_limit_line,
        gemini.is_rate_limit_line,
        aider.is_rate_limit_line,
    ):
        assert detector(text) is False
        for line in text.splitlines():
            assert detector(line) is False
    assert codex.parse_rollout(text, NOW, TZ) == []


@pytest.mark.parametrize("parser", sorted(JSON_PARSERS) + sorted(TEXT_PARSERS))
def test_non_string_inputs_do_not_raise(parser: str) -> None:
    parse = {**JSON_PARSERS, **TEXT_PARSERS}[parser]
    assert_unknown(parse(None, None, None, NOW, TZ))


def test_a_parser_bug_is_reported_not_raised() -> None:
    # A `now` that is not a datetime makes the parser itself fail; the guard turns that into "unknown".
    parsed = claude_code.parse_json('{"type":"result"}', "", 0, "not-a-datetime", TZ)  # type: ignore[arg-type]
    assert_unknown(parsed)
    assert parsed.message is not None and parsed.message.startswith("parser error (AttributeError)")


def test_detectors_reject_non_strings() -> None:
    for detector in (
        claude_code.is_rate_limit_line,
        codex.is_rate_limit_line,
        gemini.is_rate_limit_line,
        aider.is_rate_limit_line,
    ):
        assert detector(None) is False  # type: ignore[arg-type]
        assert detector(b"429 Too Many Requests") is False  # type: ignore[arg-type]


@pytest.mark.parametrize("parser", sorted(JSON_PARSERS) + sorted(TEXT_PARSERS))
def test_junk_with_a_nonzero_exit_is_a_failure_of_unknown_class(parser: str) -> None:
    parse = {**JSON_PARSERS, **TEXT_PARSERS}[parser]
    parsed = parse(JSON_JUNK["random_bytes_1"], "", 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "unknown")
    assert parsed.message is not None and 0 < len(parsed.message) <= 300
