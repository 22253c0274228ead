"""`fleetd gateway …`: the local provider-compatible endpoint: where it listens, its client keys, its calls."""

from __future__ import annotations

from typing import Any

import click

from fleetd.cli.client import CliError, segment
from fleetd.cli.common import client, json_flag, render
from fleetd.cli.complete import key_name
from fleetd.cli.format import local_time, short, table


@click.group()
def gateway() -> None:
    """The gateway: one local endpoint and key for every client, routed over the profiles."""


@gateway.command("enable")
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where to listen, e.g. 127.0.0.1:4141.")
@click.option("--public", is_flag=True, help="Allow a non-loopback address (anyone who can reach it can try keys).")
@json_flag
def gateway_enable(listen: str, public: bool, as_json: bool) -> None:
    """Listen on HOST:PORT now and after every restart."""
    answer = client().call("POST", "/v1/gateway/enable", {"listen": listen, "public": public})
    if answer.get("public") and not as_json:
        click.echo(f"fleetd: warning: the gateway listens on {answer['address']}, beyond this machine", err=True)
    host, _, port = listen.rpartition(":")
    if port == "0" and answer.get("address"):  # clients configured with this port lose it at the next restart
        now = answer["address"].rpartition(":")[2]
        click.echo(f"fleetd: warning: port 0 is a new free port at every daemon start (now {now}); "
                   f"`--listen {host}:{now}` keeps this one", err=True)  # fmt: skip
    render(answer, as_json, _status_text)


@gateway.command("disable")
@json_flag
def gateway_disable(as_json: bool) -> None:
    """Stop listening, now and after restarts."""
    render(client().call("POST", "/v1/gateway/disable"), as_json, _status_text)


@gateway.command("status")
@json_flag
def gateway_status(as_json: bool) -> None:
    """Where the gateway listens, if anywhere."""
    render(client().call("GET", "/v1/gateway"), as_json, _status_text)


def _status_text(s: dict[str, Any]) -> str:
    if not s["enabled"]:
        return "gateway: off" + (f" ({s['problem']})" if s.get("problem") else "")
    return f"gateway: listening on {s['url']} ({s['routes']} route(s), {s['keys']} key(s))"


@gateway.group("key")
def key() -> None:
    """Client keys: who may call the gateway."""


@key.command("add")
@key_name
@click.option("--routes", metavar="R1,R2", help="Only these routes (default: every route).")
@click.option("--daily-cost", metavar="USD", help="At most this much per rolling 24 h; over it, 429.")
@json_flag
def key_add(name: str, routes: str | None, daily_cost: str | None, as_json: bool) -> None:
    """Add key NAME and print it, this once (only its hash is kept)."""
    body: dict[str, Any] = {"name": name}
    if routes is not None:
        body["routes"] = routes
    if daily_cost is not None:
        body["daily_cost"] = daily_cost
    added = client().call("POST", "/v1/gateway/keys", body)
    if not as_json:  # the key alone on stdout, for KEY=$(fleetd gateway key add NAME); the note for whoever reads
        click.echo(f"fleetd: gateway key {name}: shown once, keep it now; fleetd keeps only its hash", err=True)
    render(added, as_json, lambda k: str(k["key"]))


@key.command("list")
@json_flag
def key_list(as_json: bool) -> None:
    """Every key (never the key itself)."""
    render(client().call("GET", "/v1/gateway/keys"), as_json, _keys_text)


def _keys_text(items: list[dict[str, Any]]) -> str:
    from fleetd.records.money import usd, usd_apart  # here: the other commands do not pay for its import

    def spent(k: dict[str, Any]) -> str:  # a daemon from before spent_24h (not restarted yet) has none: "-"
        amount, cap = k.get("spent_24h"), k["daily_cost"]
        if amount is None:
            return "-"
        if cap is None:
            return usd(amount)
        return "{} of {}".format(*usd_apart(amount, cap))  # as the gateway's refusals write it

    rows = [[k["name"], ",".join(k["routes"]) if k["routes"] is not None else "*", spent(k),
             local_time(k["created_at"])] for k in items]  # fmt: skip
    return table(["NAME", "ROUTES", "SPENT 24H (OF CAP)", "CREATED"], rows)


@key.command("rm")
@key_name
def key_rm(name: str) -> None:
    """Remove key NAME: it stops working at once."""
    client().call("DELETE", f"/v1/gateway/keys/{segment(name)}")
    click.echo(f"removed gateway key {name}")


@gateway.command("calls")
@click.option("--route", "route_name", help="Only this route's calls.")
@click.option("--since", help="Calls within this long, e.g. 1h, 7d.")
@click.option("--limit", default=50, show_default=True, type=int, help="At most this many, newest first.")
@json_flag
def gateway_calls(route_name: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """One line per call: route, the path it took, status, latency, tokens, cost."""
    if limit < 1:
        raise CliError("--limit must be at least 1", exit_code=2)
    query = {"route": route_name, "since": since, "limit": limit}
    render(client().call("GET", "/v1/gateway/calls", query=query), as_json, _calls_text)


def _calls_text(items: list[dict[str, Any]]) -> str:
    def path(c: dict[str, Any]) -> str:
        return " → ".join(f"{p['profile']}:{p['status'] or p['class'] or '-'}" for p in c["path"]) or "-"

    rows = [[local_time(c["at"]), c["key"] or "-", c["route"], path(c), c["outcome"] + (" (stream)" if c["streamed"]
             else ""), str(c["status"] or "-"), "-" if c["latency_ms"] is None else f"{c['latency_ms']}ms",
             "-" if c["ttft_ms"] is None else f"{c['ttft_ms']}ms",
             f"{c['tokens']['input']}/{c['tokens']['output']}", f"${c['cost_usd']:.4f}", short(c["error"], 40)]
            for c in items]  # fmt: skip
    return table(["AT", "KEY", "ROUTE", "PATH", "OUTCOME", "STATUS", "LATENCY", "TTFT", "IN/OUT", "COST", "ERROR"],
                 rows)  # fmt: skip
