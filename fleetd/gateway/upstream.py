"""What an upstream's answer means for the router: its failure class and, for a rate limit, when it
lifts (from `retry-after`, `x-ratelimit-reset-*` or `anthropic-ratelimit-*-reset`). Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from fleetd.backends.parsers import classify, excerpt
from fleetd.backends.reset_time import epoch_to_datetime, parse_duration_seconds, parse_retry_after
from fleetd.records.result import ErrorClass
from fleetd.timefmt import from_iso

_QUOTA_CODES = frozenset({"insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached"})
_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")


def failure_class(status: int, body: bytes) -> tuple[ErrorClass, str]:
    """An upstream's non-2xx answer → (class, a one-line message). 429 rate_limited unless its code or
    words say quota; 402 quota; 5xx/529 transient; 401/403 auth; other 4xx contract (an Anthropic 400
    whose words say the credit is gone is quota)."""
    message, code = _error_message(body)
    if code in _QUOTA_CODES:
        return "quota", f"HTTP {status}: {message}"
    found = classify(status, message) or "unknown"
    if status in (400, 404, 422) and found not in ("quota", "auth"):
        found = "contract"
    return found, f"HTTP {status}: {message}" if message else f"HTTP {status}"


def reset_from_headers(headers: Mapping[str, str], now: datetime) -> datetime | None:
    """When a rate limit lifts, by the provider's headers (lower-case names); None when they do not say.
    Of several limits, the exhausted ones decide (remaining 0); when none says so, the latest reset."""
    h = {k.lower(): v for k, v in headers.items()}
    if (ms := parse_duration_seconds(h.get("retry-after-ms", ""))) is not None:
        return now + timedelta(milliseconds=ms)
    if "retry-after" in h and (found := parse_retry_after(h["retry-after"], now, UTC)) is not None:
        return found
    resets: dict[str, datetime] = {}
    exhausted: set[str] = set()
    for prefix in ("x-ratelimit", "anthropic-ratelimit"):
        for kind in _LIMITS:
            if prefix == "x-ratelimit":
                reset, remaining = h.get(f"x-ratelimit-reset-{kind}"), h.get(f"x-ratelimit-remaining-{kind}")
            else:
                reset, remaining = h.get(f"{prefix}-{kind}-reset"), h.get(f"{prefix}-{kind}-remaining")
            when = _reset_value(reset, now)
            if when is not None:
                resets[f"{prefix}:{kind}"] = when
                if (remaining or "").strip() == "0":
                    exhausted.add(f"{prefix}:{kind}")
    chosen = [resets[k] for k in exhausted] or list(resets.values())
    return max(chosen) if chosen else None


def _reset_value(value: str | None, now: datetime) -> datetime | None:
    """RFC 3339 (Anthropic), a duration such as '6m0s' or '20ms' (OpenAI), or an epoch."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isdigit() and (epoch := epoch_to_datetime(text, UTC)) is not None:
        return epoch
    if (seconds := parse_duration_seconds(text)) is not None:
        return now + timedelta(seconds=seconds)
    try:
        when = from_iso(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def _error_message(body: bytes) -> tuple[str, str | None]:
    try:
        obj = json.loads(body)
    except ValueError:
        return excerpt(body.decode("utf-8", "replace")), None
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or error.get("type") or ""
        code = error.get("code") if isinstance(error.get("code"), str) else error.get("type")
        return excerpt(str(message)), code if isinstance(code, str) else None
    if isinstance(error, str):
        return excerpt(error), None
    return excerpt(body.decode("utf-8", "replace")), None
