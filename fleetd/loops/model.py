"""The validation of user input into a loop (records.loop). Pure: no I/O but path checks."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from fleetd.edits import known_fields, split_changes
from fleetd.errors import InvalidArgument, shown
from fleetd.names import checked_name
from fleetd.records.loop import (
    DEFAULT_ON_EXHAUSTED,
    DEFAULT_OUTPUT_CAP,
    DEFAULT_TIERS,
    DEFAULT_VERIFY_TIMEOUT_S,
    MAX_OUTPUT_CAP,
    MIN_OUTPUT_CAP,
    Loop,
    Schedule,
    ScheduleKind,
)
from fleetd.timefmt import DurationError, parse_duration

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Linux's PATH_MAX; a longer path cannot be opened, so it is refused up front.
MAX_PATH_BYTES = 4096
RESERVED_ENV_PREFIX = "FLEETD_"
# Linux takes at most 128 KiB (MAX_ARG_STRLEN, with its NUL) in one argument or one environment entry; over
# it, exec fails with "Argument list too long". A command is one argument (`sh -c`), an agent's prompt one
# argument (at most "--message=…"), a command's prompt also the entry FLEETD_PROMPT=…, so the prompt gets the
# smallest of them.
MAX_ARG_BYTES = 128 * 1024 - 1
MAX_PROMPT_BYTES = MAX_ARG_BYTES - len("FLEETD_PROMPT=")
PATH_FIELDS = ("dir", "prompt_file")  # a loop's fields that name something on disk
# A command runs as `sh -c` after the line that moves it into its run's cgroup (cgroups.join_argv), in the
# same argument: room for that line, whatever the cgroup's path.
MAX_COMMAND_BYTES = MAX_ARG_BYTES - 1024
# All of a process's arguments and environment together fit in ARG_MAX (2 MiB on Linux, 1 MiB on macOS): a
# loop's own values may fill it but for 128 KiB, left to the daemon's environment, fleetd's variables and
# an agent CLI's own arguments.
MAX_LOOP_ARGS_BYTES = os.sysconf("SC_ARG_MAX") - 128 * 1024


def optional_text(body: dict[str, Any], key: str) -> str | None:
    """A string field, or None when absent. No NUL byte: every field ends up in a path, an argument
    vector or an environment variable, none of which can hold one."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be a string")
    if "\x00" in value:
        raise InvalidArgument(f"{key} contains a NUL byte")
    return value


def check_passable(what: str, size: int, limit: int = MAX_ARG_BYTES) -> None:
    """Refuse a value of `size` bytes that could never be passed to a run's process (see MAX_ARG_BYTES)."""
    if size > limit:
        raise InvalidArgument(
            f"{what} is {size:,} bytes; at most {limit:,} can be passed "
            "(Linux's limit on one argument or environment variable)"
        )


def read_prompt(loop: Loop) -> str | None:
    """The prompt of a run: the loop's, or its prompt file read now. Raises OSError, or InvalidArgument for
    a file grown past what can be passed since the loop was saved."""
    if not loop.prompt_file:
        return loop.prompt
    return prompt_text(loop.prompt_file)


def path_problems(loop: Loop) -> list[tuple[str, str]]:
    """Its --dir and --prompt-file as a run would find them now: (option, what is wrong) for each that a run cannot
    use (it was there when the loop was saved). Blocking: run it in a thread."""
    found = []
    if loop.workdir and not os.path.isdir(loop.workdir):
        found.append(("--dir", f"directory not found: {loop.workdir}"))
    if loop.prompt_file:
        try:
            prompt_text(loop.prompt_file)
        except OSError as e:
            found.append(("--prompt-file", unreadable_prompt(loop.prompt_file, e)))
        except InvalidArgument as e:
            found.append(("--prompt-file", str(e)))
    return found


def path_fix(name: str, option: str) -> str:
    """The command that fixes loop `name`'s unusable `option` (`path_problems`)."""
    return f"`fleetd loop edit {name} {option} {'DIR' if option == '--dir' else 'FILE'}`"


def unreadable_prompt(path: str, error: OSError) -> str:
    """Why a prompt file cannot be read, in the words `loop show`, `doctor` and the run's own log all use."""
    if isinstance(error, FileNotFoundError):
        return f"prompt file not found: {path}"
    return f"cannot read prompt file {path}: {error.strerror or error}"


