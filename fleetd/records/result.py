"""What a backend parser makes of one attempt's output. Plain data, no behaviour beyond adding tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, get_args

from fleetd.timefmt import to_iso

# What a failed attempt says about the worker that made it; the router gives each class its own action.
#   rate_limited  the profile hit a rate or usage limit that lifts by itself (reset_at when the CLI says when)
#   transient     the provider or the network failed this once: 5xx, 529 overloaded, connection refused/reset,
#                 a timeout, a crash with no output; the same profile may well succeed on a retry
#   quota         out of money, not out of time: insufficient_quota, credit balance too low, spend cap; it does
#                 not lift by itself within minutes
#   auth          the key or login is wrong or expired (401/403, "API key not valid", "Please run /login")
#   unavailable   this worker cannot be started here: CLI not on PATH, profile directory gone, keyring locked
#   contract      the request itself is wrong (400, unknown model, bad arguments): any worker would refuse it
#   capability    the attempt finished but its output was rejected (the acceptance gate; never a parser)
#   unknown       nothing recognisable: an excerpt of the output is in the message
ErrorClass = Literal["rate_limited", "transient", "quota", "auth", "unavailable", "contract", "capability", "unknown"]
ERROR_CLASSES: tuple[ErrorClass, ...] = get_args(ErrorClass)
Outcome = Literal["succeeded", "failed", "unknown"]


@dataclass(frozen=True)
class TokenUsage:
    """Anthropic semantics: input_tokens EXCLUDES cache reads and cache writes."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        if not isinstance(other, TokenUsage):
            return NotImplemented
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


@dataclass(frozen=True)
class WindowState:
    """A usage window the CLI reported (Claude rate_limit_event, Codex token_count.rate_limits)."""

    window_minutes: int | None
    used_percent: float | None
    resets_at: datetime | None
    name: str = ""

    def to_json(self) -> dict[str, object]:
        """The one JSON shape of a window, in the database and the API alike."""
        return {
            "name": self.name,
            "window_minutes": self.window_minutes,
            "used_percent": self.used_percent,
            "resets_at": to_iso(self.resets_at),
        }


@dataclass
class ParsedOutput:
    """What the executor passes on only after scrubbing every string in it (loops.scrub.Scrubber.record): a
    field added here is scrubbed too, as long as it stays plain data (str, list, tuple, dict, dataclass)."""

    outcome: Outcome
    error_class: ErrorClass | None = None
    reset_at: datetime | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost_usd: float | None = None
    model: str | None = None
    session_id: str | None = None
    final_text: str | None = None
    windows: list[WindowState] = field(default_factory=list)
    message: str | None = None  # short error, or an excerpt of output nobody could parse (<= 300 chars)


VerdictKind = Literal["accept", "reject"]
VERDICTS: tuple[VerdictKind, ...] = get_args(VerdictKind)


@dataclass(frozen=True)
class Verdict:
    """A reviewer agent's answer about an attempt's work: accept it, or reject it and say what is missing."""

    verdict: VerdictKind
    missing: tuple[str, ...] = ()
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.verdict == "accept"

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict, "missing": list(self.missing), "reason": self.reason}
