"""`fleetd profile …`: auth profiles, one login or API key each."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from fleetd.cli import complete
from fleetd.cli.addedit import Option, edit_changes, shared_options
from fleetd.cli.client import CliError, segment
from fleetd.cli.common import absolute, circuit_text, client, fields_text, json_flag, render
from fleetd.cli.complete import profile_name
from fleetd.cli.format import table
from fleetd.records.money import usd
from fleetd.timefmt import format_duration


@click.group()
def profile() -> None:
    """Auth profiles: one login or API key each."""


# fmt: off
PROFILE_OPTIONS = (
    Option("--tier", "tier", "Default: metered with an API key, local for a loopback --base-url, else subscription.",
           extra={"type": click.Choice(["local", "subscription", "metered"])}),
    Option("--base-url", "base_url", "API base URL (openai_compat; or a gateway for the others).", clearable=True),
    Option("--model", "model", "Default model for this profile.", clearable=True),
    Option("--limit", "limits", "A usage limit, e.g. 5h=4000000tok, 24h=500req, 30d=50usd (repeatable).",
           clearable=True, extra={"multiple": True, "metavar": "WINDOW=AMOUNT"}),
    Option("--price-input", "price_input", "USD per million input tokens (metered).", clearable=True,
           extra={"type": float}),
    Option("--price-output", "price_output", "USD per million output tokens.", clearable=True, extra={"type": float}),
    Option("--price-cache-read", "price_cache_read", "USD per million cache-read tokens.", clearable=True,
           extra={"type": float}),
    Option("--price-cache-write", "price_cache_write", "USD per million cache-write tokens.", clearable=True,
           extra={"type": float}),
    Option("--default-reset", "default_reset", "How long a rate limit that names no reset lasts (default 60s).",
           clearable=True),
    Option("--daily-cost", "daily_cost", "USD this profile may spend per rolling 24 h (then it is passed over).",
           clearable=True),
)
# fmt: on


def _key_from_stdin(command: str) -> str:
    if sys.stdin.isatty():
        example = f"fleetd profile {command} … --api-key-stdin < key.txt"
        raise CliError(f"--api-key-stdin: pipe the key in, e.g. `{example}`", exit_code=2)
    return sys.stdin.read().strip()


@profile.command("add")
@profile_name
@click.option(
    "--backend",
    required=True,
    shell_complete=complete.profile_backends,
    help="claude_code, codex, gemini, aider or openai_compat.",
)
@click.option("--api-key-stdin", is_flag=True, help="Read the API key from stdin (kept in the OS keyring).")
@click.option("--config-dir", type=click.Path(file_okay=False), help="The CLI's config directory for this login.")
@shared_options(PROFILE_OPTIONS, edit=False)
@json_flag
def profile_add(name: str, api_key_stdin: bool, config_dir: str | None, as_json: bool, **fields: Any) -> None:
    """Add profile NAME. The key never appears on a command line: pipe it in with --api-key-stdin."""
    body: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if v is not None}
    body["name"] = name
    if config_dir is not None:
        body["config_dir"] = absolute(config_dir)
    if api_key_stdin:
        body["api_key"] = _key_from_stdin("add")
    added = client().call("POST", "/v1/profiles", body)
    _warn_if_billed(added)
    render(added, as_json, _added_text)


def _warn_if_billed(p: dict[str, Any]) -> None:
    """A key wins over a login (Claude Code with -p, Codex exec, Gemini): a subscription profile with one is billed
    per token, while loops allow its tier by default."""
    if p["tier"] == "subscription" and p["auth"] == "key":
        click.echo(f"fleetd: warning: profile {p['name']} is tier subscription but runs with its API key, billed per "
                   f"token (a key wins over the login): `fleetd profile edit {p['name']} --tier metered`",
                   err=True)  # fmt: skip


def _added_text(p: dict[str, Any]) -> str:
    hint = f"; {p['auth_hint']}" if p.get("auth_hint") else ""
    return f"added profile {p['name']} ({p['backend']}, {p['tier']}){hint}"


@profile.command("edit")
@profile_name
@shared_options(PROFILE_OPTIONS, edit=True)
@json_flag
def profile_edit(name: str, as_json: bool, **fields: Any) -> None:
    """Change profile NAME in place: the options given replace what it has (--limit replaces every limit),
    --clear-NAME unsets one. Checked like `profile add`, nothing saved on error. Its key: `profile set-key`."""
    given, clear = edit_changes(PROFILE_OPTIONS, fields)
    body = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}
    edited = client().call("PATCH", f"/v1/profiles/{segment(name)}", {**body, "clear": clear})
    render(edited, as_json, lambda p: f"edited profile {p['name']} ({p['backend']}, {p['tier']})")


@profile.command("set-key")
@profile_name
@click.option("--api-key-stdin", is_flag=True, required=True, help="Read the new API key from stdin.")
@json_flag
def profile_set_key(name: str, api_key_stdin: bool, as_json: bool) -> None:
    """Give profile NAME a new API key (or its first), read from stdin: never on a command line. Output
    that runs print is scrubbed of the old key too, until the daemon restarts."""
    answer = client().call("PUT", f"/v1/profiles/{segment(name)}/key", {"api_key": _key_from_stdin("set-key")})
    _warn_if_billed(answer)
    render(answer, as_json, lambda p: f"stored a new API key for profile {p['name']}")


@profile.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def profile_list(as_json: bool) -> None:
    """All profiles."""
    render(client().call("GET", "/v1/profiles"), as_json, _list_text)


def _list_text(items: list[dict[str, Any]]) -> str:
    rows = [
        [p["name"], p["backend"], p["tier"], p["auth"], p["model"] or "-",
         _enabled_text(p), p["config_dir"]]
        for p in items
    ]  # fmt: skip
    return table(["NAME", "BACKEND", "TIER", "AUTH", "MODEL", "ENABLED", "CONFIG DIR"], rows)


def _enabled_text(p: dict[str, Any], *, whole: bool = False) -> str:
    """Its setting, or `no` and why the heartbeat set it aside: the reason's kind in a list ("auth failure"), all of
    it and the way back with `whole`."""
    if not (aside := p.get("disabled_reason")):
        return "yes" if p["enabled"] else "no"
    if whole:
        return f"no, {aside} (`fleetd profile enable {p['name']}` once it is fixed)"
    return f"no ({aside.split(':', 1)[0]})"


@profile.command("show")
@profile_name
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def profile_show(name: str, as_json: bool) -> None:
    """One profile (never its key)."""
    render(client().call("GET", f"/v1/profiles/{segment(name)}"), as_json, _show_text)


AUTH_TEXT = {
    "key": "API key (in the secret store)",
    "login": "the CLI's own login, in the config dir",
    "none": "none needed (a server on this host)",
    "missing": "missing",
}


def _show_text(p: dict[str, Any]) -> str:
    prices = ", ".join(f"{k} ${v}/Mtok" for k, v in p["prices_per_mtok"].items() if v is not None)
    return fields_text(
        [
            ("name", p["name"]),
            ("backend", p["backend"]),
            ("tier", p["tier"]),
            ("auth", AUTH_TEXT[p["auth"]]),
            ("to do", p["auth_hint"]),
            ("config dir", p["config_dir"]),
            ("base url", p["base_url"]),
            ("model", p["model"]),
            ("prices", prices or None),
            ("limits", " ".join(p["limits"]) or None),
            ("default reset", format_duration(p["default_reset_s"]) if p.get("default_reset_s") else None),
            ("daily cost", f"{usd(p['daily_cost'])} per 24 h" if p.get("daily_cost") else None),
            ("enabled", _enabled_text(p, whole=True)),
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
        why = env["auth_hint"] or AUTH_TEXT[env["auth"]]
        raise CliError(f"profile {name} ({env['backend']}) has no login to run; its authentication: {why}")
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
