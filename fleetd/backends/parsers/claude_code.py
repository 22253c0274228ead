"""Claude Code (`claude -p`) output in its three formats: json, stream-json (NDJSON) and text.

The final `result` object is authoritative when present; exit codes are not (limits exit 0 or 1 by version).
Without a result (usage limit in some versions, or the run was cut short) the stream's signals decide:
`rate_limit_event` rejected, assistant `error`, `system/api_retry` statuses, and the limit prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from fleetd.backends.parsers import (
    EXCERPT_CHARS,
    as_float,
    as_int,
    as_str,
    aware,
    classify,
    count,
    dig,
    excerpt,
    fail_soft,
    json_objects,
    last_json_block,
    loads_object,
    one_line,
    safe_bool,
    safe_render,
    silent_exit,
    status_class,
    tail_excerpt,
    tool_call,
    unknown,
    without_noise,
)
from fleetd.backends.reset_time import epoch_to_datetime, parse_reset_time
from fleetd.records.result import ErrorClass, ParsedOutput, TokenUsage, WindowState

# Every user-visible limit notice across versions (agent-clis.md §1.4), old pipe-epoch form included.
# Anchored at the start of a line: the CLI prints them as the whole message, while an answer that merely
# quotes one mid-sentence must not read as a limit.
_LIMIT_NOTICE = re.compile(
    r"^\s*(?:Claude AI usage limit reached|(?:5-hour|weekly|opus weekly|session) limit reached|"
    r"you[\u2019']ve hit your (?:session |weekly )?limit|you[\u2019']re out of extra usage|"
    r"API Error: Rate limit reached|API Error: Request rejected \(429\)|API Error: 429\b)",
    re.I,
)
_ERROR_NOTICE = re.compile(r"^\s*API Error\b", re.I)
# What stderr holds on a healthy run (nothing, in 2.1.330): anything else there may explain a crash.
_STDERR_NOISE = re.compile(r"^\s*(?:warning|debug)\b", re.I)
_BINARY = re.compile(r"[\x00\ufffd]")

_WINDOW_MINUTES = {"five_hour": 300, "seven_day": 10080, "seven_day_opus": 10080, "seven_day_sonnet": 10080}
_API_ERROR_TYPE: dict[str, ErrorClass] = {
    "rate_limit_error": "rate_limited",
    "billing_error": "quota",
    "overloaded_error": "transient",
    "api_error": "transient",
    "authentication_error": "auth",
    "permission_error": "auth",
    "invalid_request_error": "contract",
    "request_too_large": "contract",
    "not_found_error": "contract",
}
# The assistant line's `error` (2.1.330 also writes "model_not_found"; "unknown" says nothing).
_ASSISTANT_ERROR: dict[str, ErrorClass] = {
    "rate_limit": "rate_limited",
    "billing_error": "quota",
    "authentication_failed": "auth",
    "invalid_request": "contract",
    "model_not_found": "contract",
    "server_error": "transient",
}
# Runs that hit a limit the caller configured: retrying on another profile would end the same way.
_SUBTYPE: dict[str, ErrorClass] = {
    "error_max_turns": "contract",
    "error_max_budget_usd": "contract",
    "error_max_structured_output_retries": "contract",
}


@dataclass
class _Scan:
    """What one pass over the NDJSON lines collected."""

    result: dict[str, Any] | None = None
    session_id: str | None = None
    model: str | None = None
    objects: int = 0
    windows: dict[str, WindowState] = field(default_factory=dict)
    rejected_reset: datetime | None = None
    rejected: bool = False
    assistant_error: str | None = None
    api_status: int | None = None
    retry_status: int | None = None
    notice: str | None = None  # text of a synthetic (error) assistant message
    last_text: str | None = None
    usage_by_message: dict[str, TokenUsage] = field(default_factory=dict)


@fail_soft
def parse_stream_json(stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    """`--output-format stream-json --verbose`: NDJSON ending in the result object (when there is one)."""
    now = aware(now, tz)
    return _interpret(_scan(stdout, tz), stdout, stderr, exit_code, now, tz)


@fail_soft
def parse_json(stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    """`--output-format json`: one result object (found even if logs or pretty-printing surround it)."""
    now = aware(now, tz)
    scan = _scan(stdout, tz)
    if scan.result is None:
        block = last_json_block(stdout)
        if block is not None and block.get("type") == "result":
            scan.objects += 1
            scan.result = block
    return _interpret(scan, stdout, stderr, exit_code, now, tz)


@fail_soft
def parse_text(stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    """`--output-format text`: the answer, or an error/limit line, on stdout; exit code unreliable."""
    now = aware(now, tz)
    text = (stdout or "").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    # An error prints as the only line; with a non-zero exit, trust it as the last line too.
    if last and (len(lines) == 1 or exit_code not in (0, None)) and (_ERROR_NOTICE.match(last) or _limit_notice(last)):
        return _text_failure(last, now, tz)
    if exit_code == 0 and text and not _BINARY.search(text):
        return ParsedOutput(outcome="succeeded", final_text=text)
    return _no_result(text, stderr, exit_code, now, tz)


@safe_bool
def is_rate_limit_line(line: str) -> bool:
    """True when one streamed line already shows a rate or usage limit, so the attempt can end now."""
    obj = loads_object(line)
    if obj is None:
        return bool(_LIMIT_NOTICE.match(line))
    kind, subtype = obj.get("type"), obj.get("subtype")
    if kind == "system" and subtype == "api_retry":
        return as_int(obj.get("error_status")) == 429 or obj.get("error") == "rate_limit"
    if kind == "rate_limit_event":
        return dig(obj, "rate_limit_info", "status") == "rejected"
    if kind == "assistant":
        return _assistant_class(obj) == "rate_limited"
    if kind == "result" and obj.get("is_error") is True:
        return _result_class(obj) == "rate_limited"
    return False


def _scan(stdout: str, tz: tzinfo) -> _Scan:
    scan = _Scan()
    for obj in json_objects(stdout):
        scan.objects += 1
        kind = obj.get("type")
        scan.session_id = as_str(obj.get("session_id")) or scan.session_id
        if kind == "result":
            scan.result = obj
        elif kind == "system":
            _on_system(scan, obj)
        elif kind == "assistant":
            _on_assistant(scan, obj, tz)
        elif kind == "rate_limit_event" and isinstance(obj.get("rate_limit_info"), dict):
            _on_limit_info(scan, obj["rate_limit_info"], tz)
    return scan


def _on_system(scan: _Scan, obj: dict[str, Any]) -> None:
    if obj.get("subtype") == "init":
        scan.model = as_str(obj.get("model")) or scan.model
    elif obj.get("subtype") == "api_retry":
        scan.retry_status = as_int(obj.get("error_status")) or scan.retry_status


def _on_assistant(scan: _Scan, obj: dict[str, Any], tz: tzinfo) -> None:
    message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
    model = as_str(message.get("model"))
    text = _content_text(message.get("content"))
    if model == "<synthetic>" or obj.get("error") or obj.get("is_api_error_message"):
        scan.assistant_error = as_str(obj.get("error")) or scan.assistant_error
        scan.api_status = as_int(obj.get("api_error_status") or obj.get("apiErrorStatus")) or scan.api_status
        scan.notice = text or scan.notice
    else:
        scan.model = model or scan.model
        scan.last_text = text or scan.last_text
        msg_id = as_str(message.get("id")) or f"#{len(scan.usage_by_message)}"
        # Claude repeats a message's usage on every content block: the latest copy per id is the count.
        scan.usage_by_message[msg_id] = _usage(message.get("usage"))
    if isinstance(obj.get("quotaLimits"), dict):
        _on_limit_info(scan, obj["quotaLimits"], tz)


def _on_limit_info(scan: _Scan, info: dict[str, Any], tz: tzinfo) -> None:
    kind = as_str(info.get("rateLimitType")) or "unknown"
    utilization = as_float(info.get("utilization"))
    resets_at = epoch_to_datetime(info.get("resetsAt"), tz)
    scan.windows[kind] = WindowState(
        window_minutes=_WINDOW_MINUTES.get(kind),
        used_percent=None if utilization is None else utilization * 100.0,
        resets_at=resets_at,
        name=kind,
    )
    if info.get("status") == "rejected":
        scan.rejected = True
        # Blocked until every rejected window has reset: the latest reset binds.
        if resets_at is not None and (scan.rejected_reset is None or resets_at > scan.rejected_reset):
            scan.rejected_reset = resets_at


def _interpret(scan: _Scan, stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    if scan.result is not None:
        parsed = _from_result(scan.result, now, tz)
    elif scan.objects:
        parsed = _from_signals(scan, stdout, stderr, exit_code, now, tz)
    else:
        return _no_result(stdout, stderr, exit_code, now, tz)
    parsed.session_id = parsed.session_id or scan.session_id
    parsed.model = parsed.model or scan.model
    parsed.windows = list(scan.windows.values())
    if parsed.error_class == "rate_limited" and scan.rejected_reset is not None:
        parsed.reset_at = scan.rejected_reset  # the epoch beats anything parsed from prose
    return parsed


def _from_result(obj: dict[str, Any], now: datetime, tz: tzinfo) -> ParsedOutput:
    text = as_str(obj.get("result"))
    usage = _usage(obj.get("usage"))
    common: dict[str, Any] = {
        "usage": usage if usage.total else _model_usage(obj),
        "cost_usd": _cost(obj),
        "model": _main_model(obj.get("model_usage_since_last_result") or obj.get("modelUsage")),
        "session_id": as_str(obj.get("session_id")),
    }
    error_class = _result_class(obj)
    if error_class is None:
        return ParsedOutput(outcome="succeeded", final_text=text, **common)
    detail = text or "; ".join(_errors(obj)) or as_str(obj.get("subtype")) or "error result"
    return ParsedOutput(
        outcome="failed",
        error_class=error_class,
        reset_at=parse_reset_time(detail, now, tz) if error_class == "rate_limited" else None,
        message=excerpt(detail),
        **common,
    )


def _result_class(obj: dict[str, Any]) -> ErrorClass | None:
    """None for a success; otherwise the best-evidenced class (status and words, then error type, then subtype).

    2.1.330 answers a 400 "Credit balance is too low" (quota) and a 401 "Invalid API key" (auth) with the same
    result shape as a 529: api_error_status, api_error_type and the CLI's own prose in `result`.
    """
    subtype = obj.get("subtype")
    text = as_str(obj.get("result")) or ""
    if obj.get("is_error") is not True and subtype in (None, "success"):
        # Old CLIs reported a usage limit as a plain result; a result that IS a limit notice is not an answer.
        return "rate_limited" if "\n" not in text.strip() and _limit_notice(text) else None
    return (
        classify(obj.get("api_error_status"), text, *_errors(obj))
        or _API_ERROR_TYPE.get(str(obj.get("api_error_type")))
        or _SUBTYPE.get(str(subtype))
        or "unknown"
    )


def _errors(obj: dict[str, Any]) -> list[str]:
    errors = obj.get("errors")
    return [e for e in errors if isinstance(e, str)] if isinstance(errors, list) else []


def _from_signals(
    scan: _Scan, stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo
) -> ParsedOutput:
    """A stream with no result line: judge by what it did show."""
    notice = scan.notice or ""
    error_class: ErrorClass | None = (
        ("rate_limited" if scan.rejected else None)
        or classify(scan.api_status, notice)
        or _ASSISTANT_ERROR.get(str(scan.assistant_error))
        or status_class(scan.retry_status)
        or _limit_class(_plain_lines(stdout))
    )
    usage = sum(scan.usage_by_message.values(), TokenUsage())
    if error_class is None:
        if exit_code not in (0, None):
            said = without_noise(stderr, _STDERR_NOISE)
            if not said:
                # Started (init line), then died without a word: a crash, not an answer to judge.
                parsed = silent_exit(exit_code, "a result event or an error")
                parsed.usage = usage
                return parsed
            error_class = classify(None, said) or "unknown"
            return ParsedOutput(outcome="failed", error_class=error_class, usage=usage, message=tail_excerpt(said))
        # Truncated stream (no result and no error signal): don't claim success or failure.
        parsed = unknown(stdout, stderr, note="no result event")
        parsed.usage, parsed.final_text = usage, scan.last_text
        return parsed
    prose = notice or _plain_lines(stdout) or stderr or ""
    return ParsedOutput(
        outcome="failed",
        error_class=error_class,
        reset_at=parse_reset_time(prose, now, tz) if error_class == "rate_limited" else None,
        usage=usage,
        message=excerpt(prose) or f"{scan.assistant_error or scan.retry_status or 'error'} (no result event)",
    )


def _no_result(stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    """No JSON at all: usage-limit prose on stdout, an error on stderr, a crash, or junk."""
    both = f"{stdout or ''}\n{stderr or ''}"
    if _limit_notice(both):
        return _text_failure(_limit_notice(both) or "", now, tz)
    if exit_code not in (0, None):
        said = f"{stdout or ''}\n{without_noise(stderr, _STDERR_NOISE)}".strip()
        if not said:
            return silent_exit(exit_code)
        # A non-zero exit is a failure even when nothing in the output says why.
        error_class = classify(None, said) or "unknown"
        return ParsedOutput(outcome="failed", error_class=error_class, message=tail_excerpt(said))
    return unknown(stdout, stderr)


def _text_failure(line: str, now: datetime, tz: tzinfo) -> ParsedOutput:
    error_class = "rate_limited" if _limit_notice(line) else classify(None, line) or "unknown"
    return ParsedOutput(
        outcome="failed",
        error_class=error_class,
        reset_at=parse_reset_time(line, now, tz) if error_class == "rate_limited" else None,
        message=excerpt(line),
    )


def _limit_notice(text: str) -> str | None:
    """The line holding a limit notice, if any."""
    for line in (text or "").splitlines():
        if _LIMIT_NOTICE.match(line):
            return line.strip()
    return None


def _limit_class(text: str) -> ErrorClass | None:
    return "rate_limited" if _limit_notice(text) else None


def _plain_lines(text: str) -> str:
    """The non-JSON lines of a stream (a usage-limit notice may be printed bare)."""
    return "\n".join(line for line in (text or "").splitlines() if not line.lstrip().startswith("{"))


def _assistant_class(obj: dict[str, Any]) -> ErrorClass | None:
    message = obj.get("message")
    text = _content_text(message.get("content")) if isinstance(message, dict) else None
    status = obj.get("api_error_status") or obj.get("apiErrorStatus")
    if status is not None and (found := classify(status, text)) is not None:
        return found
    if obj.get("error"):
        return _ASSISTANT_ERROR.get(str(obj.get("error"))) or classify(None, text) or "unknown"
    if isinstance(message, dict) and message.get("model") == "<synthetic>":
        return _limit_class(_content_text(message.get("content")) or "")
    return None


def _content_text(content: object) -> str | None:
    if isinstance(content, str):
        return content or None
    if not isinstance(content, list):
        return None
    parts = [
        b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    return "\n".join(parts) or None


def _usage(usage: object) -> TokenUsage:
    if not isinstance(usage, dict):
        return TokenUsage()
    write = usage.get("cache_creation_input_tokens")
    if write is None and isinstance(usage.get("cache_creation"), dict):
        write = sum(count(v) for v in usage["cache_creation"].values())
    return TokenUsage(
        input_tokens=count(usage.get("input_tokens")),
        output_tokens=count(usage.get("output_tokens")),
        cache_read_tokens=count(usage.get("cache_read_input_tokens")),
        cache_write_tokens=count(write),
    )


def _model_usage(obj: dict[str, Any]) -> TokenUsage:
    """This turn's tokens by model, summed, where `usage` says none: 2.1.330 stopping at `--max-budget-usd`
    (`error_max_budget_usd`) writes an all-zero `usage` beside the real counts. `modelUsage` is the session's so far
    after `--resume`: only for a CLI without `model_usage_since_last_result`, and only for that stop."""
    by_model = obj.get("model_usage_since_last_result")
    if not isinstance(by_model, dict) and obj.get("subtype") == "error_max_budget_usd":
        by_model = obj.get("modelUsage")  # the session's, at worst: a turn that failed before any call has no figures
    if not isinstance(by_model, dict):
        return TokenUsage()
    total = TokenUsage()
    for stats in by_model.values():
        if isinstance(stats, dict):
            total += TokenUsage(
                input_tokens=count(stats.get("inputTokens")),
                output_tokens=count(stats.get("outputTokens")),
                cache_read_tokens=count(stats.get("cacheReadInputTokens")),
                cache_write_tokens=count(stats.get("cacheCreationInputTokens")),
            )
    return total


def _cost(obj: dict[str, Any]) -> float | None:
    """This invocation's cost. After `--resume`, `total_cost_usd` (and `modelUsage`) are the whole session's so far;
    `model_usage_since_last_result` (2.1.x) is this turn's alone, by model, where the CLI gives it."""
    turn = obj.get("model_usage_since_last_result")
    if isinstance(turn, dict):  # empty: the turn called no model, and cost nothing
        costs = [as_float(stats.get("costUSD")) if isinstance(stats, dict) else None for stats in turn.values()]
        if all(cost is not None for cost in costs):
            return sum(cost for cost in costs if cost is not None)
    for key in ("total_cost_usd", "total_cost", "cost_usd"):  # renamed in 1.0.22; cost_usd in old blog posts
        value = as_float(obj.get(key))
        if value is not None:
            return value
    return None


