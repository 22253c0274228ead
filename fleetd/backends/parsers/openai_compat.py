"""One HTTP response from an OpenAI-compatible server (OpenAI, Ollama, vLLM, llama.cpp, a LiteLLM proxy).

Accepts `/v1/chat/completions` (plain or SSE-streamed) and `/v1/responses` bodies. Status 0 stands for
"no response at all" (connection refused, reset, timeout), which is transient.

Classes: 5xx and 529 transient; 401/403 auth; 429 rate_limited, with retry-after or x-ratelimit-reset-* as
the reset; but a 429 (or any status) whose error code is insufficient_quota or a spend limit is quota; 400
contract unless its words say "bad key" (auth) or "out of credits" (quota).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, tzinfo
from typing import Any

from fleetd.backends.parsers import (
    as_str,
    aware,
    classify,
    classify_text,
    count,
    dig,
    excerpt,
    fail_soft,
    loads_object,
    unknown,
)
from fleetd.backends.reset_time import (
    epoch_to_datetime,
    parse_duration_seconds,
    parse_reset_time,
    parse_retry_after,
)
from fleetd.records.result import ErrorClass, ParsedOutput, TokenUsage

_QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "enforced_spend_limit_reached",
    }
)


@fail_soft
def parse_chat_response(status: int, headers: Mapping[str, str], body: str, now: datetime, tz: tzinfo) -> ParsedOutput:
    now = aware(now, tz)
    lowered = _lower_headers(headers)
    obj = loads_object(body)
    if isinstance(status, int) and 200 <= status < 300:
        return _success(obj, body)
    return _error(status, lowered, obj, body, now, tz)


def _success(obj: dict[str, Any] | None, body: str) -> ParsedOutput:
    if obj is None:
        obj = _from_sse(body)
    if obj is None:
        return unknown(body, note="unparseable 2xx body")
    if obj.get("error"):
        message = _error_message(obj) or "error in a 2xx body"
        return ParsedOutput(outcome="failed", error_class=classify_text(message) or "unknown", message=excerpt(message))
    usage = _usage(obj.get("usage"))
    text = _output_text(obj)
    if usage is None and text is None:
        return unknown(body, note="2xx body without choices, output or usage")
    return ParsedOutput(
        outcome="succeeded", usage=usage or TokenUsage(), model=as_str(obj.get("model")), final_text=text
    )


def _error(
    status: object,
    headers: dict[str, str],
    obj: dict[str, Any] | None,
    body: str,
    now: datetime,
    tz: tzinfo,
) -> ParsedOutput:
    message = (_error_message(obj) if obj is not None else None) or excerpt(body) or None
    code = _error_code(obj)
    error_class: ErrorClass = (
        ("quota" if code in _QUOTA_CODES else None)
        or ("transient" if status in (0, None) else None)
        or classify(status, message)
        or "unknown"
    )
    reset_at = None
    if error_class == "rate_limited":
        reset_at = header_reset(headers, now, tz) or parse_reset_time(message or "", now, tz)
    label = f"HTTP {status}" if status else "no response"
    return ParsedOutput(
        outcome="failed",
        error_class=error_class,
        reset_at=reset_at,
        model=as_str(obj.get("model")) if obj is not None else None,
        message=excerpt(f"{label}: {message}" if message else label),
    )


def header_reset(headers: Mapping[str, str], now: datetime, tz: tzinfo) -> datetime | None:
    """When to try again, from retry-after(-ms) or the x-ratelimit-reset-* headers (e.g. '6m0s', '20ms')."""
    h = _lower_headers(headers)
    if (ms := parse_duration_seconds(h.get("retry-after-ms", ""))) is not None:
        return now + timedelta(milliseconds=ms)
    if "retry-after" in h and (found := parse_retry_after(h["retry-after"], now, tz)) is not None:
        return found
    # Wait for the exhausted budget; when the server doesn't say which one is, for the later of the two.
    exhausted = [kind for kind in ("requests", "tokens") if h.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0"]
    kinds = exhausted or ["requests", "tokens"]
    resets = [r for r in (_reset_value(h.get(f"x-ratelimit-reset-{k}"), now, tz) for k in kinds) if r is not None]
    if not resets and "x-ratelimit-reset" in h:
        resets = [r for r in [_reset_value(h["x-ratelimit-reset"], now, tz)] if r is not None]
    return max(resets) if resets else None


def _reset_value(value: str | None, now: datetime, tz: tzinfo) -> datetime | None:
    """A duration ('6m0s', '1.5s', '20ms', '30'), or an epoch some gateways send instead."""
    if not value:
        return None
    epoch = epoch_to_datetime(value.strip(), tz) if value.strip().isdigit() else None
    if epoch is not None:
        return epoch
    seconds = parse_duration_seconds(value)
    return None if seconds is None else now + timedelta(seconds=seconds)


def _lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if not isinstance(headers, Mapping):
        return {}
    return {str(k).lower(): v for k, v in headers.items() if isinstance(v, str)}


def _error_message(obj: dict[str, Any]) -> str | None:
    error = obj.get("error")
    if isinstance(error, dict):
        return as_str(error.get("message")) or as_str(error.get("type"))
    return as_str(error) or as_str(obj.get("message"))  # vLLM's older flat {"object":"error","message":…}


def _error_code(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return None
    for path in (("error", "code"), ("error", "type"), ("error", "details", "error_code")):
        value = dig(obj, *path)
        if isinstance(value, str) and value in _QUOTA_CODES:
            return value
    return None


def _usage(usage: object) -> TokenUsage | None:
    """Chat (`prompt_tokens`…) or Responses (`input_tokens`…) usage; cached tokens are split out of input."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt, output = count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
        cached = count(dig(usage, "prompt_tokens_details", "cached_tokens"))
    else:
        prompt, output = count(usage.get("input_tokens")), count(usage.get("output_tokens"))
        cached = count(dig(usage, "input_tokens_details", "cached_tokens"))
    return TokenUsage(input_tokens=max(0, prompt - cached), output_tokens=output, cache_read_tokens=cached)


def _output_text(obj: dict[str, Any]) -> str | None:
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return as_str(dig(choices[0], "message", "content")) or as_str(choices[0].get("text"))
    if as_str(obj.get("output_text")):
        return obj["output_text"]
    parts: list[str] = []
    for item in _list(obj.get("output")):
        for block in _list(dig(item, "content")):
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
    return "".join(parts) or None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _from_sse(body: str) -> dict[str, Any] | None:
    """Fold a streamed chat completion (`data: {…}` chunks) into one non-streamed-looking object."""
    text: list[str] = []
    folded: dict[str, Any] = {}
    chunks = 0
    for line in (body or "").splitlines():
        payload = line[5:].strip() if line.startswith("data:") else ""
        chunk = loads_object(payload)
        if chunk is None:
            continue
        chunks += 1
        if chunk.get("error"):
            return chunk
        folded["model"] = chunk.get("model") or folded.get("model")
        folded["usage"] = chunk.get("usage") or folded.get("usage")
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            delta = as_str(dig(choices[0], "delta", "content"))
            text.append(delta or "")
    if not chunks:
        return None
    folded["choices"] = [{"message": {"content": "".join(text)}}]
    return folded
