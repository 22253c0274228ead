"""`fleetd loop …`: define loops, look at them, fire, pause, resume and remove them."""

from __future__ import annotations

from typing import Any

import click

from fleetd.cli import complete
from fleetd.cli.client import CliError, segment
from fleetd.cli.common import (
    Option,
    absolute,
    client,
    edit_changes,
    fields_text,
    json_flag,
    render,
    shared_options,
)
from fleetd.cli.complete import loop_name
from fleetd.cli.format import local_time, relative_time, schedule_text, short, table
from fleetd.timefmt import format_duration


@click.group()
def loop() -> None:
    """Define and control loops."""


def _parse_size(text: str) -> int:
    units = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}
    raw = text.strip().lower()
    number = raw.rstrip("kmgb")
    unit = raw[len(number) :]
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError, OverflowError):  # OverflowError: inf; nan is a ValueError
        raise CliError(f"invalid --output-cap {text!r} (use e.g. 512k, 10MB)", exit_code=2) from None


# fmt: off
LOOP_OPTIONS = (
    Option("--cron", "cron", 'Cron expression, e.g. "0 2 * * *".'),
    Option("--every", "every", "Interval, e.g. 10m, 1h30m."),
    Option("--at", "at", "One-shot time, ISO 8601, e.g. 2026-12-01T09:00."),
    Option("--tz", "timezone", "Time zone of the schedule (default: the daemon's local zone)."),
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
    Option("--catch-up", "catch_up", "A fire missed while the daemon was down: run once, or skip.", "once",
               extra={"type": click.Choice(["once", "skip"])}),
    Option("--output-cap", "output_cap", "Keep at most this much output (tail).", "10MB"),
    Option("--paused/--enabled", "paused", "Paused (not firing) or enabled.", False),
)
# fmt: on
_BY_KEY = {option.key: option for option in LOOP_OPTIONS}


def _loop_body(fields: dict[str, Any]) -> dict[str, Any]:
    """The API body of the options given (a repeatable option given no value is not given)."""
    body: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None or value == ():
            continue
        if key == "paused":
            body["enabled"] = not value
        elif key in ("dir", "prompt_file"):
            body[key] = absolute(value)
        elif key == "output_cap":
            body[key] = _parse_size(value)
        elif _BY_KEY[key].extra.get("multiple"):
            body[key] = list(value)
        else:
            body[key] = value
    return body


@loop.command("add")
@loop_name
@shared_options(LOOP_OPTIONS, edit=False)
@json_flag
def loop_add(name: str, as_json: bool, **fields: Any) -> None:
    """Add a loop NAME with exactly one of --cron, --every, --at."""
    created = client().call("POST", "/v1/loops", {**_loop_body(fields), "name": name})
    warn(created)
    render(created, as_json, _added_text)


def _added_text(lp: dict[str, Any]) -> str:
    when = f"next run {local_time(lp['next_fire_at'])}" if lp["next_fire_at"] else "paused (no next run)"
    return f"added loop {lp['name']}; {when}"


@loop.command("edit")
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
    render(edited, as_json, lambda lp: f"edited loop {lp['name']}; next run {local_time(lp['next_fire_at'])}")


def warn(answer: dict[str, Any]) -> None:
    """What the daemon saved but warns about (a CLI not on its PATH), on stderr, with --json too."""
    for warning in answer.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)


@loop.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def loop_list(as_json: bool) -> None:
    """All loops."""
    render(client().call("GET", "/v1/loops"), as_json, _list_text)


def _list_text(loops: list[dict[str, Any]]) -> str:
    rows = [
        [
            lp["name"],
            schedule_text(lp["schedule"]),
            lp["backend"],
            "yes" if lp["enabled"] else "paused",
            relative_time(lp["next_fire_at"]),
            relative_time(lp["last_fire_at"]),
            _state_text(lp),
        ]
        for lp in loops
    ]
    return table(["NAME", "SCHEDULE", "BACKEND", "ENABLED", "NEXT", "LAST FIRE", "LAST RUN"], rows)


def _state_text(lp: dict[str, Any]) -> str:
    """What the loop's run is doing: a run that only waits for a usage reset is not `running`."""
    if lp.get("waiting_until"):
        return f"waiting until {local_time(lp['waiting_until'])}"
    if lp["running_run_id"]:
        return "running"
    return str((lp["last_run"] or {}).get("status", "-"))


@loop.command("show")
@loop_name
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def loop_show(name: str, as_json: bool) -> None:
    """One loop in full."""
    render(client().call("GET", f"/v1/loops/{segment(name)}"), as_json, _show_text)


