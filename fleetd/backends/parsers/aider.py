"""Aider (`aider --message … --yes-always`) output.

Aider exits 0 even after giving up on an API error, so the outcome comes from the text: an error printed
after the last `Tokens:` line means the message was never answered. Usage comes from the `--analytics-log`
JSONL when given (exact), else from the `Tokens: … sent, … received. Cost: …` lines (rounded by aider).

Measured with 0.86.2 against a loopback server: on a 429, an insufficient_quota 429, a 500 and a 503 alike
it retries for ~85-92 s (27 calls: its own 9 tries, 3 calls each by the OpenAI client) and then exits 0. Its messages
are wrapped at 80 columns, so they are read with the line breaks folded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo

from fleetd.backends.parsers import (
    as_float,
    as_str,
    aware,
    classify_text,
    count,
    excerpt,
    fail_soft,
    json_objects,
    safe_bool,
    silent_exit,
    tail_excerpt,
    unknown,
    without_noise,
)
from fleetd.backends.reset_time import parse_reset_time
from fleetd.records.result import ErrorClass, ParsedOutput, TokenUsage

_NUM = r"(\d+(?:\.\d+)?[kKmM]?)"
_TOKENS = re.compile(
    rf"^Tokens:\s*{_NUM} sent(?:,\s*{_NUM} cache write)?(?:,\s*{_NUM} cache hit)?,\s*{_NUM} received\.",
    re.M,
)
_COST = re.compile(r"Cost:\s*\$(\d+(?:\.\d+)?) message,\s*\$(\d+(?:\.\d+)?) session\.")
_MODEL = re.compile(r"^(?:Main )?model:\s+(\S+)", re.I | re.M)
_BANNER = re.compile(r"^Aider v\d", re.M)
# Lines that bound a reply: the startup banner, the previous reply's usage, and retry chatter.
_HEADER = re.compile(
    r"^(?:Aider v|(?:Main |Weak |Editor )?Model:|Git repo:|Repo-map:|Tokens:|Cost:|Retrying in |litellm\.|"
    r"The API provider )",
    re.I,
)
_BINARY = re.compile(r"[\x00\ufffd]")

# litellm exception names aider prints ("litellm.RateLimitError: …") and its own explanations of them.
_LITELLM = re.compile(r"^litellm\.(\w+)", re.M)
_EXCEPTION_CLASS: dict[str, ErrorClass] = {
    "RateLimitError": "rate_limited",
    "AuthenticationError": "auth",
    "PermissionDeniedError": "auth",
    "BadRequestError": "contract",
    "NotFoundError": "contract",
    "ContextWindowExceededError": "contract",
    "UnsupportedParamsError": "contract",
    "UnprocessableEntityError": "contract",
    "ContentPolicyViolationError": "contract",
    "APIConnectionError": "transient",
    "InternalServerError": "transient",
    "ServiceUnavailableError": "transient",
    "BadGatewayError": "transient",
    "Timeout": "transient",
    "APIError": "transient",
}
_EXPLANATIONS: tuple[tuple[ErrorClass, re.Pattern[str]], ...] = (
    ("rate_limited", re.compile(r"The API provider has rate limited you")),
    ("quota", re.compile(r"Insufficient credits with the API provider")),
    ("auth", re.compile(r"not able to authenticate you")),
    ("transient", re.compile(r"servers are down or overloaded|timed out without returning a response")),
)
# Words that beat the exception's name: litellm raises RateLimitError for OpenAI's insufficient_quota and
# BadRequestError for Anthropic's "credit balance is too low" or Gemini's "API key not valid".
_WORDS_BEAT_NAME: frozenset[ErrorClass] = frozenset({"quota", "auth"})
_ARG_ERROR = re.compile(r"^aider: error:", re.M)
# Lines of every run (banner, start-up warnings, the price-list fetch it tries without network).
_NOISE = re.compile(
    r"^(?:Aider v\d|(?:Main |Weak |Editor )?Model:|Git repo:|Repo-map:|Analytics have been|Warning: Input is not a "
    r"terminal|HTTPSConnectionPool\(host='raw\.githubusercontent\.com')",
    re.I,
)
_WRAP = re.compile(r"\s+")


@dataclass
class _Usage:
    usage: TokenUsage
    cost: float | None
    model: str | None
    replies: int


@fail_soft
def parse_output(
    stdout: str,
    stderr: str,
    exit_code: int | None,
    analytics_log: str | None,
    now: datetime,
    tz: tzinfo,
) -> ParsedOutput:
    now = aware(now, tz)
    text = stdout or ""
    found = _analytics(analytics_log) or _token_lines(text)
    parsed = _judge(text, stderr, exit_code, found.replies, now, tz)
    parsed.usage, parsed.cost_usd = found.usage, found.cost
    parsed.model = found.model or _header_model(text)
    return parsed


def _judge(text: str, stderr: str, exit_code: int | None, replies: int, now: datetime, tz: tzinfo) -> ParsedOutput:
    failure = _last_failure(text)
    if failure is not None:
        error_class, block = failure
        return ParsedOutput(
            outcome="failed",
            error_class=error_class,
            reset_at=parse_reset_time(block, now, tz) if error_class == "rate_limited" else None,
            message=excerpt(block),
        )
    if exit_code not in (0, None):
        return _nonzero_exit(text, stderr, exit_code)
    if (replies or _BANNER.search(text)) and not _BINARY.search(text):
        return ParsedOutput(outcome="succeeded", final_text=_reply_text(text))
    return unknown(text, stderr)


@safe_bool
def is_rate_limit_line(line: str) -> bool:
    """Aider retries a rate limit for ~1.5 min on its own and has no setting to stop it: watch for it."""
    return live_failure(line) == "rate_limited"


_LIVE: tuple[tuple[ErrorClass, re.Pattern[str]], ...] = (
    ("quota", re.compile(r"insufficient_quota|exceeded your current quota|Insufficient credits", re.I)),
    ("rate_limited", re.compile(r"litellm\.RateLimitError|The API provider has rate limited you")),
    (
        "transient",
        re.compile(
            r"litellm\.(?:ServiceUnavailableError|InternalServerError|APIConnectionError|BadGatewayError|Timeout)\b|"
            r"The API provider's servers are down or overloaded|timed out without returning a response"
        ),
    ),
)


def live_failure(line: str) -> ErrorClass | None:
    """The class of failure one live line shows, for the errors Aider would sit out for ~90 s (it retries
    rate limits, quota 429s, 5xx and connection errors alike, with no setting to stop it).

    Ending the attempt on it is safe: Aider prints the whole error block at once, so the output parsed
    afterwards holds it, and `parse_output` gives the final class (a quota 429 opens with "RateLimitError"
    but its wrapped words on the next line say "billing").
    """
    try:
        if not isinstance(line, str):
            return None
        return next((cls for cls, pattern in _LIVE if pattern.search(line)), None)
    except Exception:  # a detector must not stop the output pump
        return None


def _last_failure(text: str) -> tuple[ErrorClass, str] | None:
    """The error printed after the last answered message, if any: (class, text from that error on)."""
    last_reply = max((m.end() for m in _TOKENS.finditer(text)), default=0)
    errors = list(_LITELLM.finditer(text, last_reply))
    explained = sorted((m.start(), cls) for cls, pat in _EXPLANATIONS for m in pat.finditer(text, last_reply))
    if not errors and not explained:
        return None
    # A round is "litellm.<Error>: …" then aider's explanation: classify the last round by its exception
    # name, else by the explanation, else by the prose.
    block_start = errors[-1].start() if errors else explained[-1][0]
    block = text[block_start:]
    by_words = classify_text(_WRAP.sub(" ", block))
    by_name = _EXCEPTION_CLASS.get(errors[-1].group(1)) if errors else None
    by_explanation = next((cls for pos, cls in explained if pos >= block_start), None)
    if by_words in _WORDS_BEAT_NAME:
        return by_words, block
    return by_name or by_explanation or by_words or "unknown", block


def _nonzero_exit(text: str, stderr: str, exit_code: int) -> ParsedOutput:
    said = f"{without_noise(text, _NOISE)}\n{without_noise(stderr, _NOISE)}".strip()
    if not said:
        return silent_exit(exit_code)
    error_class: ErrorClass = "contract" if _ARG_ERROR.search(said) else classify_text(said) or "unknown"
    return ParsedOutput(outcome="failed", error_class=error_class, message=tail_excerpt(said))


def _analytics(log: str | None) -> _Usage | None:
    """message_send events of the analytics JSONL: exact token counts and aider's running total cost."""
    sends = [e.get("properties") for e in json_objects(log) if e.get("event") == "message_send"]
    sends = [p for p in sends if isinstance(p, dict)]
    if not sends:
        return None
    usage = TokenUsage()
    for props in sends:
        usage += TokenUsage(
            input_tokens=count(props.get("prompt_tokens")),
            output_tokens=count(props.get("completion_tokens")),
        )
    total_cost = as_float(sends[-1].get("total_cost"))
    if total_cost is None:
        costs = [c for c in (as_float(p.get("cost")) for p in sends) if c is not None]
        total_cost = sum(costs) if costs else None
    return _Usage(usage, total_cost, as_str(sends[-1].get("main_model")), len(sends))


