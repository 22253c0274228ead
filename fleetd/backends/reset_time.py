"""Find and resolve the reset time in a usage-limit or rate-limit message, in every form the CLIs used.

Pure and total: garbage in gives None, never an exception. Forms, most precise first:
  * epochs: ``Claude AI usage limit reached|1750708800``, ``"resetsAt":1790161200``,
    ``x-codex-primary-reset-at: 1776394093``
  * RFC 3339 after a reset key: ``anthropic-ratelimit-requests-reset: 2026-11-21T23:09:15Z``
  * wall clock, optional date and IANA zone: ``resets 3pm (Europe/Stockholm)``,
    ``resets Apr 23 at 4pm (…)``, ``resets Feb 20, 5pm (…)``, ``try again at 3:28 PM``,
    ``try again at Aug 8th, 2026 12:30 PM``, ``Try again Aug 18.``
  * relative: ``resets_in_seconds: 90``, ``retry-after: 30``, ``retryDelay: "54s"``, ``retryDelayMs: 1000``,
    ``try again in 2 days 3 hours 5 minutes``, ``Please retry in 54.8s``, ``Suggested retry after 1s``,
    ``6m0s``, ``20ms``
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

_MONTHS = {
    m: i
    for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)
}
# Plausible epoch range (2000..2200) so stray long numbers are not taken for timestamps.
_EPOCH_MIN, _EPOCH_MAX = 946_684_800, 7_258_118_400

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
# Longest alternatives first so "ms" is not read as "m" and "minutes" not as "m".
_UNIT = (
    r"(?:milliseconds?|millis|msecs?|ms|minutes?|mins?|m|seconds?|secs?|s|hours?|hrs?|h|days?|d|weeks?|w)"
    r"(?![a-z])"
)
_AMOUNT = rf"\d+(?:\.\d+)?\s*{_UNIT}"
_DURATION = rf"{_AMOUNT}(?:[\s,]*(?:and\s+)?{_AMOUNT})*"
_AMOUNT_RE = re.compile(rf"(\d+(?:\.\d+)?)\s*({_UNIT})", re.I)
_DURATION_RE = re.compile(rf"\s*(?:{_DURATION})\s*", re.I)

_PIPE_EPOCH = re.compile(r"limit reached\s*\|\s*(\d{10}|\d{13})\b", re.I)
_KEYED_EPOCH = re.compile(r"\bresets?[-_]?at[\"']?\s*[:=]\s*[\"']?(\d{10}|\d{13})(?:\.\d+)?\b", re.I)
_KEYED_ISO = re.compile(
    r"\bresets?(?:[-_]?at)?[\"']?\s*[:=]\s*[\"']?"
    r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)",
    re.I,
)
_MONTH = r"(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_DATE = rf"{_MONTH}\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<year>\d{{4}})\b)?"
_TIME = r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?(?:\s*(?P<ampm>[ap])\.?\s?m\b\.?)?"
_WALL = re.compile(
    r"\b(?:resets?|try\s+again)(?:\s+(?:at|on))?\s+"
    rf"(?:{_DATE}(?:\s*,\s*|\s+at\s+|\s+)?)?(?:{_TIME})?"
    r"(?:\s*\((?P<zone>[^()\n]{1,64})\))?",
    re.I,
)
_KEYED_SECONDS = re.compile(
    r"\b(?:resets?[-_]in[-_]seconds|reset[-_]after[-_]seconds)[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)", re.I
)
_KEYED_MS = re.compile(r"\b(?:retry[-_]?after[-_]?ms|retryDelayMs)[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)", re.I)
_RETRY_AFTER = re.compile(
    r"\bretry[-_]after[\"']?\s*[:=]\s*[\"']?([A-Za-z]{3},\s[^\n\"']*?GMT|\d+(?:\.\d+)?(?:m?s)?)", re.I
)
_RETRY_DELAY = re.compile(rf"\bretryDelay[\"']?\s*[:=]\s*[\"']?({_DURATION})", re.I)
_PROSE = re.compile(rf"\b(?:try\s+again|retry|resets?|available(?:\s+again)?)\s+(?:in|after)\s+({_DURATION})", re.I)


def parse_reset_time(text: str, now: datetime, default_tz: tzinfo) -> datetime | None:
    """The reset instant named in ``text`` (aware), or None. Never raises."""
    try:
        if not isinstance(text, str) or not text:
            return None
        now = _aware(now, default_tz)
        for finder in _FINDERS:
            found = finder(text, now, default_tz)
            if found is not None:
                return found
        return None
    except Exception:  # total by contract: a parser bug must not take down the caller
        return None


def parse_duration_seconds(text: str) -> float | None:
    """'6m0s', '1.5s', '20ms', '54.8s', '2 days 3 hours', '30' (seconds) → seconds; else None."""
    if not isinstance(text, str):
        return None
    raw = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        return float(raw)
    if not raw or not _DURATION_RE.fullmatch(raw):
        return None
    return sum(float(n) * _UNIT_SECONDS[_unit_key(u)] for n, u in _AMOUNT_RE.findall(raw))


def parse_retry_after(value: str, now: datetime, default_tz: tzinfo = UTC) -> datetime | None:
    """A Retry-After value: delay seconds, an HTTP date, or a duration like '1.5s'. Never raises."""
    try:
        now = _aware(now, default_tz)
        raw = value.strip()
        seconds = parse_duration_seconds(raw)
        if seconds is not None:
            return now + timedelta(seconds=seconds)
        when = parsedate_to_datetime(raw)
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    except Exception:  # malformed header values are common; treat as absent
        return None


def epoch_to_datetime(value: object, tz: tzinfo = UTC) -> datetime | None:
    """Unix seconds (or milliseconds) → aware datetime; None when implausible or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds > _EPOCH_MAX * 1000 or seconds != seconds:
        return None
    if seconds > _EPOCH_MAX:
        seconds /= 1000.0  # milliseconds
    if not _EPOCH_MIN <= seconds <= _EPOCH_MAX:
        return None
    return datetime.fromtimestamp(seconds, tz)


