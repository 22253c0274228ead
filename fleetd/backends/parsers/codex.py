"""Codex CLI: `codex exec --json` JSONL events, and rate-limit snapshots from rollout files.

The exec stream carries no rate-limit snapshot; windows (used %, reset) live only in the rollout file's
`token_count` events under $CODEX_HOME/sessions, hence parse_rollout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from fleetd.backends.parsers import (
    EXCERPT_CHARS,
    as_float,
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
from fleetd.backends.reset_time import epoch_to_datetime, parse_reset_time
from fleetd.records.result import ErrorClass, ParsedOutput, TokenUsage, WindowState

# "Reconnecting... 2/5 (…)" error events are retry progress, not the turn's final error. So is
# "Reconnecting... waiting for network (Connection failed: error sending request)": 0.169 prints it while the
# server refuses connections and never gives up on its own (measured: first at 0.45 s, then 5, 10, 20 s apart,
# doubling; still reconnecting after 150 s).
_RECONNECT = re.compile(r"^\s*Reconnecting\.\.\.\s*(?:\d+\s*/\s*\d+|waiting for network)", re.I)
_STATUS = re.compile(r"(?:last status|unexpected status):?\s*(\d{3})\b", re.I)
# Codex's own prose (protocol/src/error.rs). A usage limit names a time to try again; a workspace out of
# credits or at its spend cap, or an API key's "Quota exceeded. Check your plan and billing details."
# (insufficient_quota), waits for someone to pay.
_CODEX_LIMITS = re.compile(r"usage limit|usage_limit_reached|too many requests", re.I)
_CODEX_QUOTA = re.compile(r"quota exceeded|out of credits|spend cap|credits_depleted", re.I)
# "Missing environment variable: `X`." is the provider block's env_key unset: the profile has no key.
_CODEX_AUTH = re.compile(
    r"upgrade to plus:|not logged in|codex login|refresh token|token (?:has )?expired|missing environment variable",
    re.I,
)
_CODEX_TRANSIENT = re.compile(r"high demand|at capacity|waiting for network|connection failed", re.I)
# What stderr holds on a healthy run: anything else there may explain a crash.
_STDERR_NOISE = re.compile(
    r"^Reading (?:additional input|prompt) from stdin|^WARNING: proceeding, even though we could not create PATH"
)


@dataclass
class _Scan:
    objects: int = 0
    session_id: str | None = None
    usage: TokenUsage | None = None
    final_text: str | None = None
    failed: str | None = None  # turn.failed error.message
    fatal: list[str] = field(default_factory=list)  # error events other than reconnect progress
    reconnects: list[str] = field(default_factory=list)


@fail_soft
def parse_exec_jsonl(stdout: str, stderr: str, exit_code: int | None, now: datetime, tz: tzinfo) -> ParsedOutput:
    """One `codex exec --json` run. Usage is the thread total of the last turn.completed."""
    now = aware(now, tz)
    scan = _scan(stdout)
    if not scan.objects:
        return _no_events(stdout, stderr, exit_code)
    common: dict[str, Any] = {"session_id": scan.session_id, "usage": scan.usage or TokenUsage()}
    error = scan.failed or (scan.fatal[-1] if scan.fatal else None)
    if error is None and scan.usage is not None and exit_code in (0, None):
        return ParsedOutput(outcome="succeeded", final_text=scan.final_text, **common)
    if error is None and scan.reconnects:
        error = scan.reconnects[-1]  # cut short while retrying: the retry reason is all we know
    if error is None:
        if exit_code in (0, None):
            parsed = unknown(stdout, stderr, note="no turn.completed or turn.failed")
            parsed.session_id = scan.session_id
            return parsed
        said = without_noise(stderr, _STDERR_NOISE)
        if not said:
            parsed = silent_exit(exit_code, "turn.completed, turn.failed or an error")
            parsed.session_id, parsed.usage = scan.session_id, scan.usage or TokenUsage()
            return parsed
        error = tail_excerpt(said)
    error_class = classify_codex_message(error) or "unknown"
    return ParsedOutput(
        outcome="failed",
        error_class=error_class,
        reset_at=parse_reset_time(error, now, tz) if error_class == "rate_limited" else None,
        message=excerpt(error),
        **common,
    )


def classify_codex_message(message: str | None) -> ErrorClass | None:
    """Codex's error prose → class. An HTTP status inside it ("last status: 429", "unexpected status 401
    Unauthorized: …") decides, except that quota and auth words beat a 4xx (as everywhere, see `classify`)."""
    if not message:
        return None
    if m := _STATUS.search(message):
        from_status = classify(int(m.group(1)), message)
        if from_status is not None:
            return from_status
    if _CODEX_LIMITS.search(message):
        return "rate_limited"
    if _CODEX_QUOTA.search(message):
        return "quota"
    if _CODEX_AUTH.search(message):
        return "auth"
    if _CODEX_TRANSIENT.search(message):
        return "transient"
    return classify_text(message)


