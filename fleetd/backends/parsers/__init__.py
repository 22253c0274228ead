"""Pure parsers of the agent CLIs' output, one module per CLI, and the small helpers they share.

Every public parser is total: whatever bytes a CLI printed, it returns a ParsedOutput (outcome "unknown"
with an excerpt when nothing is recognisable) and never raises.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime, tzinfo
from typing import Any, ParamSpec

from fleetd.records.result import ErrorClass, ParsedOutput

EXCERPT_CHARS = 300

P = ParamSpec("P")

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]+")
_SPACE = re.compile(r"\s+")

# Ordered: the first class whose pattern matches wins. Quota before rate limit: OpenAI's insufficient_quota
# arrives as a 429 whose words say "billing"; auth before contract: a rejected key may come as a 400
# "invalid_request_error". A 429 that mentions "overloaded" stays a 429 through `classify` (status first).
_CLASS_PATTERNS: tuple[tuple[ErrorClass, re.Pattern[str]], ...] = (
    (
        "quota",
        re.compile(
            r"insufficient_quota|exceeded your current quota|quota exceeded\. check your plan and billing|"
            r"credit balance is too low|credit_balance|billing_error|out of credits|add credits|"
            r"insufficient (?:credits|funds|balance)|prepayment credits|credits? (?:are |is )?depleted|"
            r"insufficient_g1_credits|spend(?:ing)?[ _](?:cap|limit)|payment required|"
            r"reached your specified api usage limits",  # Anthropic's monthly spend limit
            re.I,
        ),
    ),
    (
        "rate_limited",
        re.compile(
            r"usage limit|you[\u2019']ve hit your (?:session |weekly |usage )?limit|"
            r"\b(?:5-hour|weekly|opus weekly|session) limit reached|out of extra usage|"
            r"rate[ _-]?limit|ratelimiterror|rate limited you|too many requests|\(429\)|"
            r"(?:status|code|error)\D{0,12}\b429\b|\b429\b(?= too many| rate)|"
            r"quota exceeded|exhausted your daily quota|resource_exhausted|resource has been exhausted",
            re.I,
        ),
    ),
    (
        "auth",
        re.compile(
            r"authentication|unauthori[sz]ed|invalid[ _-](?:x-)?api[ _-]?key|incorrect api key|api_key_invalid|"
            r"api key (?:not valid|is invalid|expired)|\(401\)|(?:status|code|error)\D{0,12}\b40[13]\b|"
            r"permission_error|permissiondeniederror|not logged in|please (?:run )?/?login|log ?in again|"
            r"(?:oauth |access |refresh )?token (?:has )?(?:expired|revoked)|upgrade to plus:",
            re.I,
        ),
    ),
    (
        "transient",
        re.compile(
            r"overloaded|high demand|at capacity|temporarily unavailable|service unavailable|"
            r"internal server error|internal error has occurred|bad gateway|gateway timeout|\(5\d\d\)|"
            r"(?:status|code|error)\D{0,12}\b5\d\d\b|api error: 5\d\d\b|"
            r"\b5\d\d (?:internal|bad|service|gateway|overloaded)|connection (?:refused|reset|error|closed|failed)|"
            r"timed out|timeout|econnrefused|econnreset|etimedout|eai_again|socket hang up|network error|"
            r"fetch failed|error sending request|waiting for network|stream disconnected|"
            r"apiconnectionerror|internalservererror|serviceunavailableerror|server_error|servers are down",
            re.I,
        ),
    ),
    (
        "contract",
        re.compile(
            r"bad request|invalid_request|invalid request|invalid_argument|\(4(?:00|04|13|22)\)|"
            r"(?:status|code|error)\D{0,12}\b4(?:00|04|13|22)\b|unknown option|unrecognized argument|"
            r"unexpected argument|requires --verbose|not inside a trusted directory|error loading config|"
            r"is no longer supported|context window|context length|maximum context|request_too_large|"
            r"prompt is too long|not_found_error|model not found|model_not_found|modelnotfounderror|"
            r"does not exist or you do not have access|is not found for api version|issue with the selected model|"
            r"badrequesterror|notfounderror|contextwindowexceedederror|error_max_turns|error_max_budget",
            re.I,
        ),
    ),
)
# Classes whose words beat a 4xx status: the status is coarse there (Gemini rejects a bad key with 400,
# Anthropic an empty credit balance with 400, OpenAI insufficient_quota with 429), the words are not.
_WORDS_BEAT_4XX: frozenset[ErrorClass] = frozenset({"quota", "auth"})


def classify_text(text: str | None) -> ErrorClass | None:
    """The error class an error message suggests, or None when it says nothing recognisable."""
    if not text:
        return None
    for error_class, pattern in _CLASS_PATTERNS:
        if pattern.search(text):
            return error_class
    return None


def status_class(status: object) -> ErrorClass | None:
    """HTTP status → error class (429 limited, 402 quota, 5xx/529/408 transient, 401/403 auth, other 4xx
    contract)."""
    code = as_int(status)
    if code is None:
        return None
    if code == 429:
        return "rate_limited"
    if code == 402:
        return "quota"
    if code in (401, 403):
        return "auth"
    if code == 408 or 500 <= code <= 599:
        return "transient"
    if 400 <= code <= 499:
        return "contract"
    return None


def classify(status: object, *texts: str | None) -> ErrorClass | None:
    """One failure's class from its HTTP status (if any) and its words.

    The status decides, except that quota and auth words beat a 4xx status (see _WORDS_BEAT_4XX); a 5xx
    stays transient whatever its body says. None when neither says anything recognisable.
    """
    by_words = classify_text(" ".join(t for t in texts if isinstance(t, str) and t))
    by_status = status_class(status)
    code = as_int(status)
    if by_words in _WORDS_BEAT_4XX and (by_status is None or (code is not None and 400 <= code <= 499)):
        return by_words
    return by_status or by_words


def silent_exit(exit_code: int | None, what: str = "output") -> ParsedOutput:
    """A non-zero exit with nothing to go on.

    Rule: a CLI that dies without printing an error (no output at all, or only its usual start-up noise) most
    likely crashed or was killed (out of memory, a signal, a dropped connection it never reported): that is
    `transient`, worth one more try on the same profile (the router's retries are few and count toward the
    circuit breaker, so a CLI that always dies this way is soon passed over). Output that is present but
    unrecognisable is NOT this case: that stays `unknown`, with an excerpt, for a person to read.
    """
    return ParsedOutput(outcome="failed", error_class="transient", message=f"exited {exit_code} without {what}")


def without_noise(text: str | None, noise: re.Pattern[str]) -> str:
    """``text`` minus the lines a CLI prints on every run (banners, warnings): what is left may explain a crash."""
    return "\n".join(line for line in (text or "").splitlines() if line.strip() and not noise.search(line))


def excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    """Printable, whitespace-collapsed prefix of text, at most ``limit`` chars."""
    if not text:
        return ""
    flat = _SPACE.sub(" ", _CONTROL.sub(" ", str(text))).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def tail_excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    """Like excerpt, but keeps the end: errors are usually printed last."""
    flat = excerpt(text, limit=len(text or "") + 1)
    return flat if len(flat) <= limit else "…" + flat[-(limit - 1) :]


def unknown(stdout: str | None, stderr: str | None = None, note: str = "unrecognised output") -> ParsedOutput:
    body = excerpt(stdout) or excerpt(stderr)
    message = f"{note}: {body}" if body else f"{note} (no output)"
    return ParsedOutput(outcome="unknown", error_class="unknown", message=excerpt(message))


def fail_soft(func: Callable[P, ParsedOutput]) -> Callable[P, ParsedOutput]:
    """Turn any exception inside a parser into an "unknown" outcome; parsers face arbitrary bytes."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> ParsedOutput:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # the contract is "never raise"; the message keeps the bug visible
            text = next((a for a in args if isinstance(a, str) and a), "")
            return unknown(text, note=f"parser error ({type(exc).__name__})")

    return wrapper