def _unit_key(unit: str) -> str:
    u = unit.lower()
    if u.startswith(("ms", "milli", "msec")):
        return "ms"
    if u.startswith("mi") or u == "m":
        return "m"
    return u[0]


def _aware(now: datetime, tz: tzinfo) -> datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=tz)


def _pipe_epoch(text: str, now: datetime, tz: tzinfo) -> datetime | None:
    m = _PIPE_EPOCH.search(text)
    return epoch_to_datetime(m.group(1), tz) if m else None


def _keyed_epoch(text: str, now: datetime, tz: tzinfo) -> datetime | None:
    for m in _KEYED_EPOCH.finditer(text):
        found = epoch_to_datetime(m.group(1), tz)
        if found is not None:
            return found
    return None


def _keyed_iso(text: str, now: datetime, tz: tzinfo) -> datetime | None:
    for m in _KEYED_ISO.finditer(text):
        try:
            found = datetime.fromisoformat(m.group(1))
        except ValueError:
            continue
        return found if found.tzinfo else found.replace(tzinfo=tz)
    return None


def _wall_clock(text: str, now: datetime, tz: tzinfo) -> datetime | None:
    for m in _WALL.finditer(text):
        found = _resolve_wall(m, now, tz)
        if found is not None:
            return found
    return None


def _keyed_relative(text: str, now: datetime, tz: tzinfo) -> datetime | None:
    if m := _KEYED_SECONDS.search(text):
        return now + timedelta(seconds=float(m.group(1)))
    if m := _KEYED_MS.search(text):
        return now + timedelta(milliseconds=float(m.group(1)))
    if m := _RETRY_DELAY.search(text):
        return _after(m.group(1), now)
    for m in _RETRY_AFTER.finditer(text):
        found = parse_retry_after(m.group(1), now, tz)
        if found is not None:
            return found
    return None


def _prose_relative(text: str, now: datetime, tz: tzinfo) -> datetime | None:
    m = _PROSE.search(text)
    return _after(m.group(1), now) if m else None


def _after(duration: str, now: datetime) -> datetime | None:
    seconds = parse_duration_seconds(duration)
    return None if seconds is None else now + timedelta(seconds=seconds)


def _resolve_wall(m: re.Match[str], now: datetime, default_tz: tzinfo) -> datetime | None:
    clock = _clock(m)
    if m["mon"] is None and clock is None:
        return None  # e.g. "resets 10 minutes": a bare number is no time of day
    zone = _zone(m["zone"], default_tz)
    local_now = now.astimezone(zone)
    if m["mon"] is None:
        assert clock is not None
        return _next_time_of_day(local_now, clock, zone)
    return _next_date(m, local_now, clock, zone)


def _clock(m: re.Match[str]) -> tuple[int, int] | None:
    if m["hour"] is None or (m["minute"] is None and m["ampm"] is None):
        return None
    hour, minute = int(m["hour"]), int(m["minute"] or 0)
    if m["ampm"]:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if m["ampm"].lower() == "p" else 0)
    if hour > 23 or minute > 59:
        return None
    return hour, minute


def _zone(name: str | None, default_tz: tzinfo) -> tzinfo:
    if not name:
        return default_tz
    try:
        return ZoneInfo(name.strip())
    except Exception:  # unknown zone names and path-like junk both raise, with various types
        return default_tz


def _at(day: date, clock: tuple[int, int], zone: tzinfo) -> datetime:
    naive = datetime(day.year, day.month, day.day, clock[0], clock[1])
    # Round-trip through UTC so a wall time inside a DST gap comes out as a real instant.
    return naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


def _next_time_of_day(local_now: datetime, clock: tuple[int, int], zone: tzinfo) -> datetime:
    candidate = _at(local_now.date(), clock, zone)
    if candidate <= local_now:
        candidate = _at(local_now.date() + timedelta(days=1), clock, zone)
    return candidate


def _next_date(m: re.Match[str], local_now: datetime, clock: tuple[int, int] | None, zone: tzinfo) -> datetime | None:
    month, day = _MONTHS[m["mon"][:3].lower()], int(m["day"])
    years = [int(m["year"])] if m["year"] else range(local_now.year, local_now.year + 9)
    for year in years:
        try:
            when = date(year, month, day)
        except ValueError:
            continue  # Feb 29 in a common year, or junk like "Apr 31"
        if clock is None:
            # A date alone means "some time that day": its start, unless that day is already over.
            if m["year"] or when >= local_now.date():
                return _at(when, (0, 0), zone)
            continue
        candidate = _at(when, clock, zone)
        if m["year"] or candidate >= local_now:
            return candidate
    return None


_FINDERS: tuple[Callable[[str, datetime, tzinfo], datetime | None], ...] = (
    _pipe_epoch,
    _keyed_epoch,
    _keyed_iso,
    _wall_clock,
    _keyed_relative,
    _prose_relative,
)
