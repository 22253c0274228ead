"""The daemon's settings, each declared once: its default, its help and how its flag is read.

`daemon run`, `daemon start` (which passes the flags on) and the docs all read `DaemonOptions`; the
CLI builds its flags from `flags()`. A leaf: the CLI imports it without the server stack.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from fleetd.timefmt import DurationError, parse_duration

Kind = Literal["duration", "fraction"]


class OptionError(ValueError):
    """A flag's value cannot be read; the message names the flag."""


def _option(default: float, help: str, kind: Kind = "duration") -> Any:
    return field(default=default, metadata={"help": help, "kind": kind})


@dataclass
class DaemonOptions:
    stop_grace: float = _option(30.0, "How long in-flight runs may finish on stop.")
    kill_grace: float = _option(5.0, "Between SIGTERM and SIGKILL of a run's processes.")
    heartbeat_interval: float = _option(30.0, "How often usage is re-read and profiles re-judged.")
    near_limit: float = _option(0.9, "A profile is near_limit from this share of any window.", "fraction")
    backoff_base: float = _option(2.0, "First retry delay after a transient failure (doubles, jittered, cap 60s).")
    circuit_cooldown: float = _option(60.0, "How long an open circuit stays open before one probe (doubles, cap 30m).")
    # Not a flag: a timer waking later than this counts as a missed fire.
    misfire_grace: float = 60.0

    @classmethod
    def from_flags(cls, texts: dict[str, str]) -> DaemonOptions:
        """`texts`: flag values as typed, by field name. Raises OptionError."""
        return cls(**{flag.name: flag.parse(texts[flag.name]) for flag in flags() if flag.name in texts})


@dataclass(frozen=True)
class Flag:
    name: str  # the DaemonOptions field
    kind: Kind
    default: float
    help: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> str:
        return f"{self.default * 100:g}%" if self.kind == "fraction" else f"{self.default:g}s"

    def parse(self, text: str) -> float:
        if self.kind == "fraction":
            return _fraction(text, self.option)
        try:
            return parse_duration(text)
        except DurationError as e:
            raise OptionError(f"invalid {self.option}: {e}") from None


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
