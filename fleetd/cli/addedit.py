"""One list of options for an `add` command and its `edit`: each option declared once, `add` with its
defaults, `edit` with none and a `--clear-NAME` for what can be unset.

Only `add` and `edit` import this (and their option lists): the other commands of a group start
without building them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from fleetd.cli.client import CliError


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
            elif "/" in option.flag or settings.get("is_flag"):
                settings["default"] = None  # a flag left out of `edit` changes nothing (click would say False)
            if not settings.get("multiple") and not settings.get("is_flag"):
                settings.setdefault("callback", _not_empty)
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


def _not_empty(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """`--tz ""` is not a value: the API takes an empty field as one not given (the default); `--clear-tz`
    is how `edit` unsets one."""
    if value == "":
        raise CliError(f"{param.opts[0]} needs a value", exit_code=2)
    return value


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