def _show_text(lp: dict[str, Any]) -> str:
    lines = [
        fields_text(
            [
                ("name", lp["name"]),
                ("schedule", f"{schedule_text(lp['schedule'])} ({lp['schedule']['timezone']})"),
                ("backend", lp["backend"]),
                ("command", lp["command"]),
                ("prompt", short(lp["prompt"], 200) if lp["prompt"] else None),
                ("prompt file", lp["prompt_file"]),
                ("dir", lp["dir"]),
                ("env", " ".join(f"{k}={v}" for k, v in lp["env"].items()) or None),
                (
                    "profiles",
                    ",".join(lp["profiles"]) or (ALL_OF_BACKEND if lp["routed"] and not lp["chain"] else None),
                ),
                ("model", lp["model"]),
                ("chain", ",".join(lp["chain"]) or None),
                ("tiers", ",".join(lp["tiers"]) if lp["routed"] else None),
                ("max cost", f"${lp['max_cost']:.2f} per run" if lp["max_cost"] else None),
                ("max tokens", f"{lp['max_tokens']} per run" if lp["max_tokens"] else None),
                ("daily cost", f"${lp['daily_cost']:.2f} per 24 h" if lp["daily_cost"] else None),
                ("on exhausted", lp["on_exhausted"] if lp["routed"] else None),
                (
                    "verify",
                    f"{lp['verify']} (timeout {format_duration(lp['verify_timeout_s'])})" if lp["verify"] else None,
                ),
                ("review", lp["review"]),
                ("repair", f"{lp['repair']} round(s)" if lp["repair"] else None),
                ("agent args", " ".join(lp["agent_args"]) or None),
                ("timeout", format_duration(lp["timeout_s"]) if lp["timeout_s"] else "none"),
                ("catch-up", lp["catch_up"]),
                ("enabled", "yes" if lp["enabled"] else "paused"),
                ("next fire", _moment(lp["next_fire_at"])),
                ("last fire", _moment(lp["last_fire_at"])),
                ("last run", _run_brief(lp["last_run"])),
                ("running", _running_text(lp)),
                ("why not", _why_not_text(lp.get("not_firing"))),
            ]
        )
    ]
    for step in lp.get("resolved") or []:
        lines.append(f"step {step['step']}: {step['step_text']}")
        lines += [f"    {name}" for name in step["candidates"]]
        lines += [f"    {out['profile']}: passed over: {out['why']}" for out in step["passed"]]
        if not step["candidates"] and not step["passed"]:
            lines.append("    (no profile of this backend)")
    return "\n".join(lines)


ALL_OF_BACKEND = "(all of the backend)"


def _moment(iso: str | None) -> str:
    return f"{local_time(iso)} ({relative_time(iso)})" if iso else "-"


def _running_text(lp: dict[str, Any]) -> str:
    if not lp["running_run_id"]:
        return "no"
    waits = f", waiting until {local_time(lp['waiting_until'])}" if lp.get("waiting_until") else ""
    return f"run {lp['running_run_id']}{waits}"


def _why_not_text(not_firing: dict[str, Any] | None) -> str | None:
    """`loop show`: why the loop did not fire (or will not), with the times in the local zone."""
    if not not_firing:
        return None
    text = f"{not_firing['message']} [{not_firing['reason']}]"
    if not_firing.get("since"):
        text += f"; since {local_time(not_firing['since'])}"
    if not_firing.get("until"):
        text += f"; until {local_time(not_firing['until'])}"
    return text


def _run_brief(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    return f"{run['id']} {run['status']} at {local_time(run['started_at'])}"


def _loop_action(action: str, verb: str) -> Any:
    @loop_name
    def command(name: str) -> None:
        client().call("POST", f"/v1/loops/{segment(name)}/{action}")
        click.echo(f"{verb} loop {name}")

    command.__doc__ = f"{verb.capitalize()} loop NAME."
    return command


loop.command("pause")(_loop_action("pause", "paused"))
loop.command("resume")(_loop_action("resume", "resumed"))


@loop.command("rm")
@loop_name
@click.option("--force", is_flag=True, help="Stop its running run (it ends `cancelled`), then remove it.")
def loop_rm(name: str, force: bool) -> None:
    """Remove loop NAME (its run history stays). A loop with a running run is refused without --force."""
    path = f"/v1/loops/{segment(name)}" + ("?force=1" if force else "")
    answer = client(timeout=None if force else 30.0).call("DELETE", path)
    stopped = f" (stopped its run {answer['stopped_run']})" if answer.get("stopped_run") is not None else ""
    click.echo(f"removed loop {name}{stopped}")


@loop.command("stop")
@loop_name
@click.option(
    "--kill", is_flag=True, help="SIGKILL the run's processes at once (default: SIGTERM, the kill grace, SIGKILL)."
)
@json_flag
def loop_stop(name: str, kill: bool, as_json: bool) -> None:
    """Stop loop NAME's running run (it ends `cancelled`); the loop keeps its schedule. Exit 1 if none runs."""
    from fleetd.cli.runs import stopped_text

    answer = client(timeout=None).call("POST", f"/v1/loops/{segment(name)}/stop", {"kill": kill})
    render(answer, as_json, stopped_text)


@loop.command("run")
@loop_name
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def loop_run(name: str, as_json: bool) -> None:
    """Fire loop NAME now."""
    run = client().call("POST", f"/v1/loops/{segment(name)}/run")
    if run["status"] == "skipped" and not as_json:
        raise CliError(f"run {run['id']} skipped: {run['error']}")
    render(run, as_json, lambda r: f"started run {r['id']} of loop {name}; follow: fleetd runs logs {r['id']} -f")
