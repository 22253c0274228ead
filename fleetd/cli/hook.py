"""`fleetd hook …`: tell a command or a URL about events (run.failed, circuit.opened, …)."""

from __future__ import annotations

import sys
from typing import Any

import click

from fleetd.cli.client import CliError, segment
from fleetd.cli.common import client, json_flag, render
from fleetd.cli.complete import hook_name
from fleetd.cli.format import local_time, short, table

# A test delivery waits for the hook (at most its timeout, 120 s); the answer must not be cut short first.
TEST_TIMEOUT = 150.0


@click.group()
def hook() -> None:
    """Hooks: a command or a webhook told about events."""


@hook.command("add")
@hook_name
@click.option("--on", "on", required=True, metavar="EVENTS",
              help="Event types, comma-separated, e.g. run.failed,circuit.opened; run.* a family; * all.")  # fmt: skip
@click.option("--exec", "command", help="Shell command; gets the event JSON on stdin, FLEETD_EVENT_TYPE etc. in env.")
@click.option("--webhook", help="URL (http/https) that gets the event JSON as a POST.")
@click.option("--secret-stdin", is_flag=True,
              help="Read a webhook's signing secret from stdin (kept in the secret store, like keys).")  # fmt: skip
@click.option("--timeout", help="How long one delivery may take (default 10s, at most 2m).")
@json_flag
def hook_add(
    name: str, on: str, command: str | None, webhook: str | None, secret_stdin: bool, timeout: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Add hook NAME: --exec COMMAND or --webhook URL, for the events --on names."""
    body: dict[str, Any] = {"name": name, "on": on, "exec": command, "webhook": webhook, "timeout": timeout}
    if secret_stdin:
        if sys.stdin.isatty():
            raise CliError("--secret-stdin: pipe the secret in, e.g. `… --secret-stdin < secret.txt`", 2)
        body["secret"] = sys.stdin.read().strip()
    body = {k: v for k, v in body.items() if v is not None}
    render(client().call("POST", "/v1/hooks", body), as_json, _added_text)


def _added_text(h: dict[str, Any]) -> str:
    signed = ", signed" if h["has_secret"] else ""
    return f"added hook {h['name']} ({h['kind']}{signed}) on {','.join(h['on'])}"


@hook.command("list")
@json_flag
def hook_list(as_json: bool) -> None:
    """All hooks and how their last delivery went (never a secret)."""
    render(client().call("GET", "/v1/hooks"), as_json, _list_text)


def _list_text(items: list[dict[str, Any]]) -> str:
    rows = [
        [h["name"], ",".join(h["on"]), h["kind"], short(h["exec"] or h["webhook"], 48),
         "yes" if h["has_secret"] else "no", _last_text(h["last_delivery"])]
        for h in items
    ]  # fmt: skip
    return table(["NAME", "ON", "KIND", "TARGET", "SECRET", "LAST DELIVERY"], rows)


def _last_text(last: dict[str, Any] | None) -> str:
    if last is None:
        return "-"
    outcome = "ok" if last["ok"] else "FAILED"
    return f"{local_time(last['at'])} {last['event_type']} {outcome} ({short(last['detail'], 40)})"


@hook.command("rm")
@hook_name
def hook_rm(name: str) -> None:
    """Remove hook NAME (and its secret)."""
    client().call("DELETE", f"/v1/hooks/{segment(name)}")
    click.echo(f"removed hook {name}")


@hook.command("test")
@hook_name
@json_flag
def hook_test(name: str, as_json: bool) -> None:
    """Deliver a `hook.test` event to hook NAME now, once; exit 1 when the delivery fails."""
    answer = client(timeout=TEST_TIMEOUT).call("POST", f"/v1/hooks/{segment(name)}/test")
    render(answer, as_json, _test_text)
    if not answer["ok"]:
        sys.exit(1)


def _test_text(answer: dict[str, Any]) -> str:
    outcome = "delivered" if answer["ok"] else "FAILED"
    return f"hook {answer['hook']}: {outcome}: {answer['detail']} ({answer['duration_ms']} ms)"
