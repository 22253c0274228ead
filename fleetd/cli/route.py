"""`fleetd route …`: the gateway's routes. A route is the model name clients ask for, over a chain of
profiles tried in order (only those; nothing else is ever sent anywhere)."""

from __future__ import annotations

from typing import Any

import click

from fleetd.cli.client import segment
from fleetd.cli.common import client, fields_text, json_flag, render, warn
from fleetd.cli.complete import route_name
from fleetd.cli.format import local_time, table
from fleetd.timefmt import format_duration


@click.group()
def route() -> None:
    """Gateway routes: a model name over a chain of profiles."""


@route.command("add")
@route_name
@click.option("--chain", required=True, metavar="P1[@MODEL],P2[@MODEL]",
              help="The profiles to try, in order; @MODEL is the model the provider is asked for.")  # fmt: skip
@click.option("--api", type=click.Choice(["chat", "messages", "responses"]), default="chat", show_default=True,
              help="The provider API clients speak on this route (and every step must speak).")  # fmt: skip
@click.option("--timeout", help="How long an upstream may take to answer (default 120s, at most 1h).")
@click.option("--log-bodies", is_flag=True, help="Keep request and response bodies (64 KB each) in the call log.")
@json_flag
def route_add(name: str, chain: str, api: str, timeout: str | None, log_bodies: bool, as_json: bool) -> None:
    """Add route NAME (the model name clients send) over --chain."""
    body: dict[str, Any] = {"name": name, "chain": chain, "api": api, "log_bodies": log_bodies}
    if timeout is not None:
        body["timeout"] = timeout
    added = client().call("POST", "/v1/routes", body)
    warn(added)
    render(added, as_json, lambda r: f"added route {r['name']} ({r['api']}): {r['chain_text']}")


@route.command("list")
@json_flag
def route_list(as_json: bool) -> None:
    """Every route."""
    render(client().call("GET", "/v1/routes"), as_json, _list_text)


def _list_text(items: list[dict[str, Any]]) -> str:
    rows = [[r["name"], r["api"], r["chain_text"], format_duration(r["timeout_s"]), "yes" if r["log_bodies"] else "no"]
            for r in items]  # fmt: skip
    return table(["NAME", "API", "CHAIN", "TIMEOUT", "BODIES"], rows)


@route.command("show")
@route_name
@json_flag
def route_show(name: str, as_json: bool) -> None:
    """One route."""
    render(client().call("GET", f"/v1/routes/{segment(name)}"), as_json, _show_text)


def _show_text(r: dict[str, Any]) -> str:
    bodies = "yes" if r["log_bodies"] else "no"
    return fields_text([("name", r["name"]), ("api", r["api"]), ("chain", r["chain_text"]),
                        ("timeout", format_duration(r["timeout_s"])), ("log bodies", bodies),
                        ("created", local_time(r["created_at"]))])  # fmt: skip


@route.command("rm")
@route_name
def route_rm(name: str) -> None:
    """Remove route NAME."""
    client().call("DELETE", f"/v1/routes/{segment(name)}")
    click.echo(f"removed route {name}")
