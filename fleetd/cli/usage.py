"""`fleetd usage`: per profile, its state, each window's use and when it resets."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click

from fleetd.cli.client import CliError
from fleetd.cli.common import circuit_text, client, fields_text, json_flag, positive_seconds, render
from fleetd.cli.complete import profile_name
from fleetd.cli.format import local_time, table
from fleetd.records.money import usd, usd_apart
from fleetd.timefmt import format_duration

MIN_INTERVAL_S = 0.5  # between two refreshes of `usage --watch`
LEGEND = (
    "ACTIVE *: the profile its backend uses next (pinned: chosen by hand).\n"
    "N%*: the backend's own figure for that window; N% without *: fleetd's count against the profile's --limit.\n"
    "24h $X/$Y: what it spent of its --daily-cost."
)


def _windows(r: dict[str, Any], wide: bool) -> str:
    own = []
    for w in r["windows"]:
        amounts = " {}/{}".format(*_used_of(w)) if wide else ""
        own.append(f"{w['window']}{amounts} {w['percent']:g}%")
    reported = []
    for w in r["reported_windows"]:
        if w.get("expired"):
            reported.append(f"{_minutes(w['window_minutes'])} reset")
        elif w["used_percent"] is not None:
            reported.append(f"{_minutes(w['window_minutes'])} {w['used_percent']:g}%*")
    cost = r.get("daily_cost")
    spent = ["24h {}/{}".format(*usd_apart(cost["spent"], cost["cap"]))] if cost else []
    return " ".join(own + reported + spent) or "-"


def _back_in(r: dict[str, Any]) -> float | None:
    """Seconds until the profile is usable again by itself: its exhaustion's reset or, if later, its daily cost's
    room (an over-cap profile said `-`, as if it would never come back)."""
    waits = [r["resets_in_s"]] if r["resets_in_s"] is not None else []
    if (room_at := (r.get("daily_cost") or {}).get("room_at")) is not None:
        waits.append(max(0.0, datetime.fromisoformat(room_at).timestamp() - time.time()))
    return max(waits, default=None)


def _usage_table(rows: list[dict[str, Any]], wide: bool = False) -> str:
    lines = []
    for r in rows:
        state = r["state"] + ("?" if r["unconfirmed"] else "")
        if not wide and r["circuit"] and r["circuit"]["state"] == "open":
            state += ", circuit open"
        if cost := r.get("daily_cost"):  # `reached`: a daemon not restarted since it was added has none
            if cost.get("reached", cost["over"]):
                state += ", over daily cost"
            elif cost["over"]:
                state += ", no room in daily cost"
        back_in = _back_in(r)
        resets = format_duration(back_in) if back_in is not None else "-"
        marker = ("*" if r["active"] else "") + (" pinned" if r["pinned"] else "")
        line = [r["profile"], r["backend"], r["tier"], state, _windows(r, wide), resets, marker.strip()]
        lines.append([*line, circuit_text(r["circuit"])] if wide else line)
    headers = ["PROFILE", "BACKEND", "TIER", "STATE", "WINDOWS", "RESETS IN", "ACTIVE"]
    text = table([*headers, "CIRCUIT"] if wide else headers, lines)
    unconfirmed = (
        "\nSTATE ?: back after a reset, not yet confirmed by a run" if any(r["unconfirmed"] for r in rows) else ""
    )
    return f"{text}\n{LEGEND}{unconfirmed}" if rows else text


def _used_of(window: dict[str, Any]) -> tuple[str, str]:
    """A window's used and limit as text; money with the digits that tell them apart."""
    if window["unit"] == "usd":
        return usd_apart(window["used"], window["limit"])
    return _amount(window["used"], window["unit"]), _amount(window["limit"], window["unit"])


def _amount(value: float, unit: str) -> str:
    if unit == "usd":
        return usd(value)
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}{unit}"
    return f"{value:g}{unit}"


