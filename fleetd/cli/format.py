"""Human output: tables, and times in the local zone with the zone's name.

The daemon speaks ISO 8601 with an offset (what `--json` prints); people read local time with the
zone ("2026-11-30 07:41:02 CET") or, where the distance matters more than the moment, relative time
("in 3m", "2h ago"). Event lines, log lines and tables all go through these.
"""

from __future__ import annotations

from datetime import datetime

from fleetd.timefmt import format_duration, local_text


def local_time(iso: str | None) -> str:
    if not iso:
        return "-"
    return local_text(datetime.fromisoformat(iso))


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
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def schedule_text(schedule: dict[str, str]) -> str:
    return f"{schedule['kind']} {schedule['expr']}"


def short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
