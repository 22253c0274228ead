"""`fleetd service …`: the systemd user unit / launchd agent that keeps the daemon running."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from fleetd.cli.client import CliError
from fleetd.cli.common import paths


@click.group()
def service() -> None:
    """The systemd user unit / launchd agent."""


@service.command("install")
@click.option("--print", "print_only", is_flag=True, help="Only print the unit; write nothing.")
def service_install(print_only: bool) -> None:
    """Install the service for this user (systemd on Linux, launchd on macOS)."""
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
        )
    except (ValueError, RuntimeError, OSError) as e:
        raise CliError(str(e)) from None
    if print_only:
        click.echo(result.text, nl=False)
        return
    click.echo(f"wrote {result.path}")
    for step in result.next_steps:
        click.echo(f"  {step}")
