"""Durations and timestamps as users type them and as the API prints them. Pure, import-light."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from fleetd.errors import shown

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# ASCII digits only: `\d` would also take e.g. Arabic-Indic digits, which no user means here.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# The longest duration fleetd accepts anywhere (timeouts, intervals, windows, --since): anything
# longer is a typo, and past it datetime arithmetic overflows and SQLite cannot store the number.
MAX_DURATION_YEARS = 100
MAX_DURATION_S = MAX_DURATION_YEARS * 365 * 86400


class DurationError(ValueError):
    pass


def parse_duration(text: str, *, strict: bool = True) -> float:
    """'30m', '1h30m', '90s', '2d', '45' (seconds) → seconds. Raises DurationError. `strict=False` takes
    units in any order, repeated (summed): what was accepted once and is stored (a loop's `--every`)."""
    raw = text.strip().lower()
    if not raw:
        raise DurationError("empty duration")
    if _NUMBER.fullmatch(raw):
        seconds = float(raw)
    else:
        pos, seconds, last_unit = 0, 0.0, math.inf
        for m in _PART.finditer(raw):
            unit = _UNITS[m.group(2)]
            if m.start() != pos:
                break
            if strict and unit >= last_unit:  # `1m1m`, `1s5h`: a typo, not a sum to work out
                raise DurationError(f"invalid duration {shown(text)}: units from the largest down, each once (1h30m)")
            seconds += float(m.group(1)) * unit
            pos, last_unit = m.end(), unit
        if pos != len(raw):
            raise DurationError(f"invalid duration {shown(text)} (use e.g. 90s, 10m, 1h30m, 2d)")
    if seconds <= 0:
        raise DurationError(f"duration must be positive, got {shown(text)}")
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise DurationError(f"duration {shown(text)} is too long (at most {MAX_DURATION_YEARS} years)")
    return seconds


RETENTION_OFF = ("0", "off")


LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S %Z"
# The daemon log's times: with the offset, not the zone's name, so a reader in another zone (the CLI's `daemon logs
# --since`) places each line, and the lines of daemons started in different zones compare.
DAEMON_LOG_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def parse_retention(text: str) -> float | None:
    """`90d` → seconds; `0` or `off` → None (keep everything). Raises DurationError."""
    if text.strip().lower() in RETENTION_OFF:
        return None
    return parse_duration(text)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:  # a setting as it was typed: `--timeout 2s` is "2s" (it read "2.0s", and 90s "1m30s")
        return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.1f}s"
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts[:2])


def local_text(dt: datetime) -> str:
    """A moment as people read it everywhere fleetd writes text (tables, event messages, route notes, its
    log): local time with the zone's name, e.g. "2026-11-30 07:41:02 CET". JSON keeps ISO 8601."""
    local = dt.astimezone()
    if local.year < 1000:  # strftime's %Y does not pad those (glibc): the one case isoformat writes otherwise
        return local.strftime(LOCAL_FORMAT)
    # LOCAL_FORMAT without strftime, which costs twice as much (datetime rewrites the format for %Z, then
    # time.strftime builds a struct tm): `runs list --limit 10000` writes 10,000 of these.
    return f"{local.isoformat(' ', 'seconds')[:19]} {local.tzname() or ''}"


def now_utc() -> datetime:
    return datetime.now(UTC)


def to_iso(dt: datetime | None) -> str | None:
    """ISO 8601 with offset; fleetd stores and speaks UTC."""
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


def from_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
