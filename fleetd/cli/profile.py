"""`fleetd profile …`: auth profiles, one login or API key each."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from fleetd.cli import complete
from fleetd.cli.client import CliError, segment
from fleetd.cli.common import absolute, circuit_text, client, fields_text, render
from fleetd.cli.complete import profile_name
from fleetd.cli.format import table
from fleetd.timefmt import format_duration


@click.group()
def profile() -> None:
    """Auth profiles: one login or API key each."""


@profile.command("add")
@profile_name
@click.option(
    "--backend",
    required=True,
    shell_complete=complete.profile_backends,
    help="claude_code, codex, gemini, aider or openai_compat.",
)
@click.option("--tier", type=click.Choice(["local", "subscription", "metered"]),
              help="Default: metered with an API key, local for a loopback --base-url, else subscription.")  # fmt: skip
@click.option("--api-key-stdin", is_flag=True, help="Read the API key from stdin (kept in the OS keyring).")
@click.option("--base-url", help="API base URL (openai_compat; or a gateway for the others).")
@click.option("--model", help="Default model for this profile.")
@click.option("--config-dir", type=click.Path(file_okay=False), help="The CLI's config directory for this login.")
@click.option("--limit", "limits", multiple=True, metavar="WINDOW=AMOUNT",
              help="A usage limit, e.g. 5h=4000000tok, 24h=500req, 30d=50usd (repeatable).")  # fmt: skip
@click.option("--price-input", type=float, help="USD per million input tokens (metered).")
@click.option("--price-output", type=float, help="USD per million output tokens.")
@click.option("--price-cache-read", type=float, help="USD per million cache-read tokens.")
@click.option("--price-cache-write", type=float, help="USD per million cache-write tokens.")
@click.option("--default-reset", help="How long a rate limit that names no reset lasts (default 60s).")
@click.option("--daily-cost", help="USD this profile may spend per rolling 24 h (then it is passed over).")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def profile_add(
    name: str, api_key_stdin: bool, config_dir: str | None, limits: tuple[str, ...], as_json: bool, **fields: Any
) -> None:
    """Add profile NAME. The key never appears on a command line: pipe it in with --api-key-stdin."""
    body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    body.update(name=name, limits=list(limits))
    if config_dir is not None:
        body["config_dir"] = absolute(config_dir)
    if api_key_stdin:
        if sys.stdin.isatty():
            raise CliError("--api-key-stdin: pipe the key in, e.g. `fleetd profile add … --api-key-stdin < key.txt`", 2)
        body["api_key"] = sys.stdin.read().strip()
    render(client().call("POST", "/v1/profiles", body), as_json, _added_text)


def _added_text(p: dict[str, Any]) -> str:
    hint = "" if p["has_api_key"] else f"; log in with `fleetd profile login {p['name']}`"
    return f"added profile {p['name']} ({p['backend']}, {p['tier']}){hint}"


@profile.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def profile_list(as_json: bool) -> None:
    """All profiles."""
    render(client().call("GET", "/v1/profiles"), as_json, _list_text)


def _list_text(items: list[dict[str, Any]]) -> str:
    rows = [
        [p["name"], p["backend"], p["tier"], "key" if p["has_api_key"] else "login", p["model"] or "-",
         "yes" if p["enabled"] else "no", p["config_dir"]]
        for p in items
    ]  # fmt: skip
    return table(["NAME", "BACKEND", "TIER", "AUTH", "MODEL", "ENABLED", "CONFIG DIR"], rows)


@profile.command("show")
@profile_name
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def profile_show(name: str, as_json: bool) -> None:
    """One profile (never its key)."""
    render(client().call("GET", f"/v1/profiles/{segment(name)}"), as_json, _show_text)


def _show_text(p: dict[str, Any]) -> str:
    prices = ", ".join(f"{k} ${v}/Mtok" for k, v in p["prices_per_mtok"].items() if v is not None)
    return fields_text(
        [
            ("name", p["name"]),
            ("backend", p["backend"]),
            ("tier", p["tier"]),
            ("auth", "API key (in the keyring)" if p["has_api_key"] else "login in the config dir"),
            ("config dir", p["config_dir"]),
            ("base url", p["base_url"]),
            ("model", p["model"]),
            ("prices", prices or None),
            ("limits", " ".join(p["limits"]) or None),
            ("default reset", format_duration(p["default_reset_s"]) if p.get("default_reset_s") else None),
            ("daily cost", f"${p['daily_cost']:.2f} per 24 h" if p.get("daily_cost") else None),
            ("enabled", "yes" if p["enabled"] else "no"),
            ("circuit", circuit_text(p.get("circuit"))),
        ]
    )


@profile.command("reset-circuit")
@profile_name
def profile_reset_circuit(name: str) -> None:
    """Close profile NAME's circuit breaker by hand."""
    client().call("POST", f"/v1/profiles/{segment(name)}/reset-circuit")
    click.echo(f"closed the circuit of profile {name}")


@profile.command("rm")
@profile_name
def profile_rm(name: str) -> None:
    """Remove profile NAME and its stored key."""
    client().call("DELETE", f"/v1/profiles/{segment(name)}")
    click.echo(f"removed profile {name}")


@profile.command("env")
@profile_name
def profile_env(name: str) -> None:
    """Print shell lines that use this profile by hand: eval "$(fleetd profile env NAME)"."""
    import shlex

    env = client().call("GET", f"/v1/profiles/{segment(name)}/env")
    for var in env["unset"]:
        click.echo(f"unset {var}")
    for var, value in env["set"].items():
        click.echo(f"export {var}={shlex.quote(value)}")


@profile.command("login")
@profile_name
def profile_login(name: str) -> None:
    """Run the backend's own login in the foreground, with this profile's config directory."""
    env = client().call("GET", f"/v1/profiles/{segment(name)}/env")
    argv = env["login_argv"]
    if not argv:
        raise CliError(f"profile {name} ({env['backend']}) logs in by API key: add it with --api-key-stdin")
    child_env = {k: v for k, v in os.environ.items() if k not in env["unset"]}
    child_env.update(env["set"])
    click.echo(f"running `{' '.join(argv)}` for profile {name}", err=True)
    try:
        os.execvpe(argv[0], argv, child_env)
    except FileNotFoundError:
        raise CliError(f"{argv[0]} not found on PATH") from None


@profile.command("disable")
@profile_name
def profile_disable(name: str) -> None:
    """Take profile NAME out of rotation until `fleetd profile enable NAME`."""
    client().call("POST", f"/v1/profiles/{segment(name)}/disable")
    click.echo(f"disabled profile {name}")


@profile.command("enable")
@profile_name
def profile_enable(name: str) -> None:
    """Put profile NAME back in rotation (also after an auth failure, once its login is fixed)."""
    client().call("POST", f"/v1/profiles/{segment(name)}/enable")
    click.echo(f"enabled profile {name}")


@profile.command("switch")
@click.argument("target")
@click.option("--auto", is_flag=True, help="TARGET is a backend: hand the choice back to the heartbeat.")
def profile_switch(target: str, auto: bool) -> None:
    """Pin profile TARGET as its backend's active profile (until exhausted), or with --auto unpin BACKEND."""
    if auto:
        answer = client().call("POST", f"/v1/backends/{segment(target)}/auto")
        click.echo(f"{answer['backend']}: automatic (active: {answer['active'] or '-'})")
    else:
        answer = client().call("POST", f"/v1/profiles/{segment(target)}/switch")
        click.echo(f"{answer['backend']}: {answer['active']} pinned")
