"""Human output: tables, and times in the local zone with the zone's name.

The daemon speaks ISO 8601 with an offset (what `--json` prints); people read local time with the
zone ("2026-11-30 07:41:02 CET") or, where the distance matters more than the moment, relative time
("in 3m", "2h ago"). Event lines, log lines and tables all go through these.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

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
    """Columns as wide as their widest cell, two spaces apart, no trailing blanks. Column by column and through
    one format string: cell by cell took ~100 ms for `runs list --limit 10000`."""
    columns = list(zip(headers, *rows, strict=True))
    line = "  ".join(f"{{:<{max(map(len, column))}}}" for column in columns)
    return "\n".join(line.format(*row).rstrip() for row in [headers, *rows])


def emit_json(data: Any) -> None:
    click.echo(json_text(data))


_NESTED = frozenset((dict, list))
# Between the items of an object nested in a list, with indent=2: what json.dumps writes there.
_ITEM = ",\n    "


def json_text(data: Any) -> str:
    """`json.dumps(data, indent=2)`, byte for byte. With an indent, json.dumps leaves its C encoder for one in
    Python (400 ms for 10,000 runs); a list of flat objects (every `… list --json`) is written by the C encoder
    instead, with the indent as its separators. Its strings never hold a raw newline (JSON escapes it), and
    nothing but a row begins with `{`, so "},\n    {" only ever stands between two rows."""
    if (
        not isinstance(data, list)
        or not data
        or not all(type(row) is dict and row and _NESTED.isdisjoint(map(type, row.values())) for row in data)
    ):
        return json.dumps(data, indent=2)
    flat = json.dumps(data, separators=(_ITEM, ": "))  # [{"id": 1,\n    "loop": "x"},\n    {"id": 2, …}]
    return "[\n  {\n    " + flat[2:-2].replace("}" + _ITEM + "{", "\n  },\n  {\n    ") + "\n  }\n]"


def schedule_text(schedule: dict[str, str]) -> str:
    return f"{schedule['kind']} {schedule['expr']}"


def short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