def _main_model(model_usage: object) -> str | None:
    """The model that did most of the work: highest cost, then most tokens."""
    if not isinstance(model_usage, dict) or not model_usage:
        return None

    def weight(item: tuple[Any, Any]) -> tuple[float, int]:
        stats = item[1] if isinstance(item[1], dict) else {}
        return (
            as_float(stats.get("costUSD")) or 0.0,
            count(stats.get("outputTokens")) + count(stats.get("inputTokens")),
        )

    name = max(model_usage.items(), key=weight)[0]
    return name if isinstance(name, str) and name else None


@safe_render
def render_line(line: str) -> str | None:
    """One stream-json line, readable: the assistant's text, `→ Tool: argument` per tool call, failed tool
    results, retries, a rejected limit, and the result's summary or error. The rest is bookkeeping."""
    obj = loads_object(line)
    if obj is None:
        return line
    kind = obj.get("type")
    if kind == "system":
        return _render_system(obj)
    if kind == "assistant":
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        if message.get("model") == "<synthetic>" or obj.get("error") or obj.get("is_api_error_message"):
            return f"error: {_content_text(message.get('content')) or obj.get('error') or 'API error'}"
        return _render_blocks(message.get("content"))
    if kind == "user":
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        return _render_tool_errors(message.get("content"))
    if kind == "rate_limit_event":
        info = obj.get("rate_limit_info") if isinstance(obj.get("rate_limit_info"), dict) else {}
        if info.get("status") != "rejected":
            return None
        resets = as_int(info.get("resetsAt"))
        return f"rate limit reached ({info.get('rateLimitType') or 'limit'})" + (
            f", resets at epoch {resets}" if resets is not None else ""
        )
    if kind == "result":
        return _render_result(obj)
    return None


