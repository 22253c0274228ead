"""What every command module shares: where the daemon is, reading flags, and printing a result.

A command parses its flags, makes one call, and hands the answer to `render`: the same answer is
printed as JSON with `--json` and through the command's text renderer otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from fleetd.cli.client import Client, CliError
from fleetd.cli.format import emit_json
from fleetd.paths import Paths, UnsafeDirectory, resolve

json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@dataclass(frozen=True)
class Option:
    """One option of an `add` command and its `edit`, declared once for both. `add_default` is what `add`
    assumes when it is not given; `edit` has no defaults (what is not given stays as it is). A `clearable`
    option can be unset by `edit --clear-NAME`, back to `add`'s default."""

    flag: str  # "--dir", or a "--on/--off" pair
    key: str  # the field of the API body
    help: str
    add_default: Any = None
    clearable: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more click settings: type, multiple, metavar

    @property
    def name(self) -> str:
        return self.flag.split("/")[0].removeprefix("--")

    @property
    def clear_flag(self) -> str:
        """`--clear-dir`; plural for a repeatable option, which it clears of every value: `--clear-agent-args`."""
        many = self.extra.get("multiple") and not self.name.endswith("s") and self.name != "env"
        return f"--clear-{self.name}{'s' if many else ''}"


def shared_options(options: tuple[Option, ...], edit: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """`options` for an `add` command (edit=False) or its `edit`: the same list, with `add`'s defaults, or
    with none and a `--clear-NAME` for each clearable one."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        declared = []
        for option in options:
            settings = dict(option.extra)
            if not edit and option.add_default is not None:
                settings.update(default=option.add_default, show_default=option.add_default is not False)
            elif "/" in option.flag:
                settings["default"] = None  # a flag pair left out of `edit` changes nothing (click would say False)
            declared.append(click.option(option.flag, option.key, help=option.help, **settings))
        if edit:
            declared += [
                click.option(o.clear_flag, f"clear_{o.key}", is_flag=True, help=f"Unset --{o.name}.")
                for o in options
                if o.clearable
            ]
        for declare in reversed(declared):
            command = declare(command)
        return command

    return decorate


def edit_changes(options: tuple[Option, ...], fields: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An `edit` command's flags: the options given (by their body key) and the fields to clear."""
    by_key = {o.key: o for o in options}
    clear = [key.removeprefix("clear_") for key, value in fields.items() if key.startswith("clear_") and value]
    given = {k: v for k, v in fields.items() if not k.startswith("clear_") and v is not None and v != ()}
    if not given and not clear:
        raise CliError("nothing to change: give the options to change (see --help)", exit_code=2)
    for key in clear:
        if key in given:
            raise CliError(f"give --{by_key[key].name} or {by_key[key].clear_flag}, not both", exit_code=2)
    return given, clear


def paths() -> Paths:
    return resolve()


def client(timeout: float | None = 30.0) -> Client:
    return Client(paths().socket, timeout=timeout)


def render(answer: Any, as_json: bool, text: Callable[[Any], str | None]) -> None:
    """The one way a command prints: JSON as the daemon said it, or the command's text."""
    if as_json:
        emit_json(answer)
        return
    shown = text(answer)
    if shown is not None:
        click.echo(shown)


def seconds(value: str, flag: str) -> float:
    from fleetd.timefmt import DurationError, parse_duration

    try:
        return parse_duration(value)
    except DurationError as e:
        raise CliError(f"invalid {flag}: {e}", exit_code=2) from None


def positive_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A click callback for plain-seconds options: finite, above zero, within fleetd's longest duration."""
    from fleetd.timefmt import MAX_DURATION_S, MAX_DURATION_YEARS

    if not (math.isfinite(value) and 0 < value <= MAX_DURATION_S):
        raise click.BadParameter(
            f"{value:g}: give seconds above 0, at most {MAX_DURATION_YEARS} years", ctx=ctx, param=param
        )
    return value


def ensure_home(where: Paths) -> None:
    """Creates fleetd's directories, or says in one line why it cannot (e.g. FLEETD_HOME=/proc/x)."""
    try:
        where.ensure()
    except UnsafeDirectory as e:
        raise CliError(str(e)) from None
    except OSError as e:
        place = e.filename or where.home
        raise CliError(f"cannot create fleetd's directory {place}: {e.strerror or e}") from None


def absolute(path: str) -> str:
    """A path as the daemon needs it: it does not share the CLI's cwd or `~`."""
    return os.path.abspath(os.path.expanduser(path))


def checked_run_id(value: str) -> str:
    if not value.isdigit():
        raise CliError(f"invalid run id {value!r}: run ids are numbers", exit_code=2)
    return value


def fields_text(fields: list[tuple[str, Any]]) -> str:
    """`key  value` lines, aligned; empty values left out."""
    width = max((len(k) for k, _ in fields), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in fields if value not in (None, ""))


def circuit_text(circuit: dict[str, Any] | None) -> str:
    from fleetd.cli.format import local_time

    if not circuit:
        return "-"
    if circuit["state"] == "open":
        return f"open until {local_time(circuit['open_until'])}"
    return circuit["state"].replace("_", "-")