def _minutes(value: int | None) -> str:
    if not value:
        return "window"
    return format_duration(value * 60)


@click.group("usage", invoke_without_command=True)
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", default="2s", show_default=True, callback=positive_seconds,
              help="Time between refreshes with --watch (5s, 1m; a bare number is seconds).")  # fmt: skip
@click.option("--wide", is_flag=True, help="Every column: window amounts and the circuit breaker.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def usage(ctx: click.Context, watch: bool, interval: float, wide: bool, as_json: bool) -> None:
    """Per profile: state, each window's use, when it resets, the active marker (*).

    `fleetd usage show NAME` gives one profile in full."""
    if ctx.invoked_subcommand is not None:
        return
    if not watch and ctx.get_parameter_source("interval") == click.core.ParameterSource.COMMANDLINE:
        raise CliError("--interval needs --watch (it is the time between its refreshes)", exit_code=2)
    if interval < MIN_INTERVAL_S:  # `1ms` asked the daemon in a tight loop
        raise CliError(f"--interval must be at least {MIN_INTERVAL_S:g}s", exit_code=2)
    daemon = client()
    if as_json or not watch:
        render(daemon.call("GET", "/v1/usage"), as_json, lambda rows: _usage_table(rows, wide))
        return
    try:
        while True:
            text = _usage_table(daemon.call("GET", "/v1/usage"), wide)
            click.echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S %Z") + "  fleetd usage (Ctrl-C to stop)\n" + text)
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@usage.command("show")
@profile_name
@json_flag
def usage_show(name: str, as_json: bool) -> None:
    """One profile's usage in full: every window, the reported ones, the circuit, what is in flight."""
    rows = [r for r in client().call("GET", "/v1/usage") if r["profile"] == name]
    if not rows:
        raise CliError(f"no profile named {name!r}")
    render(rows[0], as_json, _show_text)


def _show_text(r: dict[str, Any]) -> str:
    fields: list[tuple[str, Any]] = [
        ("profile", r["profile"]),
        ("backend", r["backend"]),
        ("tier", r["tier"]),
        (
            "state",
            r["state"] + (" (unconfirmed: not yet confirmed by a run since its reset)" if r["unconfirmed"] else ""),
        ),
        ("reason", r["reason"]),
        ("exhausted until", local_time(r["exhausted_until"]) if r["exhausted_until"] else None),
        ("active", ("yes" + (", pinned" if r["pinned"] else "")) if r["active"] else "no"),
        ("in flight", r["in_flight"]),
        ("circuit", circuit_text(r["circuit"])),
        ("garbled lines", r["garbled_lines"] or None),
    ]
    for w in r["windows"]:
        eases = f", eases {local_time(w['eases_at'])}" if w.get("eases_at") else ""
        used = "{} of {}".format(*_used_of(w)) + f" ({w['percent']:g}%){eases}"
        fields.append((f"window {w['window']}", used))
    for w in r["reported_windows"]:
        label = f"reported {_minutes(w['window_minutes'])}"
        if w.get("expired"):
            fields.append((label, f"reset at {local_time(w['resets_at'])} (no newer figure yet)"))
        elif w["used_percent"] is not None:
            resets = f", resets {local_time(w['resets_at'])}" if w["resets_at"] else ""
            fields.append((label, f"{w['used_percent']:g}% (the backend's own figure){resets}"))
    if cost := r.get("daily_cost"):
        until = f"until {local_time(cost['room_at'])}, when enough spend leaves the 24 h window" if cost.get(
            "room_at") else "until spend leaves the 24 h window"  # fmt: skip
        over = (
            f": over it, passed over {until}"
            if cost.get("reached", cost["over"])
            else f": no room for another attempt of what its recent ones cost, passed over {until}"
            if cost["over"]
            else ""
        )
        fields.append(("daily cost", "{} of {} in 24 h".format(*usd_apart(cost["spent"], cost["cap"])) + over))
    return fields_text(fields)