def safe_bool(func: Callable[[str], bool]) -> Callable[[str], bool]:
    """Live line detectors answer False rather than raise on junk."""

    @functools.wraps(func)
    def wrapper(line: str) -> bool:
        try:
            return bool(func(line)) if isinstance(line, str) else False
        except Exception:  # a detector must not stop the output pump
            return False

    return wrapper


def json_objects(text: str | None) -> Iterator[dict[str, Any]]:
    """Each line of NDJSON that decodes to an object; other lines (banners, truncation) are skipped."""
    for line in (text or "").splitlines():
        obj = loads_object(line)
        if obj is not None:
            yield obj


def loads_object(text: str | None) -> dict[str, Any] | None:
    stripped = (text or "").strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def last_json_block(text: str | None, max_candidates: int = 50) -> dict[str, Any] | None:
    """The last JSON object that starts at the beginning of a line (pretty-printed output after logs)."""
    if not text:
        return None
    whole = loads_object(text)
    if whole is not None:
        return whole
    starts = [m.start() for m in re.finditer(r"(?m)^\{", text)][-max_candidates:]
    decoder = json.JSONDecoder()
    for start in reversed(starts):
        try:
            value, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def dig(value: object, *keys: str) -> Any:
    """value[k1][k2]… or None when any step is missing or not a dict."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) < 1e18:
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,18}\s*", value):
        return int(value)
    return None


def as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def count(value: object) -> int:
    """A token count: a non-negative int, 0 for anything else."""
    number = as_int(value)
    return number if number is not None and number > 0 else 0


def aware(now: datetime, tz: tzinfo) -> datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=tz)


# -- readable logs ------------------------------------------------------------------------------------
# Each agent CLI's parser has a `render_line(line) -> str | None`: one line of the CLI's output as a person
# would want to read it (assistant text, each tool call on one line, errors), or None to leave it out
# (bookkeeping: init details, usage, deltas of nothing). A line that is not JSON is the CLI's own words
# (stderr, a limit notice) and stays as it is. Pure and total, like the parsers.

TOOL_LINE_CHARS = 160


def safe_render(func: Callable[[str], str | None]) -> Callable[[str], str | None]:
    """A renderer that meets junk shows the line as it is rather than raise: a log must always be readable."""

    @functools.wraps(func)
    def wrapper(line: str) -> str | None:
        if not isinstance(line, str):
            return None
        try:
            return func(line)
        except Exception:  # the contract is "never raise"; the raw line is the honest fallback
            return line

    return wrapper


def one_line(text: object, limit: int = TOOL_LINE_CHARS) -> str:
    """`text` flattened onto one line and shortened (tool arguments, error bodies)."""
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False, default=str) if text is not None else ""
    return excerpt(text, limit)


# The argument that says what a tool call does, by the names agent CLIs give them; the first one present wins.
_TOOL_ARGS = ("command", "cmd", "file_path", "path", "absolute_path", "pattern", "query", "url", "prompt",
              "description", "skill")  # fmt: skip


def tool_call(name: object, args: object) -> str:
    """`→ Bash: pytest -q`: a tool call as one line."""
    label = name if isinstance(name, str) and name else "tool"
    if isinstance(args, dict):
        shown = next((args[k] for k in _TOOL_ARGS if isinstance(args.get(k), str | list) and args.get(k)), None)
        if shown is None and args:
            shown = args
        if isinstance(shown, list):
            shown = " ".join(str(part) for part in shown)
    else:
        shown = args
    detail = one_line(shown) if shown else ""
    return f"→ {label}: {detail}" if detail else f"→ {label}"