def live_failure(line: str) -> ErrorClass | None:
    """The class of failure one streamed line already proves, when Codex would otherwise keep retrying.

    Codex reconnects on its own: five times after a 429 on the built-in provider (honouring retry-after), and
    without end while the server refuses connections. Its first "Reconnecting..." line is enough to act on.
    Final errors (`error` without "Reconnecting", `turn.failed`) are not reported: Codex exits by itself then.
    """
    try:
        obj = loads_object(line)
        message = as_str(obj.get("message")) if obj is not None and obj.get("type") == "error" else None
        if message is None and obj is None and isinstance(line, str):
            message = line
        if message is None or not _RECONNECT.search(message):
            return None
        return classify_codex_message(message) or "transient"
    except Exception:  # a detector must not stop the output pump
        return None


@safe_bool
def is_rate_limit_line(line: str) -> bool:
    """True when a streamed stdout/stderr line already shows a rate or usage limit."""
    obj = loads_object(line)
    if obj is None:
        return classify_codex_message(line) == "rate_limited"
    if obj.get("type") == "error":
        return classify_codex_message(as_str(obj.get("message"))) == "rate_limited"
    if obj.get("type") == "turn.failed":
        return classify_codex_message(as_str(dig(obj, "error", "message"))) == "rate_limited"
    return False


def parse_rollout(text: str, now: datetime, tz: tzinfo) -> list[WindowState]:
    """Rate-limit windows from a rollout file's token_count events; later snapshots win, per window.

    Windows are keyed by (limit id, window_minutes), not by the primary/secondary slot, because which
    slot holds the weekly window is not stable across plans and versions. Never raises.
    """
    try:
        now = aware(now, tz)
        windows: dict[tuple[str, object], WindowState] = {}
        for obj in json_objects(text):
            limits = _rate_limits(obj)
            if limits is None:
                continue
            seen_at = _timestamp(obj.get("timestamp"), tz) or now
            for slot in ("primary", "secondary"):
                _merge_window(windows, limits, slot, seen_at, tz)
        return sorted(windows.values(), key=_window_order)
    except Exception:  # a corrupt rollout must not break the caller; no windows is the honest answer
        return []


def blocked_until(windows: list[WindowState]) -> datetime | None:
    """When every exhausted window (used >= 100 %) has reset; None if none is exhausted."""
    resets = [w.resets_at for w in windows if w.used_percent is not None and w.used_percent >= 100 and w.resets_at]
    return max(resets) if resets else None


def _scan(stdout: str) -> _Scan:
    scan = _Scan()
    for obj in json_objects(stdout):
        scan.objects += 1
        kind = obj.get("type")
        if kind == "thread.started":
            scan.session_id = as_str(obj.get("thread_id")) or scan.session_id
        elif kind == "turn.completed":
            scan.usage = _usage(obj.get("usage"))
        elif kind == "turn.failed":
            scan.failed = as_str(dig(obj, "error", "message")) or "turn failed"
        elif kind == "error":
            message = as_str(obj.get("message")) or "error"
            (scan.reconnects if _RECONNECT.search(message) else scan.fatal).append(message)
        elif kind == "item.completed" and dig(obj, "item", "type") == "agent_message":
            scan.final_text = as_str(dig(obj, "item", "text")) or scan.final_text
    return scan


