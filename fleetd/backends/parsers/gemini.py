"""Gemini CLI (`gemini -p … -o json|stream-json`) output.

On an API error the CLI prints nothing on stdout, a JSON error object at the end of stderr (after log lines
and stack traces) and exits with the HTTP status mod 256 (429 → 173, 503 → 247, 500 → 244, 400 → 144).
Errors that are not HTTP statuses (model not found, fetch failed) exit 1 with `"code": 1`.

What 0.61.0 prints, measured against a loopback server, and what it means here:
* 429 per-minute (RESOURCE_EXHAUSTED, RetryInfo): "RetryableQuotaError" → rate_limited, reset from
  "Suggested retry after 1s". Its text says "exceeded your current quota … billing details" like OpenAI's
  insufficient_quota, yet it lifts within a minute: for Gemini a 429 is a rate limit unless it says more.
* 429 per-day (quotaId …PerDay…): "You have exhausted your daily quota on this model." → rate_limited too:
  the free tier's requests-per-day reset at midnight Pacific time by themselves (ai.google.dev rate-limits
  page); reset_at is the provider's "retry in" when the dump shows one, else that midnight.
* out of money: `limit: 0` (the project's tier grants this model nothing until billing is set up),
  INSUFFICIENT_G1_CREDITS_BALANCE / prepayment credits, and BILLING_DISABLED ("requires billing to be enabled",
  a 403) → quota: waiting does not help, and the key itself is fine.
* 503 "The model is overloaded": the CLI calls it RetryableQuotaError too, but it is the server → transient;
  500 → transient; MODEL_CAPACITY_EXHAUSTED → transient (capacity, not this profile's budget).
* 400 "API key not valid" (INVALID_ARGUMENT, API_KEY_INVALID) → auth: the words beat the status.
* 400 otherwise → contract; 404 ModelNotFoundError → contract; "fetch failed" (connection refused) → transient.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from fleetd.backends.parsers import (
    EXCERPT_CHARS,
    as_int,
    as_str,
    aware,
    classify,
    classify_text,
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
    tail_excerpt,
    tool_call,
    unknown,
    without_noise,
)
from fleetd.backends.reset_time import parse_reset_time
from fleetd.records.result import ErrorClass, ParsedOutput, TokenUsage

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
_EXIT_STATUS = {code % 256: code for code in (400, 401, 403, 404, 429, 500, 502, 503, 504)}
_ERROR_TYPE: dict[str, ErrorClass] = {
    "TerminalQuotaError": "rate_limited",
    "RetryableQuotaError": "rate_limited",
    "FatalAuthenticationError": "auth",
    "FatalInputError": "contract",
    "FatalConfigError": "contract",
    "FatalTurnLimitedError": "contract",
    "FatalSandboxError": "contract",
    "ModelNotFoundError": "contract",
}
# A live line that shows a 429. Not "QuotaError": 0.61 labels a 503 "RetryableQuotaError" as well.
_LIMIT_LINE = re.compile(
    r"status 429|\"code\"\s*:\s*429|RESOURCE_EXHAUSTED|Resource has been exhausted|"
    r"exhausted your daily quota|Usage limit reached for|Quota exceeded for metric",
    re.I,
)
# Out of money rather than out of requests (see the module docstring).
_GEMINI_QUOTA = re.compile(
    r"limit:\s*0(?![\d.])|INSUFFICIENT_G1_CREDITS_BALANCE|prepayment credits|credits? (?:are |is )?depleted|"
    r"BILLING_DISABLED|requires billing to be enabled",
    re.I,
)
_CAPACITY = re.compile(r"MODEL_CAPACITY_EX(?:CEEDED|HAUSTED)|exhausted your capacity|capacity exceeded", re.I)
_DAILY = re.compile(r"exhausted your daily quota|PerDay|Daily", re.I)
# Requests-per-day quotas of the Gemini API reset at midnight Pacific time.
_DAILY_RESET_ZONE = ZoneInfo("America/Los_Angeles")
# Lines of stderr on every run (start-up chatter), which say nothing about a crash.
_STDERR_NOISE = re.compile(
    r"^Warning: 256-color support|^Ripgrep is not available|^\[STARTUP\]|^Loaded cached credentials|"
    r"^Data collection is disabled|^YOLO mode is enabled"
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
    error_class = _error_class(error, exit_code, stderr) or "unknown"
    return ParsedOutput(
        outcome="failed",
        error_class=error_class,
        reset_at=_reset(message, stderr, error_class, now, tz),
        session_id=as_str(error_obj.get("session_id")),
        message=excerpt(_inner_message(message)),
    )


def _no_json(stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    """No JSON anywhere: go by the exit code and the log text (e.g. a truncated stack-trace dump)."""
    said = f"{stdout or ''}\n{without_noise(stderr, _STDERR_NOISE)}".strip()
    if exit_code in (0, None):
        return unknown(stdout, stderr)
    if not said:
        return silent_exit(exit_code)
    error_class = _gemini_class(_EXIT_STATUS.get(exit_code), said) or _EXIT_CLASS.get(exit_code)
    error_class = error_class or ("rate_limited" if _LIMIT_LINE.search(said) else None) or "unknown"
    limit_line = next((ln for ln in said.splitlines() if _LIMIT_LINE.search(ln)), None)
    return ParsedOutput(
        outcome="failed",
        error_class=error_class,
        reset_at=_reset("", stderr, error_class, now, tz),
        message=excerpt(limit_line) if limit_line else tail_excerpt(said),
    )


def _error_class(error: dict[str, Any], exit_code: int | None, stderr: str = "") -> ErrorClass | None:
    """The JSON error's class: its code (an HTTP status, or 1), else the exit code's status, with the words."""
    message = as_str(error.get("message")) or ""
    code = as_int(error.get("code"))
    status = code if code is not None and 100 <= code <= 599 else _EXIT_STATUS.get(exit_code or 0)
    # The dump above the JSON keeps what the JSON drops: the error class and `reason: '…'`.
    context = f"{message}\n{(stderr or '')[-_STDERR_TAIL:]}"
    return (
        _gemini_class(status, message, context)
        or _ERROR_TYPE.get(str(error.get("type")))
        or (_EXIT_CLASS.get(exit_code) if exit_code is not None else None)
    )


def _gemini_class(status: int | None, message: str, context: str | None = None) -> ErrorClass | None:
    """Gemini's reading of a status and its words (see the module docstring for each case)."""
    context = context if context is not None else message
    if _GEMINI_QUOTA.search(context):
        return "quota"
    if _CAPACITY.search(message):
        return "transient"
    if status == 429 or (status is None and _LIMIT_LINE.search(message)):
        return "rate_limited"  # even when its words say "billing details": see the module docstring
    if status is None and re.search(r"ModelNotFoundError", context):
        return "contract"
    return classify(status, message)