def prompt_text(path: str) -> str:
    """A prompt file's text. Raises OSError, or InvalidArgument when it is too big to pass, holds a NUL byte (no
    argument can) or is not UTF-8 (it reached the command with U+FFFD in place of each bad byte, unsaid)."""
    what = f"prompt file {shown_path(path)}"
    # Not blocking: a FIFO put in its place would hold whoever reads it (the daemon's event loop) until written to.
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument(f"{what} is not a regular file")
        check_passable(what, info.st_size, MAX_PROMPT_BYTES)
        data = f.read(MAX_PROMPT_BYTES + 1)
    check_passable(what, len(data), MAX_PROMPT_BYTES)
    if b"\x00" in data:
        raise InvalidArgument(f"{what} contains a NUL byte at {data.index(0)}: a prompt is text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"{what} is not UTF-8 text (byte 0x{data[e.start]:02x} at {e.start})") from None


def _text_list(value: object, message: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "\x00" not in v for v in value):
        raise InvalidArgument(message)
    return value


def validate_path(value: object, what: str) -> str:
    """An absolute path that can be handed to the OS: a string, no NUL byte, not over-long.
    Whether it exists is the caller's question."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string")
    if "\x00" in value:
        raise InvalidArgument(f"{what} contains a NUL byte: {shown(value)}")
    if len(value.encode(errors="surrogateescape")) > MAX_PATH_BYTES:
        raise InvalidArgument(f"{what} is longer than {MAX_PATH_BYTES} bytes: {shown(value)}")
    if not Path(value).is_absolute():
        raise InvalidArgument(f"{what} must be an absolute path: {shown_path(value)}")
    return value


def shown_path(path: str) -> str:
    """A path in a message: as typed when it is plain, else quoted and cut short."""
    return path if path.isprintable() and len(path) <= 200 else shown(path)


def _path_is(value: str, what: str, test: Callable[[Path], bool]) -> bool:
    try:
        return test(Path(value))
    except OSError as e:  # e.g. a component over NAME_MAX, or a directory we may not search
        raise InvalidArgument(f"cannot use {what} {shown_path(value)}: {e.strerror}") from None


def validate_name(name: object) -> str:
    return checked_name("loop", name)


def parse_schedule_input(body: dict[str, Any], default_tz: str) -> Schedule:
    """Exactly one of cron / every / at."""
    given = [k for k in ("cron", "every", "at") if body.get(k) not in (None, "")]
    if len(given) != 1:
        raise InvalidArgument("give exactly one schedule: --cron EXPR, --every DURATION or --at TIME")
    kind: ScheduleKind = given[0]  # type: ignore[assignment]
    expr = optional_text(body, kind) or ""
    tz = optional_text(body, "timezone") or default_tz
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
                raise InvalidArgument(f"invalid --env {shown(item)}: use KEY=VALUE")
            key, _, value = item.partition("=")
            if any(key == given for given, _ in pairs):  # the last one silently won
                raise InvalidArgument(f"--env {shown(key)} given twice: give each variable once")
            pairs.append((key, value))
    else:
        raise InvalidArgument("env must be a list of KEY=VALUE")
    env: dict[str, str] = {}
    for key, value in pairs:
        if not isinstance(key, str) or not ENV_KEY_RE.fullmatch(key):
            raise InvalidArgument(f"invalid environment variable name {shown(key)}")
        if key.startswith(RESERVED_ENV_PREFIX):
            raise InvalidArgument(f"environment variable {key} is reserved for fleetd")
        if not isinstance(value, str):
            raise InvalidArgument(f"the value of environment variable {key} must be a string")
        if "\x00" in value:
            raise InvalidArgument(f"the value of environment variable {key} contains a NUL byte")
        env[key] = value
    return env


def validate_loop_input(body: dict[str, Any], default_tz: str, *, on_disk: Collection[str] = PATH_FIELDS) -> Loop:
    """Turn an API request body into a Loop or raise InvalidArgument naming the bad field.

    `on_disk`: the path fields looked for on disk. An edit names only those it changes: a directory or prompt
    file gone since the loop was saved is `fleetd doctor`'s to say (and each run's), and must not refuse an
    unrelated edit (a pause, a timeout) of a loop whose runs fail.
    The schedule expression itself is checked by `schedule.build_trigger`, which needs APScheduler.
    """
    known_fields(body, ("name", *EDITABLE), "loop")
    name = validate_name(body.get("name"))
    schedule = parse_schedule_input(body, default_tz)
    backend = optional_text(body, "backend") or "command"

    prompt, prompt_file = optional_text(body, "prompt"), body.get("prompt_file")
    if prompt is not None and prompt_file is not None:
        raise InvalidArgument("give either --prompt or --prompt-file, not both")
    if prompt_file is not None and "prompt_file" not in on_disk:
        prompt_file = validate_path(prompt_file, "prompt file")
        try:
            prompt_size = len(prompt_text(prompt_file).encode())
        except (OSError, InvalidArgument):
            prompt_size = 0  # the run says what is wrong with it
    elif prompt_file is not None:
        prompt_file = validate_path(prompt_file, "prompt file")
        if not _path_is(prompt_file, "prompt file", Path.is_file):
            raise InvalidArgument(f"prompt file not found: {shown_path(prompt_file)}")
        try:
            prompt_size = len(prompt_text(prompt_file).encode())
        except OSError as e:
            raise InvalidArgument(f"cannot use prompt file {shown_path(prompt_file)}: {e.strerror}") from None
    else:
        prompt_size = len((prompt or "").encode())
        check_passable("--prompt", prompt_size, MAX_PROMPT_BYTES)

    workdir = body.get("dir")
    if workdir is not None:
        workdir = validate_path(workdir, "directory")
        if "dir" in on_disk and not _path_is(workdir, "directory", Path.is_dir):
            raise InvalidArgument(f"directory not found: {shown_path(workdir)}")

    timeout_s = None
    timeout = body.get("timeout")
    if timeout not in (None, ""):
        if not isinstance(timeout, str | int | float) or isinstance(timeout, bool):
            raise InvalidArgument("invalid --timeout: give a duration, e.g. 30m")
        try:
            timeout_s = parse_duration(str(timeout))
        except DurationError as e:
            raise InvalidArgument(f"invalid --timeout: {e}") from None

    catch_up = body.get("catch_up") or "once"
    if catch_up not in ("once", "skip"):
        raise InvalidArgument(f"invalid --catch-up {shown(catch_up)}: use once or skip")

    output_cap = body.get("output_cap", DEFAULT_OUTPUT_CAP)
    if (
        not isinstance(output_cap, int)
        or isinstance(output_cap, bool)
        or not MIN_OUTPUT_CAP <= output_cap <= MAX_OUTPUT_CAP
    ):
        raise InvalidArgument(
            f"invalid --output-cap {shown(output_cap)}: a whole number of bytes "
            f"from {MIN_OUTPUT_CAP} (1k) to {MAX_OUTPUT_CAP} (1024G)"
        )

    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidArgument("enabled must be true or false")

    profiles = body.get("profiles") or []
    if isinstance(profiles, str):
        profiles = [p.strip() for p in profiles.split(",") if p.strip()]
    profiles = _text_list(profiles, "--profile must be a comma-separated list of profile names")
    if len(set(profiles)) != len(profiles):
        raise InvalidArgument("--profile lists a profile twice")
    agent_args = _text_list(body.get("agent_args") or [], "--agent-arg values must be strings without NUL bytes")
    for arg in agent_args:
        check_passable("--agent-arg", len(arg.encode()))
    command = optional_text(body, "command")
    if command is not None:
        check_passable("--command", len(command.encode()), MAX_COMMAND_BYTES)
    env = parse_env(body.get("env"))
    entries = [len(f"{key}={value}".encode()) + 1 for key, value in env.items()]
    for key, size in zip(env, entries, strict=True):
        check_passable(f"--env {key}", size - 1)
    total = sum(entries) + sum(len(a.encode()) + 1 for a in agent_args) + len((command or "").encode()) + prompt_size
    if total > MAX_LOOP_ARGS_BYTES:
        raise InvalidArgument(
            f"--env, --command, --agent-arg and the prompt together are {total:,} bytes; at most "
            f"{MAX_LOOP_ARGS_BYTES:,} can be passed to one process (the system's ARG_MAX, less what fleetd adds)"
        )

    return Loop(
        name=name,
        schedule=schedule,
        backend=backend,
        command=command,
        prompt=prompt,
        prompt_file=prompt_file,
        workdir=workdir,
        env=env,
        timeout_s=timeout_s,
        catch_up=catch_up,
        output_cap=output_cap,
        enabled=enabled,
        profiles=profiles,
        model=optional_text(body, "model") or None,
        agent_args=agent_args,
    )


# -- editing ---------------------------------------------------------------------------------------
# An edit is the stored loop turned back into `loop add` input, the changes laid over it, and the whole
# validated again by the same path as `loop add`: one set of rules, and nothing saved unless all pass.

SCHEDULE_KEYS = ("cron", "every", "at")
# Input a loop can be edited without: unset by `clear` (back to what `loop add` assumes when it is not given).
CLEARABLE = (
    "dir", "command", "prompt", "prompt_file", "env", "timeout", "profiles", "model", "agent_args", "chain",
    "tiers", "max_cost", "max_tokens", "daily_cost", "on_exhausted", "verify", "verify_timeout", "review", "repair",
    "attempt_timeout", "timezone",
)  # fmt: skip
EDITABLE = (*SCHEDULE_KEYS, "backend", "catch_up", "output_cap", "enabled", *CLEARABLE)
# A change to one of these replaces the stored values of the others, unless the change gives them too:
# a new schedule replaces the old one, a prompt replaces a prompt file, and a chain replaces the one-step
# form (backend, pool, model) or is replaced by it.
REPLACES: dict[str, tuple[str, ...]] = {
    **{key: tuple(k for k in SCHEDULE_KEYS if k != key) for key in SCHEDULE_KEYS},
    "prompt": ("prompt_file",),
    "prompt_file": ("prompt",),
    "chain": ("backend", "profiles", "model"),
    "backend": ("chain", "profiles", "model"),
    "profiles": ("chain",),
}


def loop_input(loop: Loop) -> dict[str, Any]:
    """The `loop add` body that defines `loop`: validating it gives the same definition back."""
    body: dict[str, Any] = {
        "name": loop.name,
        loop.schedule.kind: loop.schedule.expr,
        "timezone": loop.schedule.timezone,
        "backend": loop.backend,
        "command": loop.command,
        "prompt": loop.prompt,
        "prompt_file": loop.prompt_file,
        "dir": loop.workdir,
        "env": dict(loop.env),
        "timeout": _seconds(loop.timeout_s),
        "catch_up": loop.catch_up,
        "output_cap": loop.output_cap,
        "enabled": loop.enabled,
        "profiles": list(loop.profiles),
        "model": loop.model,
        "agent_args": list(loop.agent_args),
        "chain": ",".join(step.describe() for step in loop.chain) or None,
        "max_cost": loop.max_cost,
        "max_tokens": loop.max_tokens,
        "daily_cost": loop.daily_cost,
        "verify": loop.verify,
        "verify_timeout": _seconds(loop.verify_timeout_s)
        if loop.verify_timeout_s != DEFAULT_VERIFY_TIMEOUT_S
        else None,
        "review": loop.review.describe() if loop.review else None,
        # Left out at their defaults: `loop add` refuses routing options on a loop without an agent backend.
        "tiers": list(loop.tiers) if loop.tiers != DEFAULT_TIERS else None,
        "on_exhausted": loop.on_exhausted if loop.on_exhausted != DEFAULT_ON_EXHAUSTED else None,
        "repair": loop.repair or None,
        "attempt_timeout": _seconds(loop.attempt_timeout_s),
    }
    return {key: value for key, value in body.items() if value is not None}


def _seconds(value: float | None) -> str | None:
    # Plain decimals: `str(1e-05)` would not read back as a duration.
    return None if value is None else format(value, "f").rstrip("0").rstrip(".")


def edited_input(loop: Loop, changes: dict[str, Any]) -> dict[str, Any]:
    """The `loop add` body of `loop` with `changes` (a PATCH body: fields to set, and `clear`, the
    fields to unset) laid over it. Raises InvalidArgument for a field that cannot be edited."""
    given, clear = split_changes(changes, what="loop", name=loop.name, editable=EDITABLE, clearable=CLEARABLE)
    body = loop_input(loop)
    for key in given:
        for replaced in REPLACES.get(key, ()):
            if replaced not in given:
                body.pop(replaced, None)
    body.update(given)
    for key in clear:
        body.pop(key, None)
    if "verify" in clear and "verify_timeout" not in given:
        body.pop("verify_timeout", None)  # it times the verify command, gone with it
    return body
