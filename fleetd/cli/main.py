"""`fleetd …`: the command groups, one module per resource, and the one place errors become exit codes.

Every command module imports only click, the socket client and the formatters at load; anything
heavier (the daemon, keyring, the unit templates) is imported inside the command that needs it, so
`fleetd loop list` stays a ~50 ms round trip.
"""

from __future__ import annotations

import sys

import click

from fleetd import __version__
from fleetd.cli.client import CliError
from fleetd.cli.daemon import daemon
from fleetd.cli.doctor import doctor
from fleetd.cli.events import events
from fleetd.cli.loop import loop
from fleetd.cli.profile import profile
from fleetd.cli.runs import runs
from fleetd.cli.service import service
from fleetd.cli.stats import stats
from fleetd.cli.usage import usage


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetd")
def cli() -> None:
    """fleetd: run coding-agent loops unattended."""


for command in (daemon, loop, runs, profile, usage, events, stats, service, doctor):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        click.echo(f"fleetd: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"fleetd: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        sys.exit(130)
    except CliError as e:
        click.echo(f"fleetd: {e.message}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
