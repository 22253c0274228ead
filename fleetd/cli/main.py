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
from fleetd.cli.common import LazyGroup

# name -> "module:attribute". A command imports only its own module: `fleetd loop list` never
# loads the daemon, profile or service commands (`fleetd --help` loads them all, for their help).
COMMANDS = {
    "daemon": "fleetd.cli.daemon:daemon",
    "loop": "fleetd.cli.loop:loop",
    "runs": "fleetd.cli.runs:runs",
    "profile": "fleetd.cli.profile:profile",
    "usage": "fleetd.cli.usage:usage",
    "events": "fleetd.cli.events:events",
    "stats": "fleetd.cli.stats:stats",
    "service": "fleetd.cli.service:service",
    "hook": "fleetd.cli.hook:hook",
    "route": "fleetd.cli.route:route",
    "gateway": "fleetd.cli.gateway:gateway",
    "doctor": "fleetd.cli.doctor:doctor",
    "completion": "fleetd.cli.complete:completion",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetd")
def cli() -> None:
    """fleetd: run coding-agent loops unattended."""


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:
        # `fleetd loop` alone: what it can do, in one line (click would print the whole help as the error).
        assert isinstance(e.ctx.command, click.Group)  # only a group is called without its arguments
        path, names = e.ctx.command_path, e.ctx.command.list_commands(e.ctx)
        click.echo(f"fleetd: `{path}` needs a command: {', '.join(names)} (see `{path} --help`)", err=True)
        sys.exit(2)
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
        # One line, whatever the daemon's message quotes (a reviewer's findings, a run's error).
        message = " ".join(line.strip() for line in e.message.splitlines() if line.strip())
        click.echo(f"fleetd: {message}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
