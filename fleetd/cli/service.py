"""`fleetd service …`: the systemd user unit / launchd agent that keeps the daemon running."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from fleetd.cli.client import CliError
from fleetd.cli.common import json_flag, paths, render


@click.group()
def service() -> None:
    """The systemd user unit / launchd agent."""


@service.command("install")
@click.option("--print", "print_only", is_flag=True, help="Only print the unit; write nothing.")
def service_install(print_only: bool) -> None:
    """Install the service for this user (systemd on Linux, launchd on macOS).

    The unit records this shell's PATH (so the agent CLIs it finds here are found by the daemon too), and
    FLEETD_HOME and FLEETD_SECRET_STORE when they are set. Run it again after installing a CLI elsewhere."""
    from fleetd.service import units

    home = os.environ.get("FLEETD_HOME")
    try:
        result = units.install(
            platform=sys.platform,
            fleetd_exe=units.find_fleetd_executable(),
            fleetd_home=str(Path(home).expanduser().resolve()) if home else None,
            user_home=Path.home(),
            log_dir=str(paths().logs),
            print_only=print_only,
            xdg_config_home=os.environ.get("XDG_CONFIG_HOME"),
            user_path=os.environ.get("PATH"),
            secret_store=os.environ.get("FLEETD_SECRET_STORE") or None,
        )
    except (ValueError, RuntimeError, OSError) as e:
        raise CliError(str(e)) from None
    if print_only:
        click.echo(result.text, nl=False)
        return
    click.echo(f"wrote {result.path}")
    for step in result.next_steps:
        click.echo(f"  {step}")


@service.command("uninstall")
def service_uninstall() -> None:
    """Stop and disable the service and remove its file; says what it did (running it twice is harmless)."""
    from fleetd.service import units

    try:
        done = units.uninstall(sys.platform, Path.home(), os.environ.get("XDG_CONFIG_HOME"))
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None
    for line in done:
        click.echo(line)


@service.command("status")
@json_flag
def service_status(as_json: bool) -> None:
    """The unit's state: installed, enabled, active, and the PATH it gives the daemon."""
    from fleetd.service import units

    try:
        state = units.status(sys.platform, Path.home(), os.environ.get("XDG_CONFIG_HOME"))
    except ValueError as e:
        raise CliError(str(e)) from None
    render(state.to_json(), as_json, _status_text)


def _status_text(s: dict[str, Any]) -> str:
    lines = [f"{s['manager']} unit {s['path']}: {'installed' if s['installed'] else 'not installed'}"]
    if s["installed"]:
        for key in ("FLEETD_HOME", "FLEETD_SECRET_STORE", "PATH"):
            lines.append(f"  {key}: {s['environment'].get(key, '(not set)')}")
    if s["reachable"]:
        state = [f"loaded: {s['loaded'] or '-'}", f"active: {s['active'] or '-'}"]
        if s["enabled"]:
            state.insert(1, f"enabled: {s['enabled']}")
        if s["pid"]:
            state.append(f"pid {s['pid']}")
        lines.append("  " + ", ".join(state))
    if s["note"]:
        lines.append(f"  {s['note']}")
    return "\n".join(lines)
