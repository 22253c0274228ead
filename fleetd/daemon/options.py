"""The daemon's settings, each declared once: its default, its help and how its flag is read.

`daemon run`, `daemon start` (which passes the flags on) and the docs all read `DaemonOptions`; the
CLI builds its flags from `flags()`. A leaf: the CLI imports it without the server stack.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from fleetd.timefmt import DurationError, parse_duration, parse_retention

# duration: "30s", "5m"; fraction: "90%" or 0.9; retention: a duration, or 0 / off for never;
# text: free text checked where it is used (HOST:PORT); switch: a flag without a value.
Kind = Literal["duration", "fraction", "retention", "text", "switch"]


MIN_MISFIRE_GRACE = 1.0


class OptionError(ValueError):
    """A flag's value cannot be read; the message names the flag."""


def _option(default: float | str | bool | None, help: str, kind: Kind = "duration") -> Any:
    return field(default=default, metadata={"help": help, "kind": kind})


@dataclass
class DaemonOptions:
    stop_grace: float = _option(30.0, "How long in-flight runs may finish on stop.")
    kill_grace: float = _option(5.0, "Between SIGTERM and SIGKILL of a run's processes.")
    heartbeat_interval: float = _option(30.0, "How often usage is re-read and profiles re-judged.")
    near_limit: float = _option(0.9, "A profile is near_limit from this share of any window.", "fraction")
    backoff_base: float = _option(2.0, "First retry delay after a transient failure (doubles, jittered, cap 60s).")
    circuit_cooldown: float = _option(60.0, "How long an open circuit stays open before one probe (doubles, cap 30m).")
    retain: float | None = _option(
        90 * 86400.0, "Prune runs, attempts, events and run logs older than this (0/off: never).", "retention"
    )
    prune_interval: float = _option(3600.0, "How often the daemon prunes by --retain.")
    gateway: str = _option("", "Serve the gateway on HOST:PORT for this run (else the `fleetd gateway enable` "
                           "setting, if any).", "text")  # fmt: skip
    gateway_public: bool = _option(False, "Allow a non-loopback --gateway address.", "switch")
    misfire_grace: float = _option(
        60.0, "A timer waking later than this (a suspended host) counts its fires as missed, per --catch-up."
    )
    # Not flags.
    # Where the daemon writes its own log, rotating it; None: stderr (a service manager's journal). `daemon
    # start` sets it (`daemon run --log-file`), and the daemon's stdout and stderr follow each rotation, so
    # nothing lands in a rotated-away file.
    log_file: Path | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3

    @classmethod
    def from_flags(cls, texts: dict[str, Any]) -> DaemonOptions:
        """`texts`: flag values as typed, by field name. Raises OptionError."""
        options = cls(**{flag.name: flag.parse(texts[flag.name]) for flag in flags() if flag.name in texts})
        if options.misfire_grace < MIN_MISFIRE_GRACE:  # nearly every timer would wake "late": every fire missed
            raise OptionError(f"invalid --misfire-grace {texts['misfire_grace']!r}: at least {MIN_MISFIRE_GRACE:g}s")
        if options.gateway:
            _check_listen(options.gateway, options.gateway_public)
        elif options.gateway_public:  # it only lets --gateway listen beyond loopback: alone it did nothing
            raise OptionError(
                "--gateway-public needs --gateway HOST:PORT (or: fleetd gateway enable --listen HOST:PORT --public)"
            )
        return options

    def flag_texts(self) -> dict[str, Any]:
        """Every flag's value as `from_flags` reads it back: what `daemon restart` keeps of a running daemon."""
        return {flag.name: flag.text(getattr(self, flag.name)) for flag in flags()}


@dataclass(frozen=True)
class Flag:
    name: str  # the DaemonOptions field
    kind: Kind
    default: float | str | bool | None
    help: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> Any:
        return self.text(self.default)

    def text(self, value: Any) -> Any:
        """`value` as its flag is typed (`parse` reads it back to the same value)."""
        if self.kind in ("text", "switch"):
            return value
        if value is None:
            return "off"
        assert isinstance(value, float)
        if self.kind == "fraction":
            return f"{value * 100:g}%"
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if value >= size and (value / size).is_integer():
                return f"{int(value // size)}{unit}"
        # Exactly (`:g` wrote 2e+06s, which no flag reads, and rounded 1.23456789 s).
        return f"{int(value)}s" if value.is_integer() else f"{value!r}s"

    def argv(self, value: Any) -> list[str]:
        """The flag as `daemon start` passes it on to `daemon run` (nothing for an unset text or switch)."""
        if self.kind == "switch":
            return [self.option] if value else []
        if self.kind == "text" and not value:
            return []
        return [self.option, str(value)]

    def parse(self, text: Any) -> Any:
        if self.kind == "switch":
            return bool(text)
        if self.kind == "text":
            return str(text or "")
        if self.kind == "fraction":
            return _fraction(text, self.option)
        try:
            return parse_retention(text) if self.kind == "retention" else parse_duration(text)
        except DurationError as e:
            hint = " (or 0 / off to keep everything)" if self.kind == "retention" else ""
            raise OptionError(f"invalid {self.option}: {e}{hint}") from None


def flags() -> list[Flag]:
    return [
        Flag(f.name, f.metadata["kind"], f.default, f.metadata["help"])
        for f in fields(DaemonOptions)
        if "help" in f.metadata and f.default is not MISSING
    ]


def _fraction(text: str, option: str) -> float:
    try:
        fraction = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise OptionError(f"invalid {option} {text!r}: use e.g. 90% or 0.9") from None
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise OptionError(f"invalid {option} {text!r}: between 0 and 100%")
    return fraction


def _check_listen(text: str, public: bool) -> None:
    from fleetd.errors import InvalidArgument
    from fleetd.records.gateway import is_loopback, split_listen

    try:
        host, _ = split_listen(text)
    except InvalidArgument as e:
        raise OptionError(f"invalid --gateway: {e.message}") from None
    if not public and not is_loopback(host):
        raise OptionError(f"--gateway {text} is not a loopback address: add --gateway-public to listen there")
