"""`fleetd loop add` and `fleetd loop edit`: one list of options for both (see addedit.py).

Registered lazily by the `loop` group (loop.py): building these ~30 options is most of loading `loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from fleetd.cli import complete
from fleetd.cli.addedit import Option, edit_changes, shared_options
from fleetd.cli.client import CliError, segment
from fleetd.cli.common import absolute, client, json_flag, render, warn
from fleetd.cli.complete import loop_name
from fleetd.cli.format import local_time


def _parse_size(text: str) -> int:
    """Bytes from `512k`, `1.5MB`, ... (1024-based), refused with the text as typed: exactly (Decimal, where a float
    made 0.3k 307.2 and saved 307), whole bytes only, in the range the daemon keeps."""
    from decimal import Decimal, InvalidOperation  # only when the option is given: ~2 ms of every CLI call

    from fleetd.records.loop import MAX_OUTPUT_CAP, MIN_OUTPUT_CAP

    units = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}
    raw = text.strip().lower()
    number = raw.rstrip("kmgb")
    unit = raw[len(number) :]
    try:
        size = Decimal(number) * units[unit]
    except (InvalidOperation, KeyError):
        size = None
    if size is None or not size.is_finite():
        raise CliError(f"invalid --output-cap {text!r} (use e.g. 512k, 10MB)", exit_code=2)
    if size != size.to_integral_value():
        raise CliError(f"invalid --output-cap {text!r}: not a whole number of bytes ({size})", exit_code=2)
    if not MIN_OUTPUT_CAP <= size <= MAX_OUTPUT_CAP:
        raise CliError(f"invalid --output-cap {text!r}: from 1k to 1024G", exit_code=2)
    return int(size)


# fmt: off
LOOP_OPTIONS = (
    Option("--cron", "cron", 'Cron expression, e.g. "0 2 * * *".'),
    Option("--every", "every", "Interval, e.g. 10m, 1h30m."),
    Option("--at", "at", "One-shot time, ISO 8601, e.g. 2026-12-01T09:00."),
    Option("--tz", "timezone", "Time zone of the schedule (default: the daemon's local zone).", clearable=True),
    Option("--dir", "dir", "Working directory.", clearable=True, extra={"type": click.Path(file_okay=False)}),
    Option("--backend", "backend", "command, claude_code, codex, gemini, aider or openai_compat.", "command",
           extra={"shell_complete": complete.backends}),
    Option("--profile", "profiles", "Profile pool, comma-separated, tried in order (default: all of the backend).",
           clearable=True, extra={"shell_complete": complete.profiles}),
    Option("--model", "model", "Model for the agent (default: the profile's).", clearable=True),
    Option("--chain", "chain",
               "Escalation chain, tried left to right: BACKEND[@MODEL] or PROFILE[@MODEL], comma-separated.",
               clearable=True),
    Option("--tiers", "tiers",
               "Tiers a backend step may use (default local,subscription; add metered to allow keys).",
               clearable=True),
    Option("--max-cost", "max_cost", "USD a run may spend, every attempt included.", clearable=True),
    Option("--max-tokens", "max_tokens", "Tokens a run may use, e.g. 2M.", clearable=True),
    Option("--daily-cost", "daily_cost", "USD the loop may spend per rolling 24 h; a fire over it is skipped.",
               clearable=True),
    Option("--on-exhausted", "on_exhausted",
               "When a step has no headroom: go up the chain (default) or wait for its reset.",
               clearable=True, extra={"type": click.Choice(["escalate", "wait"])}),
    Option("--verify", "verify",
               "Acceptance gate: a shell command run in --dir after each successful attempt; exit 0 accepts.",
               clearable=True),
    Option("--verify-timeout", "verify_timeout", "How long --verify may take (default 10m).", clearable=True),
    Option("--review", "review",
               "A cheap reviewer agent that must accept the work too: BACKEND[@MODEL] or PROFILE[@MODEL].",
               clearable=True),
    Option("--repair", "repair", "Rejected work gets this many repair rounds on the same worker (default 0).",
               clearable=True, extra={"type": int}),
    Option("--agent-arg", "agent_args", "Extra argument passed to the agent CLI (repeatable).",
               clearable=True, extra={"multiple": True}),
    Option("--command", "command", "Shell command (command backend).", clearable=True),
    Option("--prompt", "prompt", "Prompt text (stdin and FLEETD_PROMPT for the command backend).", clearable=True),
    Option("--prompt-file", "prompt_file", "File read for the prompt at each run.", clearable=True,
               extra={"type": click.Path(dir_okay=False)}),
    Option("--env", "env", "Environment variable (repeatable).", clearable=True,
               extra={"multiple": True, "metavar": "K=V"}),
    Option("--timeout", "timeout", "Kill the run after this long, e.g. 30m.", clearable=True),
    Option("--attempt-timeout", "attempt_timeout",
               "End one attempt after this long as a transient failure (a provider that hangs): the chain moves on.",
               clearable=True),
    Option("--catch-up", "catch_up", "A fire missed while the daemon was down: run once, or skip.", "once",
               extra={"type": click.Choice(["once", "skip"])}),
    Option("--output-cap", "output_cap", "Keep at most this much output (tail).", "10MB"),
    Option("--paused", "paused", "Paused: not firing until `loop resume` (or `edit --enabled`).",
           extra={"is_flag": True}),
    Option("--enabled", "enabled", "Enabled: firing on its schedule (what `add` does without --paused).",
           extra={"is_flag": True}),
)
# fmt: on
_BY_KEY = {option.key: option for option in LOOP_OPTIONS}


def _loop_body(fields: dict[str, Any]) -> dict[str, Any]:
    """The API body of the options given (a repeatable option given no value is not given)."""
    body: dict[str, Any] = {}
    paused, enabled = fields.pop("paused", None), fields.pop("enabled", None)
    if paused and enabled:
        raise CliError("give --paused or --enabled, not both", exit_code=2)
    if paused or enabled:
        body["enabled"] = bool(enabled)
    for key, value in fields.items():
        if value is None or value == ():
            continue
        if key in ("dir", "prompt_file"):
            body[key] = absolute(value)
        elif key == "output_cap":
            body[key] = _parse_size(value)
        elif _BY_KEY[key].extra.get("multiple"):
            body[key] = list(value)
        else:
            body[key] = value
    return body


@click.command("add")
@loop_name
@shared_options(LOOP_OPTIONS, edit=False)
@json_flag
def loop_add(name: str, as_json: bool, **fields: Any) -> None:
    """Add a loop NAME with exactly one of --cron, --every, --at."""
    created = client().call("POST", "/v1/loops", {**_loop_body(fields), "name": name})
    warn(created)
    render(created, as_json, _saved_text("added"))


def _saved_text(verb: str) -> Callable[[dict[str, Any]], str]:
    def text(lp: dict[str, Any]) -> str:
        if lp["next_fire_at"]:
            when = f"next run {local_time(lp['next_fire_at'])}"
        else:
            when = "paused (no next run)" if not lp["enabled"] else "no next run"
        return f"{verb} loop {lp['name']}; {when}"

    return text


@click.command("edit")
@loop_name
@shared_options(LOOP_OPTIONS, edit=True)
@json_flag
def loop_edit(name: str, as_json: bool, **fields: Any) -> None:
    """Change loop NAME in place: the options given replace what it has (--env and --agent-arg replace the
    whole list), --clear-NAME unsets one. A new schedule replaces the old one, --prompt and --prompt-file replace
    each other, and --chain replaces --backend/--profile/--model (and they replace it). Checked like `loop add`,
    nothing saved on error; takes effect at the next fire (a run in flight finishes as it started)."""
    given, clear = edit_changes(LOOP_OPTIONS, fields)
    edited = client().call("PATCH", f"/v1/loops/{segment(name)}", {**_loop_body(given), "clear": clear})
    warn(edited)
    render(edited, as_json, _saved_text("edited"))