def _inner_message(message: str) -> str:
    """0.61 puts the provider's whole JSON body in `message` for some statuses: its own message reads better."""
    inner = loads_object(message)
    return as_str(dig(inner, "error", "message")) or message if inner is not None else message


def _reset(message: str, stderr: str, error_class: ErrorClass, now: datetime, tz: tzinfo) -> datetime | None:
    if error_class != "rate_limited":
        return None
    tail = (stderr or "")[-_STDERR_TAIL:]
    found = parse_reset_time(message, now, tz) or parse_reset_time(tail, now, tz)
    if found is None and (_DAILY.search(message) or _DAILY.search(tail)):
        return _next_pacific_midnight(now)
    return found


def _next_pacific_midnight(now: datetime) -> datetime:
    local = now.astimezone(_DAILY_RESET_ZONE)
    return datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=_DAILY_RESET_ZONE)


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


# `-o json` prints one pretty-printed document: its lines are not JSON each. These are the lines of such a
# document (a brace, `"key": value`, an array item); `"response"` and an error's `"message"` are what matter.
_PRETTY_JSON = re.compile(
    r'^\s*(?:[{}\[\]],?|"(?:[^"\\]|\\.)*"\s*:.*|"(?:[^"\\]|\\.)*",?|-?\d[\d.eE+-]*,?|(?:true|false|null),?)\s*$'
)
_PRETTY_FIELD = re.compile(r'^\s*"(response|message)"\s*:\s*("(?:[^"\\]|\\.)*")\s*,?\s*$')


@safe_render
def render_line(line: str) -> str | None:
    """One line of Gemini's output, readable: the response and errors of the `-o json` document, or of a
    stream-json event the assistant's text, `→ tool: argument` per tool call, failed tools, errors and the
    summary. Log lines and stack dumps on stderr stay as they are."""
    obj = loads_object(line)
    if obj is not None:
        return _render_event(obj)
    field = _PRETTY_FIELD.match(line)
    if field:
        text = json.loads(field.group(2))
        return text if field.group(1) == "response" else f"error: {one_line(text, EXCERPT_CHARS)}"
    return None if _PRETTY_JSON.match(line) else line


def _render_event(obj: dict[str, Any]) -> str | None:
    kind = obj.get("type")
    if kind == "init":
        return f"session {obj.get('session_id') or '?'} ({obj.get('model') or 'model ?'})"
    if kind == "message" and obj.get("role") == "assistant":
        return as_str(obj.get("content"))  # streamed deltas arrive one line each
    if kind == "tool_use":
        return tool_call(obj.get("tool_name"), obj.get("parameters"))
    if kind == "tool_result" and obj.get("status") == "error":
        return f"  ✗ {one_line(dig(obj, 'error', 'message') or obj.get('output') or 'tool error')}"
    if kind == "error":
        return f"error: {one_line(obj.get('message') or 'error', EXCERPT_CHARS)}"
    if kind == "result":
        stats = obj.get("stats") if isinstance(obj.get("stats"), dict) else {}
        if obj.get("status") not in (None, "success"):
            return f"error: {one_line(dig(obj, 'error', 'message') or obj.get('status'), EXCERPT_CHARS)}"
        return f"done: tokens in {count(stats.get('input_tokens'))} out {count(stats.get('output_tokens'))}"
    if obj.get("error") is not None and isinstance(obj.get("error"), dict | str):  # a one-line `-o json` error
        error = obj["error"]
        return f"error: {one_line(dig(error, 'message') if isinstance(error, dict) else error, EXCERPT_CHARS)}"
    if as_str(obj.get("response")):  # a one-line `-o json` answer
        return str(obj["response"])
    return None
