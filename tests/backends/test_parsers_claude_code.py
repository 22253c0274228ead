"""Claude Code output forms beyond the captures: limit events, old and new limit prose, error subtypes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers.claude_code import is_rate_limit_line, parse_json, parse_stream_json, parse_text
from fleetd.records.result import TokenUsage, WindowState

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # 13:00 in Berlin, 12:00 in Lisbon
TZ = ZoneInfo("Europe/Berlin")
SID = "f9c16ac1-0000-4000-8000-000000000001"


def line(**fields: object) -> str:
    return json.dumps(fields)


def result(**fields: object) -> str:
    base: dict[str, object] = {"type": "result", "subtype": "success", "is_error": False, "session_id": SID}
    base.update(fields)
    return json.dumps(base)


def synthetic(text: str, **extra: object) -> str:
    message = {"model": "<synthetic>", "role": "assistant", "content": [{"type": "text", "text": text}]}
    return line(type="assistant", message=message, session_id=SID, **extra)


def test_rate_limit_events_give_windows_and_the_epoch_reset() -> None:
    stdout = "\n".join(
        [
            line(type="system", subtype="init", session_id=SID, model="claude-sonnet-4-5"),
            line(
                type="rate_limit_event",
                rate_limit_info={
                    "status": "allowed_warning",
                    "resetsAt": 1773154800,  # 2026-03-10 15:00Z
                    "rateLimitType": "five_hour",
                    "utilization": 0.85,
                },
            ),
            line(
                type="rate_limit_event",
                rate_limit_info={"status": "rejected", "resetsAt": 1773586800, "rateLimitType": "seven_day"},
            ),
            synthetic("You've hit your weekly limit · resets Mar 15 at 4pm", error="rate_limit"),
            result(
                is_error=True,
                api_error_status=429,
                result="You've hit your weekly limit · resets Mar 15 at 4pm",
            ),
        ]
    )
    parsed = parse_stream_json(stdout, "", 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")
    assert parsed.reset_at == datetime(2026, 3, 15, 15, 0, tzinfo=UTC)  # resetsAt, not the prose (16:00 Berlin)
    assert parsed.windows == [
        WindowState(300, pytest.approx(85.0), datetime(2026, 3, 10, 15, 0, tzinfo=UTC), "five_hour"),
        WindowState(10080, None, datetime(2026, 3, 15, 15, 0, tzinfo=UTC), "seven_day"),
    ]
    assert parsed.session_id == SID
    assert parsed.model == "claude-sonnet-4-5"


def test_usage_limit_without_result_event_uses_the_synthetic_message() -> None:
    # "CLI exits 1 with genuinely empty stderr and no terminal result event" (agent-clis.md §1.4)
    stdout = "\n".join(
        [
            line(type="system", subtype="init", session_id=SID, model="claude-opus-4-1"),
            synthetic("You've hit your limit · resets 1pm (Europe/Lisbon)"),
        ]
    )
    parsed = parse_stream_json(stdout, "", 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")
    assert parsed.reset_at == datetime(2026, 3, 10, 13, 0, tzinfo=UTC)
    assert parsed.message == "You've hit your limit · resets 1pm (Europe/Lisbon)"


def test_transcript_quota_limits_on_the_assistant_line() -> None:
    stdout = synthetic(
        "You've hit your session limit · resets 2pm (Europe/Helsinki)",
        quotaLimits={"status": "rejected", "resetsAt": 1790161200, "rateLimitType": "five_hour"},
        error="rate_limit",
        isApiErrorMessage=True,
        apiErrorStatus=429,
    )
    parsed = parse_stream_json(stdout, "", 1, NOW, TZ)
    assert parsed.error_class == "rate_limited"
    assert parsed.reset_at == datetime(2026, 9, 23, 11, 0, tzinfo=UTC)
    assert [w.window_minutes for w in parsed.windows] == [300]


def test_json_mode_usage_limit_printed_as_bare_text() -> None:
    parsed = parse_json("You've hit your limit · resets 1pm (Europe/Lisbon)\n", "", 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")
    assert parsed.reset_at == datetime(2026, 3, 10, 13, 0, tzinfo=UTC)


def test_old_pipe_epoch_in_a_non_error_result_is_still_a_limit() -> None:
    parsed = parse_json(result(result="Claude AI usage limit reached|1751234400"), "", 0, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")
    assert parsed.reset_at == datetime(2025, 6, 29, 22, 0, tzinfo=UTC)


def test_server_rate_limit_v2_1_49_shape() -> None:
    # subtype success, is_error true, no api_error_status yet (< 2.1.110), zero tokens
    parsed = parse_json(
        result(is_error=True, result="API Error: Rate limit reached", duration_api_ms=0, total_cost_usd=0),
        "",
        0,
        NOW,
        TZ,
    )
    assert (parsed.outcome, parsed.error_class, parsed.reset_at) == ("failed", "rate_limited", None)
    assert parsed.cost_usd == 0.0


@pytest.mark.parametrize(
    ("status", "error_type", "text", "expected"),
    [
        (401, "authentication_error", "Invalid API key · Please run /login", "auth"),
        (403, "permission_error", "API Error: 403", "auth"),
        (500, "api_error", "API Error: 500 Internal server error", "transient"),
        (529, "overloaded_error", "API Error: 529 Overloaded", "transient"),
        (400, "invalid_request_error", "API Error: 400 prompt is too long", "contract"),
        (None, None, "OAuth token has expired. Please run /login", "auth"),
        (None, None, "something nobody has seen before", "unknown"),
    ],
)
def test_error_results_are_classified(status: int | None, error_type: str | None, text: str, expected: str) -> None:
    parsed = parse_json(
        result(is_error=True, api_error_status=status, api_error_type=error_type, result=text), "", 1, NOW, TZ
    )
    assert (parsed.outcome, parsed.error_class) == ("failed", expected)
    assert parsed.message == text


def test_max_turns_subtype_is_a_contract_failure_with_its_errors() -> None:
    parsed = parse_json(
        result(subtype="error_max_turns", is_error=True, errors=["Reached maximum number of turns (3)"]),
        "",
        1,
        NOW,
        TZ,
    )
    assert (parsed.outcome, parsed.error_class) == ("failed", "contract")
    assert parsed.message == "Reached maximum number of turns (3)"


def test_older_total_cost_key_and_main_model_by_cost() -> None:
    model_usage = {
        "claude-3-5-haiku": {"inputTokens": 900, "outputTokens": 50, "costUSD": 0.001},
        "claude-sonnet-4-5": {"inputTokens": 10, "outputTokens": 400, "costUSD": 0.02},
    }
    parsed = parse_json(result(result="Done.", total_cost=0.021, modelUsage=model_usage), "", 0, NOW, TZ)
    assert parsed.outcome == "succeeded"
    assert parsed.cost_usd == pytest.approx(0.021)
    assert parsed.model == "claude-sonnet-4-5"
    assert parsed.final_text == "Done."


def test_truncated_stream_is_unknown_but_keeps_deduplicated_usage() -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
    }
    msg = {
        "id": "msg_1",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "partial"}],
        "usage": usage,
    }
    stdout = "\n".join([line(type="system", subtype="init", session_id=SID), line(type="assistant", message=msg)] * 2)
    parsed = parse_stream_json(stdout + '\n{"type":"result","subt', "", 0, NOW, TZ)
    assert parsed.outcome == "unknown"
    assert parsed.usage == TokenUsage(10, 5, 100, 20)  # the repeated message counted once
    assert parsed.final_text == "partial"
    assert parsed.session_id == SID


def test_stream_cut_short_after_a_429_retry_is_rate_limited() -> None:
    stdout = "\n".join(
        [
            line(type="system", subtype="init", session_id=SID),
            line(
                type="system",
                subtype="api_retry",
                attempt=1,
                max_retries=10,
                error_status=429,
                error="rate_limit",
            ),
        ]
    )
    parsed = parse_stream_json(stdout, "", -15, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")


def test_missing_verbose_flag_is_a_contract_error() -> None:
    stderr = "Error: When using --print, --output-format=stream-json requires --verbose\n"
    parsed = parse_stream_json("", stderr, 1, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "contract")


@pytest.mark.parametrize("exit_code", [1, -9])
def test_crash_without_output_is_transient(exit_code: int) -> None:
    for parse in (parse_json, parse_stream_json, parse_text):
        parsed = parse("", "", exit_code, NOW, TZ)
        assert (parsed.outcome, parsed.error_class) == ("failed", "transient")


def test_text_mode_rate_limit_that_exits_0() -> None:
    parsed = parse_text("API Error: Rate limit reached\n", "", 0, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", "rate_limited")


def test_text_mode_usage_limit_with_reset() -> None:
    parsed = parse_text("You've hit your limit · resets 1pm (Europe/Lisbon)\n", "", 1, NOW, TZ)
    assert parsed.reset_at == datetime(2026, 3, 10, 13, 0, tzinfo=UTC)


def test_text_mode_answer_that_merely_mentions_limits_is_a_success() -> None:
    answer = "The 5-hour limit reached message means you must wait.\nThat is all."
    parsed = parse_text(answer, "", 0, NOW, TZ)
    assert (parsed.outcome, parsed.final_text) == ("succeeded", answer)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (line(type="system", subtype="api_retry", error_status=429, error="rate_limit"), True),
        (line(type="system", subtype="api_retry", error_status=529, error="overloaded"), False),
        (line(type="rate_limit_event", rate_limit_info={"status": "rejected"}), True),
        (
            line(type="rate_limit_event", rate_limit_info={"status": "allowed_warning", "utilization": 0.9}),
            False,
        ),
        (synthetic("You've hit your limit · resets 4:50am (Europe/Rome)"), True),
        (synthetic("API Error: 529 Overloaded", error="server_error"), False),
        (
            line(
                type="assistant",
                message={"model": "claude-x", "content": [{"type": "text", "text": "usage limit reached"}]},
            ),
            False,
        ),
        (result(is_error=True, api_error_status=429, result="API Error: Request rejected (429)"), True),
        (result(result="fine"), False),
        ("Claude AI usage limit reached|1751234400", True),
        ("5-hour limit reached ∙ resets 3am", True),
        ("You've hit your weekly limit · resets Jul 31, 2am (UTC)", True),
        ("You're out of extra usage · resets 1pm (America/Los_Angeles)", True),
        ("Compiling…", False),
        ('{"type":"system","subtype":"api_re', False),
    ],
)
def test_is_rate_limit_line(text: str, expected: bool) -> None:
    assert is_rate_limit_line(text) is expected


@pytest.mark.parametrize(
    "answer",
    [
        "Sure. The CLI then says:\nYou've hit your limit · resets 3pm (Europe/Rome)",
        "Note that quoting 'You've hit your limit' mid-sentence is harmless.",
    ],
)
def test_answers_quoting_a_limit_notice_are_successes(answer: str) -> None:
    assert parse_text(answer, "", 0, NOW, TZ).outcome == "succeeded"
    assert parse_json(result(result=answer), "", 0, NOW, TZ).outcome == "succeeded"


def test_a_resumed_sessions_result_costs_what_its_own_turn_cost_not_the_sessions_total() -> None:
    # Claude Code 2.1.330, `-p --resume SID` (a repair round), as a trial's run log held it: `total_cost_usd` and
    # `modelUsage` are the session's so far, `usage` and `model_usage_since_last_result` this turn's. The repair
    # attempt was recorded at the session's $0.0018, the run's --max-cost counting the first turn twice.
    turn = {"inputTokens": 123, "outputTokens": 9, "cacheReadInputTokens": 67, "cacheCreationInputTokens": 45,
            "webSearchRequests": 0, "costUSD": 0.0009104000000000001, "contextWindow": 1000000}  # fmt: skip
    session = {**turn, "inputTokens": 246, "outputTokens": 18, "cacheReadInputTokens": 134,
               "cacheCreationInputTokens": 90, "costUSD": 0.0018208000000000002}  # fmt: skip
    usage = {"input_tokens": 123, "cache_creation_input_tokens": 45, "cache_read_input_tokens": 67, "output_tokens": 9}
    by_model = {"claude-opus-5-5": turn, "claude-haiku-4-5": {**turn, "costUSD": 0.0001}}
    out = result(result="hi", num_turns=1, total_cost_usd=0.0018208000000000002, usage=usage,
                 modelUsage={"claude-opus-5-5": session}, model_usage_since_last_result=by_model)  # fmt: skip
    for parsed in (parse_json(out, "", 0, NOW, TZ), parse_stream_json(out, "", 0, NOW, TZ)):
        assert parsed.cost_usd == pytest.approx(0.0010104)
        assert parsed.usage == TokenUsage(123, 9, 67, 45)
    # A resumed turn that called no model cost nothing (it was charged the session's total again).
    idle = result(result="hi", total_cost_usd=0.0018, usage=usage, model_usage_since_last_result={})
    assert parse_json(idle, "", 0, NOW, TZ).cost_usd == 0.0
    # A CLI without the field: its total, as before.
    older = result(result="hi", total_cost_usd=0.0123, usage=usage)
    assert parse_json(older, "", 0, NOW, TZ).cost_usd == 0.0123


def test_a_result_stopped_at_its_budget_counts_the_tokens_its_model_usage_gives() -> None:
    # Claude Code 2.1.330 stopped by `--max-budget-usd` (against the fake provider): `usage` all zero beside the turn's
    # real counts by model. The attempt was recorded at 0 tokens and $0.0009, unseen by --max-tokens and the windows.
    turn = {"inputTokens": 123, "outputTokens": 9, "cacheReadInputTokens": 67, "cacheCreationInputTokens": 45,
            "webSearchRequests": 0, "costUSD": 0.0009104000000000001, "contextWindow": 1000000}  # fmt: skip
    zero = {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0,
            "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0}}  # fmt: skip
    by_model = {"claude-opus-5-5": turn}
    out = result(subtype="error_max_budget_usd", is_error=True, errors=["Reached maximum budget ($0.0001)"],
                 terminal_reason="budget_exhausted", total_cost_usd=0.0009104000000000001, usage=zero,
                 modelUsage=by_model, model_usage_since_last_result=by_model)  # fmt: skip
    for parsed in (parse_json(out, "", 1, NOW, TZ), parse_stream_json(out, "", 1, NOW, TZ)):
        assert (parsed.outcome, parsed.error_class) == ("failed", "contract")
        assert parsed.usage == TokenUsage(123, 9, 67, 45)
    # After --resume, `modelUsage` is the session's: only this turn's figures count.
    session = {**turn, "inputTokens": 246}
    resumed = json.loads(out) | {"modelUsage": {"claude-opus-5-5": session}}
    assert parse_json(json.dumps(resumed), "", 1, NOW, TZ).usage == TokenUsage(123, 9, 67, 45)
    # Another failure with an all-zero usage, on a CLI without the turn's own figures, is not charged the session's.
    other = json.loads(out) | {"subtype": "error_during_execution", "modelUsage": {"claude-opus-5-5": session}}
    del other["model_usage_since_last_result"]
    assert parse_json(json.dumps(other), "", 1, NOW, TZ).usage == TokenUsage()
