"""`fleetd events`: what happened to profiles and runs, newest last; `-f` follows."""

from __future__ import annotations

import sys
from typing import Any

import click

from fleetd.cli.client import CliError
from fleetd.cli.common import client
from fleetd.cli.format import local_time


@click.command("events")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--limit", default=50, show_default=True, help="How many recent events first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(follow: bool, limit: int, as_json: bool) -> None:
    """run.started, run.failed, loop.fire_skipped, profile.exhausted, profile.switched, … (README: Events)"""
    import json

    def show(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event))
        else:
            click.echo(f"{local_time(event['at'])}  {event['type']:<21} {event['message']}")

    daemon = client(timeout=None if follow else 30.0)
    if not follow:
        items = daemon.call("GET", "/v1/events", query={"limit": limit})
        if as_json and not items:
            return
        for event in items:
            show(event)
        return
    buffer = b""
    try:
        for chunk in daemon.stream(f"/v1/events?follow=1&limit={limit}"):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    show(json.loads(line))
                    sys.stdout.flush()
    except KeyboardInterrupt:
        return
    raise CliError("the fleetd daemon stopped")  # the only end of a followed stream that is not cut