def _token_lines(text: str) -> _Usage:
    """Sum of every `Tokens:` line; `sent` includes cache writes and hits, which are split out here."""
    usage = TokenUsage()
    replies = 0
    for m in _TOKENS.finditer(text):
        replies += 1
        sent, write, hit, received = (_aider_count(g) for g in m.groups())
        usage += TokenUsage(
            input_tokens=max(0, sent - write - hit),
            output_tokens=received,
            cache_read_tokens=hit,
            cache_write_tokens=write,
        )
    costs = _COST.findall(text)
    cost = float(costs[-1][1]) if costs else None
    return _Usage(usage, cost, None, replies)


def _aider_count(value: str | None) -> int:
    """Aider's format_tokens: '999', '1.2k', '13k' (and 'M' for millions); rounded, so approximate."""
    if not value:
        return 0
    scale = {"k": 1_000, "m": 1_000_000}.get(value[-1].lower(), 1)
    number = value[:-1] if scale != 1 else value
    return round(float(number) * scale)


def _header_model(text: str) -> str | None:
    m = _MODEL.search(text)
    return m.group(1) if m else None


def _reply_text(text: str) -> str | None:
    """The lines just before the last `Tokens:` line, back to the startup banner or the previous reply."""
    lines = text.splitlines()
    end = max((i for i, line in enumerate(lines) if line.startswith("Tokens:")), default=len(lines))
    start = end
    while start > 0 and not _HEADER.match(lines[start - 1]):
        start -= 1
    reply = "\n".join(lines[start:end]).strip()
    return reply or None
