"""`fleetd loop …`: define loops, look at them, fire, pause, resume and remove them."""

from __future__ import annotations

from typing import Any

import click

from fleetd.cli import complete
from fleetd.cli.client import CliError, segment
from fleetd.cli.common import absolute, client, fields_text, render
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


@loop.command("add")
@loop_name
@click.option("--cron", help='Cron expression, e.g. "0 2 * * *".')
@click.option("--every", help="Interval, e.g. 10m, 1h30m.")
@click.option("--at", help="One-shot time, ISO 8601, e.g. 2026-12-01T09:00.")
@click.option("--tz", "timezone", help="Time zone of the schedule (default: the daemon's local zone).")
@click.option("--dir", "workdir", type=click.Path(file_okay=False), help="Working directory.")
@click.option("--backend", default="command", show_default=True, shell_complete=complete.backends,
              help="command, claude_code, codex, gemini, aider or openai_compat.")  # fmt: skip
@click.option(
    "--profile",
    "profiles",
    shell_complete=complete.profiles,
    help="Profile pool, comma-separated, tried in order (default: all of the backend).",
)
@click.option("--model", help="Model for the agent (default: the profile's).")
@click.option(
    "--chain", help="Escalation chain, tried left to right: BACKEND[@MODEL] or PROFILE[@MODEL], comma-separated."
)
@click.option("--tiers", help="Tiers a backend step may use (default local,subscription; add metered to allow keys).")
@click.option("--max-cost", help="USD a run may spend, every attempt included.")
@click.option("--max-tokens", help="Tokens a run may use, e.g. 2M.")
@click.option("--daily-cost", help="USD the loop may spend per rolling 24 h; a fire over it is skipped.")
@click.option("--on-exhausted", type=click.Choice(["escalate", "wait"]),
              help="When a step has no headroom: go up the chain (default) or wait for its reset.")  # fmt: skip
@click.option(
    "--verify", help="Acceptance gate: a shell command run in --dir after each successful attempt; exit 0 accepts."
)
@click.option("--verify-timeout", help="How long --verify may take (default 10m).")
@click.option(
    "--review", help="A cheap reviewer agent that must accept the work too: BACKEND[@MODEL] or PROFILE[@MODEL]."
)
@click.option("--repair", type=int, help="Rejected work gets this many repair rounds on the same worker (default 0).")
@click.option("--agent-arg", "agent_args", multiple=True, help="Extra argument passed to the agent CLI (repeatable).")
@click.option("--command", "command", help="Shell command (command backend).")
@click.option("--prompt", help="Prompt text (stdin and FLEETD_PROMPT for the command backend).")
@click.option("--prompt-file", type=click.Path(dir_okay=False), help="File read for the prompt at each run.")
@click.option("--env", "env", multiple=True, metavar="K=V", help="Environment variable (repeatable).")
@click.option("--timeout", help="Kill the run after this long, e.g. 30m.")
@click.option("--catch-up", type=click.Choice(["once", "skip"]), default="once", show_default=True,
              help="A fire missed while the daemon was down: run once, or skip.")  # fmt: skip
@click.option("--output-cap", default="10MB", show_default=True, help="Keep at most this much output (tail).")
@click.option("--paused", is_flag=True, help="Add it paused.")
@click.option("--json", "as_json", is_flag=True, help="Print the loop as JSON.")
def loop_add(
    name: str,
    workdir: str | None,
    prompt_file: str | None,
    env: tuple[str, ...],
    agent_args: tuple[str, ...],
    output_cap: str,
    paused: bool,
    as_json: bool,
    **fields: Any,
) -> None:
    """Add a loop NAME with exactly one of --cron, --every, --at."""
    body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    body.update(name=name, env=list(env), agent_args=list(agent_args), output_cap=_parse_size(output_cap),
                enabled=not paused)  # fmt: skip
    if workdir is not None:
        body["dir"] = absolute(workdir)
    if prompt_file is not None:
        body["prompt_file"] = absolute(prompt_file)
    created = client().call("POST", "/v1/loops", body)
    render(created, as_json, lambda lp: f"added loop {lp['name']}; next run {local_time(lp['next_fire_at'])}")


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
            "running" if lp["running_run_id"] else (lp["last_run"] or {}).get("status", "-"),
        ]
        for lp in loops
    ]
    return table(["NAME", "SCHEDULE", "BACKEND", "ENABLED", "NEXT", "LAST FIRE", "LAST RUN"], rows)


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
                ("next fire", local_time(lp["next_fire_at"])),
                ("last fire", local_time(lp["last_fire_at"])),
                ("last run", _run_brief(lp["last_run"])),
                ("running", f"run {lp['running_run_id']}" if lp["running_run_id"] else "no"),
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
def loop_rm(name: str) -> None:
    """Remove loop NAME (its run history stays)."""
    client().call("DELETE", f"/v1/loops/{segment(name)}")
    click.echo(f"removed loop {name}")


@loop.command("run")
@loop_name
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def loop_run(name: str, as_json: bool) -> None:
    """Fire loop NAME now."""
    run = client().call("POST", f"/v1/loops/{segment(name)}/run")
    if run["status"] == "skipped" and not as_json:
        raise CliError(f"run {run['id']} skipped: {run['error']}")
    render(run, as_json, lambda r: f"started run {r['id']} of loop {name}; follow: fleetd runs logs {r['id']} -f")
