"""Human output: tables, and times in the local zone with the zone's name.

The daemon speaks ISO 8601 with an offset (what `--json` prints); people read local time with the
zone ("2026-11-30 07:41:02 CET") or, where the distance matters more than the moment, relative time
("in 3m", "2h ago"). Event lines, log lines and tables all go through these.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fleetd.timefmt import format_duration, local_text


def local_time(iso: str | None) -> str:
    if not iso:
        return "-"
    return local_text(datetime.fromisoformat(iso))


def local_times(isos: list[str | None]) -> list[str]:
    """`[local_time(iso) for iso in isos]`, for many times at once (`runs list --limit 10000`): the times fleetd
    writes (`to_iso`: YYYY-MM-DDTHH:MM:SS.mmm+00:00) are moved by their UTC hour's offset, looked up once per hour
    (making each time local on its own was most of the table). Exact where the offset is whole minutes and the
    same through the hour (its first and last second are checked), else through the minute; any other time is
    made local on its own."""
    hours: dict[str, tuple[timedelta, str] | None] = {}
    minutes: dict[str, tuple[str, str] | None] = {}
    shown = []
    for iso in isos:
        if iso is None or len(iso) != 29 or not iso.endswith("+00:00"):
            shown.append(local_time(iso))
            continue
        minute = iso[:16]
        parts = minutes.get(minute, _UNSEEN)
        if parts is _UNSEEN:
            hour = iso[:13]
            if hour not in hours:
                hours[hour] = _steady_offset(hour)
            steady = hours[hour]
            parts = minutes[minute] = _local_minute(minute) if steady is None else _moved(minute, *steady)
        shown.append(local_time(iso) if parts is None else f"{parts[0]}{iso[16:19]}{parts[1]}")
    return shown


_UNSEEN = ("", "")


def _steady_offset(hour: str) -> tuple[timedelta, str] | None:
    """The local zone's offset (whole minutes) and name through a UTC hour ("YYYY-MM-DDTHH"); None where the hour
    holds a change of either, or the offset has seconds."""
    try:
        start = datetime.fromisoformat(f"{hour}:00:00+00:00")
        first, last = start.astimezone(), (start + timedelta(seconds=3599)).astimezone()
    except (ValueError, OverflowError):
        return None
    offset = first.utcoffset()
    if offset is None or offset != last.utcoffset() or first.tzname() != last.tzname() or offset.seconds % 60:
        return None
    return offset, f" {first.tzname() or ''}"


def _moved(minute: str, offset: timedelta, zone: str) -> tuple[str, str] | None:
    try:
        local = datetime.fromisoformat(minute) + offset
    except OverflowError:
        return None
    return (local.isoformat(" ", "minutes"), zone) if local.year >= 1000 else None


def _local_minute(minute: str) -> tuple[str, str] | None:
    """A UTC minute ("YYYY-MM-DDTHH:MM") made local, split around its seconds: ("2026-11-30 07:41", " CET"); None
    where the minute holds a change of offset or name, or the offset has seconds."""
    try:
        start = datetime.fromisoformat(f"{minute}:00+00:00")
        first, last = start.astimezone(), (start + timedelta(seconds=59)).astimezone()
    except (ValueError, OverflowError):
        return None
    if first.utcoffset() != last.utcoffset() or first.tzname() != last.tzname():
        return None
    text = local_text(first)
    return (text[:16], text[19:]) if text[16:19] == ":00" else None


def relative_time(iso: str | None, now: datetime | None = None) -> str:
    """ "in 3m", "2h ago", "now": for times a person compares with the present (next fire, last fire)."""
    if not iso:
        return "-"
    at = datetime.fromisoformat(iso)
    delta = (at - (now or datetime.now(at.tzinfo))).total_seconds()
    if abs(delta) < 1:
        return "now"
    # Whole seconds under a minute: "in 3s" reads better than "in 3.0s".
    seconds = round(abs(delta))
    span = f"{seconds}s" if seconds < 60 else format_duration(seconds)
    return f"in {span}" if delta > 0 else f"{span} ago"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns as wide as their widest cell, two spaces apart, no trailing blanks. Column by column and through
    one format string: cell by cell took ~100 ms for `runs list --limit 10000`."""
    columns = list(zip(headers, *rows, strict=True))
    line = "  ".join(f"{{:<{max(map(len, column))}}}" for column in columns)
    return "\n".join(line.format(*row).rstrip() for row in [headers, *rows])


def schedule_text(schedule: dict[str, str]) -> str:
    return f"{schedule['kind']} {schedule['expr']}"


def short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
