"""`fleetd usage`: per profile, its state, each window's use and when it resets."""

from __future__ import annotations

import time
from typing import Any

import click

from fleetd.cli.common import circuit_text, client, positive_seconds, render
from fleetd.cli.format import table
from fleetd.timefmt import format_duration


def _usage_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        windows = " ".join(
            f"{w['window']} {_amount(w['used'], w['unit'])}/{_amount(w['limit'], w['unit'])} ({w['percent']:g}%)"
            for w in r["windows"]
        )
        reported = " ".join(
            f"{_minutes(w['window_minutes'])} {w['used_percent']:g}%*" for w in r["reported_windows"]
            if w["used_percent"] is not None
        )  # fmt: skip
        state = r["state"] + (" (unconfirmed)" if r["unconfirmed"] else "")
        resets = format_duration(r["resets_in_s"]) if r["resets_in_s"] is not None else "-"
        marker = "*" if r["active"] else ""
        marker += " pinned" if r["pinned"] else ""
        shown = " ".join(x for x in (windows, reported) if x) or "-"
        circuit = circuit_text(r["circuit"])
        lines.append([r["profile"], r["backend"], r["tier"], state, shown, resets, marker.strip(), circuit])
    return table(["PROFILE", "BACKEND", "TIER", "STATE", "WINDOWS", "RESETS IN", "ACTIVE", "CIRCUIT"], lines)


def _amount(value: float, unit: str) -> str:
    if unit == "usd":
        return f"${value:.2f}"
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}{unit}"
    return f"{value:g}{unit}"


def _minutes(value: int | None) -> str:
    if not value:
        return "window"
    return format_duration(value * 60)


@click.command("usage")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, callback=positive_seconds,
              help="Seconds between refreshes with --watch.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def usage(watch: bool, interval: float, as_json: bool) -> None:
    """Per profile: state, each window's use, when it resets, the active marker (*)."""
    daemon = client()
    if as_json or not watch:
        render(daemon.call("GET", "/v1/usage"), as_json, _usage_table)
        return
    try:
        while True:
            text = _usage_table(daemon.call("GET", "/v1/usage"))
            click.echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S") + "  fleetd usage (Ctrl-C to stop)\n" + text)
            time.sleep(interval)
    except KeyboardInterrupt:
        return
