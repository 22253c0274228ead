"""Golden tests: every capture of the REAL CLIs (tests/fixtures/captures/README.md) parsed to known values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers import aider, claude_code, codex, gemini
from fleetd.records.result import ParsedOutput, TokenUsage
from tests.harness import capture_folder, captures_dir

NOW = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)
TZ = ZoneInfo("Europe/Berlin")
ZERO = TokenUsage()


@dataclass(frozen=True)
class Capture:
    stdout: str
    stderr: str
    exit_code: int

    @classmethod
    def load(cls, name: str) -> Capture:
        folder = capture_folder(name)
        read = lambda f: (folder / f).read_text(encoding="utf-8", errors="replace")  # noqa: E731
        return cls(read("stdout.txt"), read("stderr.txt"), int(read("exit_code").strip()))


Parse = Callable[[Capture], ParsedOutput]
RateLine = Callable[[str], bool]


def _std(fn: Callable[..., ParsedOutput]) -> Parse:
    return lambda c: fn(c.stdout, c.stderr, c.exit_code, NOW, TZ)


@dataclass(frozen=True)
class Golden:
    parse: Parse
    is_rate_limit_line: RateLine
    outcome: str
    error_class: str | None
    usage: TokenUsage = ZERO
    cost_usd: float | None = None
    model: str | None = None
    session_id: str | None = None
    final_text: str | None = None
    reset_at: datetime | None = None
    message_start: str | None = None
    first_limit_line: tuple[str, int] | None = None  # (stream, 0-based line index) flagged first, or None


GOLDEN: dict[str, Golden] = {
    "cc_ok_json": Golden(
        _std(claude_code.parse_json),
        claude_code.is_rate_limit_line,
        "succeeded",
        None,
        usage=TokenUsage(input_tokens=123, output_tokens=9, cache_read_tokens=67, cache_write_tokens=45),
        cost_usd=0.0009104,
        model="claude-opus-5-5",
        session_id="5aa38dd8-1274-4880-8e41-b78b3ad268ce",
        final_text="hi",
    ),
    "cc_ok_stream": Golden(
        _std(claude_code.parse_stream_json),
        claude_code.is_rate_limit_line,
        "succeeded",
        None,
        usage=TokenUsage(input_tokens=123, output_tokens=9, cache_read_tokens=67, cache_write_tokens=45),
        cost_usd=0.0009104,
        model="claude-opus-5-5",
        session_id="44ce97b6-bd26-4495-bf03-46c93a098e16",
        final_text="hi",
    ),
    "cc_429_json": Golden(
        _std(claude_code.parse_json),
        claude_code.is_rate_limit_line,
        "failed",
        "rate_limited",
        cost_usd=0.0,
        session_id="b8d2643d-9287-4e34-81e8-aead7d8fab81",
        message_start="API Error: Request rejected (429)",
        first_limit_line=("stdout", 0),
    ),
    "cc_429_retries2_stream": Golden(
        _std(claude_code.parse_stream_json),
        claude_code.is_rate_limit_line,
        "failed",
        "rate_limited",
        cost_usd=0.0,
        model="claude-opus-5-5",  # from system/init: the result's modelUsage is empty
        session_id="4b16dc07-5a31-4069-a922-1a8b13b7a1b4",
        message_start="API Error: Request rejected (429)",
        first_limit_line=("stdout", 1),  # the first system/api_retry with error_status 429
    ),
    "cc_529": Golden(
        _std(claude_code.parse_stream_json),
        claude_code.is_rate_limit_line,
        "failed",
        "transient",
        cost_usd=0.0,
        model="claude-opus-5-5",
        session_id="ead6aaf9-bd7f-431c-83c9-c3432254f77a",
        message_start="API Error: 529 Overloaded (fake).",
    ),
    "cc_text_429": Golden(
        _std(claude_code.parse_text),
        claude_code.is_rate_limit_line,
        "failed",
        "rate_limited",
        message_start="API Error: Request rejected (429)",
        first_limit_line=("stdout", 0),
    ),
    "codex_ok_codex-prof-quiet": Golden(
        _std(codex.parse_exec_jsonl),
        codex.is_rate_limit_line,
        "succeeded",
        None,
        usage=TokenUsage(input_tokens=89, output_tokens=33, cache_read_tokens=22, cache_write_tokens=0),
        session_id="01a2006f-309f-7bf3-840a-01322a7670c6",
        final_text="hi",
    ),
    "codex_429_codex-prof-quiet": Golden(
        _std(codex.parse_exec_jsonl),
        codex.is_rate_limit_line,
        "failed",
        "rate_limited",
        session_id="01a2006f-324c-7bf1-aa4e-5f80db7d1d5d",
        message_start="exceeded retry limit, last status: 429 Too Many Requests",
        first_limit_line=("stdout", 2),
    ),
    "codex_429": Golden(
        _std(codex.parse_exec_jsonl),
        codex.is_rate_limit_line,
        "failed",
        "rate_limited",
        session_id="01a20060-32cf-7bf1-b597-640adc08e964",
        message_start="exceeded retry limit, last status: 429 Too Many Requests",
        first_limit_line=("stdout", 3),  # "Reconnecting... 1/5 (… 429 …)": no need to sit out the retries
    ),
    "codex_quota": Golden(
        _std(codex.parse_exec_jsonl),
        codex.is_rate_limit_line,
        "failed",
        "quota",  # insufficient_quota: waiting does not help, so it is not a rate limit
        session_id="01a20060-daf0-70d3-8148-a2ca2696027d",
        message_start="Quota exceeded. Check your plan and billing details.",
        first_limit_line=None,
    ),
    "codex_500_s0": Golden(
        _std(codex.parse_exec_jsonl),
        codex.is_rate_limit_line,
        "failed",
        "transient",
        session_id="01a2006c-a8d2-7321-8076-3eca9f5fb92f",
        message_start="We\u2019re currently experiencing high demand",
    ),
    "gemini_ok_json": Golden(
        _std(gemini.parse_json),
        gemini.is_rate_limit_line,
        "succeeded",
        None,
        usage=TokenUsage(input_tokens=101, output_tokens=7),
        model="gemini-2.5-flash",
        session_id="7cb2e026-bb39-48fe-bbab-a67128eb7354",
        final_text="hi",
    ),
    "gemini_ok_stream": Golden(
        _std(gemini.parse_stream_json),
        gemini.is_rate_limit_line,
        "succeeded",
        None,
        usage=TokenUsage(input_tokens=202, output_tokens=14),
        model="gemini-3.8-flash",
        session_id="0ed4c557-1c7b-4bfd-831c-06399ecfbedb",
        final_text="hi",
    ),
    "gemini_429_json": Golden(
        _std(gemini.parse_json),
        gemini.is_rate_limit_line,
        "failed",
        "rate_limited",
        session_id="814c06ea-db0e-427b-9917-f8f956700298",
        reset_at=NOW + timedelta(seconds=1),  # "Suggested retry after 1s."
        message_start="Resource has been exhausted (e.g. check quota). (fake)",
        first_limit_line=("stderr", 4),
    ),
    "gemini_429_max1": Golden(
        _std(gemini.parse_json),
        gemini.is_rate_limit_line,
        "failed",
        "rate_limited",  # no JSON error in this (cut-off) stderr: exit 173 and the log text decide
        message_start="Attempt 1 failed with status 429.",
        first_limit_line=("stderr", 3),
    ),
    "aider_ok_quiet": Golden(
        lambda c: aider.parse_output(c.stdout, c.stderr, c.exit_code, None, NOW, TZ),
        aider.is_rate_limit_line,
        "succeeded",
        None,
        usage=TokenUsage(input_tokens=593, output_tokens=1),
        model="openai/fake",
        final_text="hi",
    ),
    "aider_429": Golden(
        lambda c: aider.parse_output(c.stdout, c.stderr, c.exit_code, None, NOW, TZ),
        aider.is_rate_limit_line,
        "failed",  # although aider exited 0
        "rate_limited",
        model="openai/fake",
        reset_at=NOW + timedelta(seconds=1),  # the provider's "Please try again in 1s."
        message_start="litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached",
        first_limit_line=("stdout", 8),
    ),
}


def test_every_capture_folder_has_a_golden_case() -> None:
    root = captures_dir()
    assert root.is_dir(), f"captures directory {root} is missing"
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    assert folders == set(GOLDEN), "a capture was added or removed: give it a golden case"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_capture_parses_to_golden_values(name: str) -> None:
    golden, capture = GOLDEN[name], Capture.load(name)
    parsed = golden.parse(capture)
    assert parsed.outcome == golden.outcome
    assert parsed.error_class == golden.error_class
    assert parsed.usage == golden.usage
    assert parsed.cost_usd == (None if golden.cost_usd is None else pytest.approx(golden.cost_usd))
    assert parsed.model == golden.model
    assert parsed.session_id == golden.session_id
    assert parsed.final_text == golden.final_text
    assert parsed.reset_at == golden.reset_at
    if golden.message_start is None:
        assert parsed.message is None
    else:
        assert parsed.message is not None and parsed.message.startswith(golden.message_start)
        assert len(parsed.message) <= 300


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_capture_first_rate_limit_line(name: str) -> None:
    golden, capture = GOLDEN[name], Capture.load(name)
    flagged = [
        (stream, i)
        for stream, text in (("stdout", capture.stdout), ("stderr", capture.stderr))
        for i, line in enumerate(text.splitlines())
        if golden.is_rate_limit_line(line)
    ]
    assert (flagged[0] if flagged else None) == golden.first_limit_line


def test_claude_429_exit_code_is_1_in_both_json_and_text_mode() -> None:
    # agent-clis.md §1.4 cites a report of text mode exiting 0 on a server 429; this CLI exited 1.
    assert Capture.load("cc_text_429").exit_code == 1
    assert Capture.load("cc_429_json").exit_code == 1


def test_aider_gave_up_with_exit_0() -> None:
    capture = Capture.load("aider_429")
    assert capture.exit_code == 0
    assert aider.parse_output(capture.stdout, capture.stderr, 0, None, NOW, TZ).outcome == "failed"
