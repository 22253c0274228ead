"""Codex exec JSONL forms beyond the captures, and rollout-file rate-limit snapshots."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers.codex import (
    blocked_until,
    is_rate_limit_line,
    live_failure,
    parse_exec_jsonl,
    parse_rollout,
)
from fleetd.records.result import TokenUsage, WindowState

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # 13:00 in Berlin
TZ = ZoneInfo("Europe/Berlin")
THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"


def jsonl(*events: dict[str, object]) -> str:
    return "\n".join(json.dumps(e) for e in events) + "\n"


def failing(message: str) -> str:
    return jsonl(
        {"type": "thread.started", "thread_id": THREAD},
        {"type": "turn.started"},
        {"type": "error", "message": message},
        {"type": "turn.failed", "error": {"message": message}},
    )


@pytest.mark.parametrize(
    ("message", "reset_at"),
    [
        ("You've hit your usage limit. Try again at 3:28 PM.", datetime(2026, 3, 10, 14, 28, tzinfo=UTC)),
        (
            "You've hit your usage limit. Visit https://chatgpt.com/codex/settings/usage to purchase more "
            "credits or try again at Aug 8th, 2026 12:30 PM.",
            datetime(2026, 8, 8, 10, 30, tzinfo=UTC),
        ),
        ("You've hit your usage limit. Try again Aug 18.", datetime(2026, 8, 17, 22, 0, tzinfo=UTC)),
        ("You've hit your usage limit. Try again later.", None),
    ],
)
def test_usage_limit_messages(message: str, reset_at: datetime | None) -> None:
    parsed = parse_exec_jsonl(failing(message), "", 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")
    assert parsed.reset_at == reset_at
    assert parsed.session_id == THREAD
    assert parsed.message == message


@pytest.mark.parametrize(
    "message",
    [
        "Quota exceeded. Check your plan and billing details.",
        "Your workspace is out of credits. Add credits to continue.",
        "Your workspace is out of credits. Ask your workspace owner to refill in order to continue.",
        "You hit your spend cap set in your workspace. Increase your spend cap to continue.",
        "You hit your spend cap set by the owner of your workspace. Ask them to increase it.",
    ],
)
def test_out_of_money_is_quota_without_a_reset(message: str) -> None:
    parsed = parse_exec_jsonl(failing(message), "", 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class, parsed.reset_at) == ("failed", "quota", None)
    assert parsed.message == message


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("To use Codex with your ChatGPT plan, upgrade to Plus: https://chatgpt.com/explore/plus.", "auth"),
        ("unexpected status 401 Unauthorized: Missing bearer authentication in header", "auth"),
        ("unexpected status 400 Bad Request: invalid model", "contract"),
        ("Selected model is at capacity. Please try a different model.", "transient"),
        ("exceeded retry limit, last status: 502 Bad Gateway, request id: abc", "transient"),
        ("stream disconnected before completion: error sending request", "transient"),
        ("Something odd (extra details)", "unknown"),
    ],
)
def test_other_failures_are_classified(message: str, expected: str) -> None:
    parsed = parse_exec_jsonl(failing(message), "", 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", expected)


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        ("Not inside a trusted directory and --skip-git-repo-check was not specified.\n", "contract"),
        (
            'Error loading config.toml: `wire_api = "chat"` is no longer supported.\n'
            'How to fix: set `wire_api = "responses"` in your provider config.\n',
            "contract",
        ),
        ("error: unexpected argument '--bogus' found\n", "contract"),
        ("", "transient"),
    ],
)
def test_failures_before_any_event(stderr: str, expected: str) -> None:
    parsed = parse_exec_jsonl("", stderr, 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", expected)


def test_usage_is_the_last_cumulative_turn_total() -> None:
    stdout = jsonl(
        {"type": "thread.started", "thread_id": THREAD},
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 100, "cached_input_tokens": 40, "output_tokens": 5},
        },
        {"type": "item.completed", "item": {"id": "item_3", "type": "agent_message", "text": "Yep."}},
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122},
        },
    )
    parsed = parse_exec_jsonl(stdout, "", 0, NOW, TZ)
    assert parsed.outcome == "succeeded"
    assert parsed.usage == TokenUsage(input_tokens=315, output_tokens=122, cache_read_tokens=24448)
    assert parsed.final_text == "Yep."


def test_completed_turn_with_exit_1_is_not_a_success() -> None:
    stdout = jsonl(
        {"type": "thread.started", "thread_id": THREAD},
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 1, "cached_input_tokens": 0, "output_tokens": 1},
        },
    )
    assert parse_exec_jsonl(stdout, "", 1, NOW, TZ).outcome == "failed"


def test_killed_while_reconnecting_on_429_is_rate_limited() -> None:
    stdout = jsonl(
        {"type": "thread.started", "thread_id": THREAD},
        {"type": "turn.started"},
        {
            "type": "error",
            "message": "Reconnecting... 1/5 (exceeded retry limit, last status: 429 Too Many Requests)",
        },
    )
    parsed = parse_exec_jsonl(stdout, "", -15, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")


def test_stream_without_terminal_event_and_exit_0_is_unknown() -> None:
    stdout = jsonl({"type": "thread.started", "thread_id": THREAD}, {"type": "turn.started"})
    parsed = parse_exec_jsonl(stdout, "", 0, NOW, TZ)
    assert (parsed.outcome, parsed.session_id) == ("unknown", THREAD)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"error","message":"You\'ve hit your usage limit. Try again at 3:28 PM."}', True),
        (
            '{"type":"turn.failed","error":{"message":"Quota exceeded. Check your plan and billing details."}}',
            False,  # quota, not a rate limit (and Codex exits by itself right after)
        ),
        (
            '{"type":"error","message":"Reconnecting... 2/5 '
            '(exceeded retry limit, last status: 429 Too Many Requests)"}',
            True,
        ),
        ('{"type":"error","message":"We\u2019re currently experiencing high demand"}', False),
        (
            '{"type":"item.completed","item":{"type":"agent_message","text":"Handle 429 rate limits."}}',
            False,
        ),
        ("Reading additional input from stdin...", False),
        ("not json {", False),
    ],
)
def test_is_rate_limit_line(text: str, expected: bool) -> None:
    assert is_rate_limit_line(text) is expected


def rollout_line(timestamp: str, rate_limits: object, kind: str = "token_count") -> str:
    payload = {"type": kind, "info": None, "rate_limits": rate_limits}
    return json.dumps({"timestamp": timestamp, "type": "event_msg", "payload": payload})


def window(used: float, minutes: int | None, **reset: int) -> dict[str, object]:
    return {"used_percent": used, "window_minutes": minutes, **reset}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Codex 0.169.0 against a refused connection: this line at 0.45 s, then after 5, 10, 20 s... and no end.
        (
            '{"type":"error","message":"Reconnecting... waiting for network (Connection failed: error sending '
            'request)"}',
            "transient",
        ),
        (
            '{"type":"error","message":"Reconnecting... 1/5 (exceeded retry limit, last status: 429 Too Many '
            'Requests)"}',
            "rate_limited",
        ),
        (
            '{"type":"error","message":"Reconnecting... 2/5 (unexpected status 503 Service Unavailable: overloaded)"}',
            "transient",
        ),
        # With its default request/stream retries Codex 0.169.0 sits out a 5xx for ~25-30 s (30 calls); the first
        # of these lines comes after ~4 s.
        (
            '{"type":"error","message":"Reconnecting... 1/5 (We\u2019re currently experiencing high demand, which '
            'may cause temporary errors.)"}',
            "transient",
        ),
        # Final errors: Codex exits by itself right after them, so there is nothing to cut short.
        ('{"type":"error","message":"exceeded retry limit, last status: 429 Too Many Requests"}', None),
        ('{"type":"turn.failed","error":{"message":"Quota exceeded. Check your plan and billing details."}}', None),
        ('{"type":"item.completed","item":{"type":"agent_message","text":"Reconnecting... 1/5"}}', None),
        ("Reading additional input from stdin...", None),
        ("\x00{junk", None),
    ],
)
def test_live_failure(line: str, expected: str | None) -> None:
    assert live_failure(line) == expected


def test_killed_while_waiting_for_network_is_transient() -> None:
    stdout = jsonl(
        {"type": "thread.started", "thread_id": THREAD},
        {"type": "turn.started"},
        {"type": "error", "message": "Reconnecting... waiting for network (Connection failed: error sending request)"},
    )
    parsed = parse_exec_jsonl(stdout, "Reading additional input from stdin...\n", -15, NOW, TZ)
    assert (parsed.outcome, parsed.error_class, parsed.session_id) == ("failed", "transient", THREAD)
    assert parsed.message == "Reconnecting... waiting for network (Connection failed: error sending request)"


def test_rollout_last_snapshot_wins_per_window_minutes() -> None:
    text = "\n".join(
        [
            json.dumps({"timestamp": "2026-03-10T10:00:00Z", "type": "session_meta", "payload": {"id": THREAD}}),
            rollout_line(
                "2026-03-10T10:01:00.000Z",
                {
                    "limit_id": "codex",
                    "primary": window(10.0, 300, resets_at=1773151200),  # 14:00Z
                    "secondary": window(20.0, 10080, resets_at=1773586800),
                },
            ),
            rollout_line("2026-03-10T10:02:00.000Z", None),  # rate_limits can be null
            "{truncated",
            # the weekly window moved to the primary slot: keyed by minutes, not slot
            rollout_line("2026-03-10T10:03:00.000Z", {"primary": window(100.0, 10080, resets_at=1773673200)}),
        ]
    )
    assert parse_rollout(text, NOW, TZ) == [
        WindowState(300, 10.0, datetime(2026, 3, 10, 14, 0, tzinfo=UTC), "primary"),
        WindowState(10080, 100.0, datetime(2026, 3, 16, 15, 0, tzinfo=UTC), "primary"),
    ]


def test_rollout_legacy_resets_in_seconds_counts_from_the_line_timestamp() -> None:
    text = rollout_line(
        "2026-03-10T09:00:00Z",
        {"primary": window(55.5, 300, resets_in_seconds=3600), "secondary": window(1.0, 10080)},
    )
    assert parse_rollout(text, NOW, TZ) == [
        WindowState(300, 55.5, datetime(2026, 3, 10, 10, 0, tzinfo=UTC), "primary"),
        WindowState(10080, 1.0, None, "secondary"),
    ]


def test_rollout_without_timestamp_counts_from_now_and_separates_other_limits() -> None:
    text = "\n".join(
        [
            json.dumps({"type": "token_count", "rate_limits": {"primary": window(5.0, 300, resets_in_seconds=60)}}),
            json.dumps(
                {
                    "type": "token_count",
                    "rate_limits": {
                        "limit_id": "gpt-5-codex-mini",
                        "primary": window(99.0, 300, resets_at=1773151200),
                    },
                }
            ),
        ]
    )
    assert parse_rollout(text, NOW, TZ) == [
        # sorted by window length, then name
        WindowState(300, 99.0, datetime(2026, 3, 10, 14, 0, tzinfo=UTC), "gpt-5-codex-mini:primary"),
        WindowState(300, 5.0, NOW + timedelta(seconds=60), "primary"),
    ]


@pytest.mark.parametrize("text", ["", "garbage\n\x00\x01", '{"type":"event_msg","payload":{"type":"token_count"', "[]"])
def test_rollout_junk_gives_no_windows(text: str) -> None:
    assert parse_rollout(text, NOW, TZ) == []


def test_blocked_until_is_the_latest_reset_of_exhausted_windows() -> None:
    at = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)
    windows = [
        WindowState(300, 100.0, at, "primary"),
        WindowState(10080, 100.0, at + timedelta(days=2), "secondary"),
        WindowState(60, 50.0, at + timedelta(days=9), "other"),
    ]
    assert blocked_until(windows) == at + timedelta(days=2)
    assert blocked_until(windows[2:]) is None