def _render_system(obj: dict[str, Any]) -> str | None:
    subtype = obj.get("subtype")
    if subtype == "init":
        return f"session {obj.get('session_id') or '?'} ({obj.get('model') or 'model ?'}, in {obj.get('cwd') or '?'})"
    if subtype == "api_retry":
        status = obj.get("error_status") or obj.get("error") or "?"
        return f"retrying after API error {status} ({obj.get('attempt') or '?'} of {obj.get('max_retries') or '?'})"
    return None


def _render_blocks(content: object) -> str | None:
    if isinstance(content, str):
        return content or None
    parts: list[str] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and as_str(block.get("text")):
            parts.append(block["text"].strip("\n"))
        elif block.get("type") in ("tool_use", "server_tool_use"):
            parts.append(tool_call(block.get("name"), block.get("input")))
    return "\n".join(parts) or None


def _render_tool_errors(content: object) -> str | None:
    """Tool results are the tools' business, except a failed one: that explains what the agent did next."""
    errors = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_result" and block.get("is_error") is True:
            body = block.get("content")
            text = _content_text(body) if isinstance(body, list) else body
            errors.append(f"  ✗ {one_line(text) or 'tool error'}")
    return "\n".join(errors) or None


def _render_result(obj: dict[str, Any]) -> str:
    if obj.get("is_error") is True or obj.get("subtype") not in (None, "success"):
        detail = as_str(obj.get("result")) or "; ".join(_errors(obj)) or as_str(obj.get("subtype")) or "error"
        return f"error: {one_line(detail, EXCERPT_CHARS)}"
    facts = [f"{count(obj.get('num_turns'))} turn(s)"]
    if (ms := as_int(obj.get("duration_ms"))) is not None:
        facts.append(f"{ms / 1000:.1f}s")
    if (cost := _cost(obj)) is not None:
        facts.append(f"${cost:.4f}")
    return "done: " + ", ".join(facts)