def _usage(usage: object) -> TokenUsage:
    """OpenAI semantics in, Anthropic semantics out: input_tokens includes the cached part."""
    if not isinstance(usage, dict):
        return TokenUsage()
    cached = count(usage.get("cached_input_tokens"))
    return TokenUsage(
        input_tokens=max(0, count(usage.get("input_tokens")) - cached),
        output_tokens=count(usage.get("output_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=count(usage.get("cache_write_input_tokens")),
    )


def _no_events(stdout: str, stderr: str, exit_code: int | None) -> ParsedOutput:
    """No JSON events: config/argument errors and crashes print to stderr only."""
    said = f"{stdout or ''}\n{without_noise(stderr, _STDERR_NOISE)}".strip()
    if exit_code not in (0, None):
        if not said:
            return silent_exit(exit_code)
        # A non-zero exit is a failure even when nothing in the output says why.
        error_class = classify_codex_message(said) or "unknown"
        return ParsedOutput(outcome="failed", error_class=error_class, message=tail_excerpt(said))
    return unknown(stdout, stderr)


def _rate_limits(obj: dict[str, Any]) -> dict[str, Any] | None:
    # Current rollouts wrap events as {"type":"event_msg","payload":{…}}; older streams used "msg".
    payload = obj.get("payload") if isinstance(obj.get("payload"), dict) else obj.get("msg")
    if not isinstance(payload, dict):
        payload = obj
    if payload.get("type") != "token_count":
        return None
    limits = payload.get("rate_limits")
    return limits if isinstance(limits, dict) else None


def _merge_window(
    windows: dict[tuple[str, object], WindowState],
    limits: dict[str, Any],
    slot: str,
    seen_at: datetime,
    tz: tzinfo,
) -> None:
    raw = limits.get(slot)
    if not isinstance(raw, dict):
        return
    limit_id = as_str(limits.get("limit_id")) or "codex"
    minutes = as_int(raw.get("window_minutes"))
    resets_at = epoch_to_datetime(raw.get("resets_at"), tz)
    relative = as_float(raw.get("resets_in_seconds"))
    if resets_at is None and relative is not None and 0 <= relative < 10**9:
        # The legacy relative form counts from when the snapshot was written, not from now.
        resets_at = seen_at + timedelta(seconds=relative)
    windows[(limit_id, minutes if minutes is not None else slot)] = WindowState(
        window_minutes=minutes,
        used_percent=as_float(raw.get("used_percent")),
        resets_at=resets_at,
        name=slot if limit_id == "codex" else f"{limit_id}:{slot}",
    )


def _timestamp(value: object, tz: tzinfo) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=tz)


def _window_order(window: WindowState) -> tuple[bool, int, str]:
    return (window.window_minutes is None, window.window_minutes or 0, window.name)


@safe_render
def render_line(line: str) -> str | None:
    """One `exec --json` event, readable: the agent's messages, each command, file change, MCP call or web
    search on one line (shown when it completes, with a failed command's exit code), errors and the turn's
    end. Reasoning, plans and starts are left out."""
    obj = loads_object(line)
    if obj is None:
        return line
    kind = obj.get("type")
    if kind == "thread.started":
        return f"session {obj.get('thread_id') or '?'}"
    if kind == "item.completed" and isinstance(obj.get("item"), dict):
        return _render_item(obj["item"])
    if kind == "turn.completed":
        usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        return f"done: tokens in {count(usage.get('input_tokens'))} out {count(usage.get('output_tokens'))}"
    if kind == "turn.failed":
        return f"error: {one_line(dig(obj, 'error', 'message') or 'turn failed', EXCERPT_CHARS)}"
    if kind == "error":
        return f"error: {one_line(obj.get('message') or 'error', EXCERPT_CHARS)}"
    return None


def _render_item(item: dict[str, Any]) -> str | None:
    kind = item.get("type")
    if kind == "agent_message":
        return as_str(item.get("text"))
    if kind == "command_execution":
        code = as_int(item.get("exit_code"))
        failed = f"  ✗ exit {code}" if code not in (None, 0) else ""
        return tool_call("shell", item.get("command")) + (f"\n{failed}" if failed else "")
    if kind == "file_change":
        changes = item.get("changes") if isinstance(item.get("changes"), list) else []
        paths = [f"{c.get('kind') or 'edit'} {c.get('path')}" for c in changes if isinstance(c, dict)]
        return tool_call("edit", ", ".join(paths) or None)
    if kind == "mcp_tool_call":
        return tool_call(f"{item.get('server') or '?'}.{item.get('tool') or '?'}", item.get("arguments"))
    if kind == "web_search":
        return tool_call("web search", item.get("query"))
    if kind == "error":
        return f"error: {one_line(item.get('message') or 'error', EXCERPT_CHARS)}"
    return None
