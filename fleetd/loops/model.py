"""The loop contract and the validation of user input into it. Pure: no I/O but path checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fleetd.errors import InvalidArgument
from fleetd.routing.chain import DEFAULT_TIERS, ChainStep
from fleetd.timefmt import DurationError, parse_duration

ScheduleKind = Literal["cron", "every", "at"]
CatchUp = Literal["once", "skip"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_OUTPUT_CAP = 10 * 1024 * 1024
RESERVED_ENV_PREFIX = "FLEETD_"


@dataclass(frozen=True)
class Schedule:
    kind: ScheduleKind
    expr: str  # as the user gave it: cron fields, a duration, or an ISO time
    timezone: str

    def describe(self) -> str:
        return f"{self.kind} {self.expr}"


@dataclass
class Loop:
    name: str
    schedule: Schedule
    backend: str
    command: str | None = None
    prompt: str | None = None
    prompt_file: str | None = None
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    catch_up: CatchUp = "once"
    output_cap: int = DEFAULT_OUTPUT_CAP
    enabled: bool = True
    profiles: list[str] = field(default_factory=list)  # the pool; empty = every enabled profile of the backend
    model: str | None = None
    agent_args: list[str] = field(default_factory=list)
    # Routing (agent backends): an escalation chain (empty: one step, `backend` over `profiles` with
    # `model`), the tiers a backend step may expand to, and what a run / a day may spend.
    chain: list[ChainStep] = field(default_factory=list)
    tiers: tuple[str, ...] = DEFAULT_TIERS
    max_cost: float | None = None  # USD per run
    max_tokens: int | None = None  # per run
    daily_cost: float | None = None  # USD per rolling 24 h, for the loop
    on_exhausted: str = "escalate"  # or "wait" for the step's reset
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_fire_at: datetime | None = None
    next_fire_at: datetime | None = None


def _str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be a string")
    return value


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid loop name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def parse_schedule_input(body: dict[str, Any], default_tz: str) -> Schedule:
    """Exactly one of cron / every / at."""
    given = [k for k in ("cron", "every", "at") if body.get(k) not in (None, "")]
    if len(given) != 1:
        raise InvalidArgument("give exactly one schedule: --cron EXPR, --every DURATION or --at TIME")
    kind: ScheduleKind = given[0]  # type: ignore[assignment]
    expr = _str(body, kind) or ""
    tz = _str(body, "timezone") or default_tz
    return Schedule(kind=kind, expr=expr.strip(), timezone=tz)


def parse_env(items: object) -> dict[str, str]:
    if items is None:
        return {}
    if isinstance(items, dict):
        pairs = list(items.items())
    elif isinstance(items, list):
        pairs = []
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise InvalidArgument(f"invalid --env {item!r}: use KEY=VALUE")
            key, _, value = item.partition("=")
            pairs.append((key, value))
    else:
        raise InvalidArgument("env must be a list of KEY=VALUE")
    env: dict[str, str] = {}
    for key, value in pairs:
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise InvalidArgument(f"invalid environment variable name {key!r}")
        if key.startswith(RESERVED_ENV_PREFIX):
            raise InvalidArgument(f"environment variable {key} is reserved for fleetd")
        env[key] = str(value)
    return env


def validate_loop_input(body: dict[str, Any], default_tz: str) -> Loop:
    """Turn an API request body into a Loop or raise InvalidArgument naming the bad field.

    The schedule expression itself is checked by `schedule.build_trigger`, which needs APScheduler.
    """
    name = validate_name(body.get("name"))
    schedule = parse_schedule_input(body, default_tz)
    backend = _str(body, "backend") or "command"

    prompt, prompt_file = _str(body, "prompt"), _str(body, "prompt_file")
    if prompt is not None and prompt_file is not None:
        raise InvalidArgument("give either --prompt or --prompt-file, not both")
    if prompt_file is not None:
        p = Path(prompt_file)
        if not p.is_absolute():
            raise InvalidArgument(f"prompt file must be an absolute path: {prompt_file}")
        if not p.is_file():
            raise InvalidArgument(f"prompt file not found: {prompt_file}")

    workdir = _str(body, "dir")
    if workdir is not None:
        if not Path(workdir).is_absolute():
            raise InvalidArgument(f"directory must be an absolute path: {workdir}")
        if not Path(workdir).is_dir():
            raise InvalidArgument(f"directory not found: {workdir}")

    timeout_s = None
    if body.get("timeout") not in (None, ""):
        try:
            timeout_s = parse_duration(str(body["timeout"]))
        except DurationError as e:
            raise InvalidArgument(f"invalid --timeout: {e}") from None

    catch_up = body.get("catch_up") or "once"
    if catch_up not in ("once", "skip"):
        raise InvalidArgument(f"invalid --catch-up {catch_up!r}: use once or skip")

    output_cap = body.get("output_cap", DEFAULT_OUTPUT_CAP)
    if not isinstance(output_cap, int) or isinstance(output_cap, bool) or output_cap < 1024:
        raise InvalidArgument("output cap must be an integer number of bytes, at least 1024")

    profiles = body.get("profiles") or []
    if isinstance(profiles, str):
        profiles = [p.strip() for p in profiles.split(",") if p.strip()]
    if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
        raise InvalidArgument("--profile must be a comma-separated list of profile names")
    if len(set(profiles)) != len(profiles):
        raise InvalidArgument("--profile lists a profile twice")
    agent_args = body.get("agent_args") or []
    if not isinstance(agent_args, list) or not all(isinstance(a, str) for a in agent_args):
        raise InvalidArgument("--agent-arg values must be strings")

    return Loop(
        name=name,
        schedule=schedule,
        backend=backend,
        command=_str(body, "command"),
        prompt=prompt,
        prompt_file=prompt_file,
        workdir=workdir,
        env=parse_env(body.get("env")),
        timeout_s=timeout_s,
        catch_up=catch_up,
        output_cap=output_cap,
        enabled=body.get("enabled", True) is not False,
        profiles=profiles,
        model=_str(body, "model") or None,
        agent_args=agent_args,
    )
