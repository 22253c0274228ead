"""Gemini CLI (`gemini -p … -o json|stream-json`) output.

On an API error the CLI prints nothing on stdout, a JSON error object at the end of stderr (after log lines
and stack traces) and exits with the HTTP status mod 256 (429 → 173).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from fleetd.backends.parsers import (
    as_str,
    aware,
    classify_text,
    count,
    dig,
    excerpt,
    fail_soft,
    json_objects,
    last_json_block,
    loads_object,
    safe_bool,
    status_class,
    tail_excerpt,
    unknown,
)
from fleetd.backends.reset_time import parse_reset_time
from fleetd.backends.result import ErrorClass, ParsedOutput, TokenUsage

# Exit codes from docs/cli/headless.md, plus HTTP statuses the CLI hands to process.exit (mod 256).
_EXIT_CLASS: dict[int, ErrorClass] = {
    41: "auth",
    42: "contract",
    44: "contract",
    52: "contract",
    53: "contract",
    55: "contract",
    400 % 256: "contract",
    401 % 256: "auth",
    403 % 256: "auth",
    404 % 256: "contract",
    429 % 256: "rate_limited",
    500 % 256: "transient",
    502 % 256: "transient",
    503 % 256: "transient",
    504 % 256: "transient",
}
_ERROR_TYPE: dict[str, ErrorClass] = {
    "TerminalQuotaError": "rate_limited",
    "RetryableQuotaError": "rate_limited",
    "FatalAuthenticationError": "auth",
    "FatalInputError": "contract",
    "FatalConfigError": "contract",
    "FatalTurnLimitedError": "contract",
    "FatalSandboxError": "contract",
}
_LIMIT_LINE = re.compile(
    r"status 429|\"code\"\s*:\s*429|RESOURCE_EXHAUSTED|Resource has been exhausted|QuotaError|"
    r"exhausted your daily quota|Usage limit reached for|Quota exceeded for metric",
    re.I,
)
_STDERR_TAIL = 4000  # the reset hint, if any, sits near the end of a long stack-trace dump


@dataclass
class _Stream:
    objects: int = 0
    session_id: str | None = None
    model: str | None = None
    text: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)


@fail_soft
def parse_json(stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    """`-o json`: {session_id, response, stats} on success; {session_id, error} on stdout or stderr."""
    now = aware(now, tz)
    obj = last_json_block(stdout)
    if obj is not None and "error" not in obj and ("response" in obj or "stats" in obj):
        parsed = ParsedOutput(
            outcome="succeeded",
            usage=_models_usage(dig(obj, "stats", "models")),
            model=_main_model(dig(obj, "stats", "models"), "total"),
            session_id=as_str(obj.get("session_id")),
            final_text=as_str(obj.get("response")),
        )
        return parsed if exit_code in (0, None) else _failed_despite_output(parsed, stderr, exit_code)
    error_obj = obj if obj is not None and "error" in obj else _stderr_error(stderr)
    return _failure(error_obj, stdout, stderr, exit_code, now, tz)


@fail_soft
def parse_stream_json(stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    """`-o stream-json`: init, message (deltas), tool_*, error, and a final result event."""
    now = aware(now, tz)
    stream = _scan(stdout)
    result = stream.result
    if result is not None and result.get("status") == "success":
        stats = result.get("stats")
        parsed = ParsedOutput(
            outcome="succeeded",
            usage=_stream_usage(stats),
            model=_main_model(dig(stats, "models"), "total_tokens") or _real_model(stream.model),
            session_id=stream.session_id,
            final_text="".join(stream.text) or None,
        )
        return parsed if exit_code in (0, None) else _failed_despite_output(parsed, stderr, exit_code)
    error_obj = {"error": result.get("error")} if result is not None and result.get("error") else None
    error_obj = error_obj or _stderr_error(stderr)
    if error_obj is None and stream.errors:
        error_obj = {"error": {"message": stream.errors[-1]}}
    if error_obj is None and stream.objects and exit_code in (0, None):
        return unknown(stdout, stderr, note="no result event")
    parsed = _failure(error_obj, stdout, stderr, exit_code, now, tz)
    parsed.session_id = parsed.session_id or stream.session_id
    return parsed


@safe_bool
def is_rate_limit_line(line: str) -> bool:
    """True when a streamed line (stdout event or stderr log) already shows a quota / 429."""
    obj = loads_object(line)
    if obj is None:
        return bool(_LIMIT_LINE.search(line))
    error = obj.get("error")
    if obj.get("type") == "error":
        error = {"message": obj.get("message")}
    if not isinstance(error, dict):
        return False
    return _error_class(error, None) == "rate_limited"


def _scan(stdout: str) -> _Stream:
    stream = _Stream()
    for obj in json_objects(stdout):
        stream.objects += 1
        kind = obj.get("type")
        if kind == "init":
            stream.session_id = as_str(obj.get("session_id"))
            stream.model = as_str(obj.get("model"))
        elif kind == "message" and obj.get("role") == "assistant" and isinstance(obj.get("content"), str):
            if obj.get("delta") is not True:
                stream.text.clear()  # a whole message replaces what the deltas built
            stream.text.append(obj["content"])
        elif kind == "error":
            stream.errors.append(as_str(obj.get("message")) or "error")
        elif kind == "result":
            stream.result = obj
    return stream


def _stderr_error(stderr: str) -> dict[str, Any] | None:
    block = last_json_block(stderr)
    return block if block is not None and isinstance(block.get("error"), dict | str) else None


def _failure(
    error_obj: dict[str, Any] | None,
    stdout: str,
    stderr: str,
    exit_code: int | None,
    now: datetime,
    tz: tzinfo,
) -> ParsedOutput:
    if error_obj is None:
        return _no_json(stdout, stderr, exit_code, now, tz)
    error = error_obj.get("error")
    error = error if isinstance(error, dict) else {"message": str(error)}
    message = as_str(error.get("message")) or as_str(error.get("type")) or "error"
    error_class = _error_class(error, exit_code) or "unknown"
    return ParsedOutput(
        outcome="failed",
        error_class=error_class,
        reset_at=_reset(message, stderr, error_class, now, tz),
        session_id=as_str(error_obj.get("session_id")),
        message=excerpt(message),
    )


def _no_json(stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    """No JSON anywhere: go by the exit code and the log text (e.g. a truncated stack-trace dump)."""
    both = f"{stdout or ''}\n{stderr or ''}".strip()
    if exit_code in (0, None):
        return unknown(stdout, stderr)
    if not both:
        return ParsedOutput(outcome="failed", error_class="transient", message=f"exited {exit_code} without output")
    error_class = _EXIT_CLASS.get(exit_code) or ("rate_limited" if _LIMIT_LINE.search(both) else None)
    error_class = error_class or classify_text(both) or "unknown"
    limit_line = next((ln for ln in both.splitlines() if _LIMIT_LINE.search(ln)), None)
    return ParsedOutput(
        outcome="failed",
        error_class=error_class,
        reset_at=_reset("", stderr, error_class, now, tz),
        message=excerpt(limit_line) if limit_line else tail_excerpt(both),
    )


def _error_class(error: dict[str, Any], exit_code: int | None) -> ErrorClass | None:
    message = as_str(error.get("message")) or ""
    return (
        status_class(error.get("code"))
        or _ERROR_TYPE.get(str(error.get("type")))
        or ("rate_limited" if _LIMIT_LINE.search(message) else None)
        or classify_text(message)
        or (_EXIT_CLASS.get(exit_code) if exit_code is not None else None)
    )


def _reset(message: str, stderr: str, error_class: ErrorClass, now: datetime, tz: tzinfo) -> datetime | None:
    if error_class != "rate_limited":
        return None
    return parse_reset_time(message, now, tz) or parse_reset_time((stderr or "")[-_STDERR_TAIL:], now, tz)


def _failed_despite_output(parsed: ParsedOutput, stderr: str, exit_code: int | None) -> ParsedOutput:
    """A success body with a non-zero exit: keep the numbers, but do not call it a success."""
    parsed.outcome = "failed"
    parsed.error_class = _EXIT_CLASS.get(exit_code or 0) or classify_text(stderr) or "unknown"
    parsed.message = f"exited {exit_code} after a response" + (f": {tail_excerpt(stderr, 200)}" if stderr else "")
    return parsed


def _models_usage(models: object) -> TokenUsage:
    """Sum of stats.models[*].tokens; `input` is prompt minus cached (derived for older CLIs)."""
    total = TokenUsage()
    if not isinstance(models, dict):
        return total
    for stats in models.values():
        tokens = dig(stats, "tokens")
        if not isinstance(tokens, dict):
            continue
        cached = count(tokens.get("cached"))
        fresh = tokens.get("input") if "input" in tokens else count(tokens.get("prompt")) - cached
        total += TokenUsage(
            input_tokens=max(0, count(fresh)),
            output_tokens=count(tokens.get("candidates")) + count(tokens.get("thoughts")),
            cache_read_tokens=cached,
        )
    return total


def _stream_usage(stats: object) -> TokenUsage:
    if not isinstance(stats, dict):
        return TokenUsage()
    cached = count(stats.get("cached"))
    fresh = stats.get("input") if "input" in stats else count(stats.get("input_tokens")) - cached
    return TokenUsage(
        input_tokens=max(0, count(fresh)),
        output_tokens=count(stats.get("output_tokens")),
        cache_read_tokens=cached,
    )


def _main_model(models: object, total_key: str) -> str | None:
    """The model with most tokens; on a tie the later one (the router's classifier call comes first)."""
    if not isinstance(models, dict):
        return None
    best, best_total = None, -1
    for name, stats in models.items():
        tokens = dig(stats, "tokens") if total_key == "total" else stats
        total = count(dig(tokens, total_key))
        if isinstance(name, str) and total >= best_total:
            best, best_total = name, total
    return best


def _real_model(name: str | None) -> str | None:
    return None if name in (None, "auto") else name
