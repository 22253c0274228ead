"""`fleetd loop …`: look at loops, fire, pause, resume, stop and remove them (`add` and `edit`, with
their many options, are in loopdef.py, loaded only when used)."""

from __future__ import annotations

from typing import Any

import click

from fleetd.cli.client import CliError, segment
from fleetd.cli.common import LazyGroup, client, fields_text, json_flag, render, show
from fleetd.cli.complete import loop_name

# The text renderers import the formatters (fleetd.cli.format, fleetd.timefmt) themselves: `loop list
# --json`, the command scripts poll, prints the daemon's answer and needs none of them.


@click.group(cls=LazyGroup, lazy={"add": "fleetd.cli.loopdef:loop_add", "edit": "fleetd.cli.loopdef:loop_edit"})
def loop() -> None:
    """Define and control loops."""


@loop.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def loop_list(as_json: bool) -> None:
    """All loops."""
    show("/v1/loops", as_json, _list_text)


def _list_text(loops: list[dict[str, Any]]) -> str:
    from fleetd.cli.format import relative_time, schedule_text, table

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
    """What the loop's run is doing: a run that only waits for headroom is not `running`."""
    from fleetd.cli.format import local_time

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
    from fleetd.cli.format import schedule_text, short
    from fleetd.records.money import usd
    from fleetd.timefmt import format_duration

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
                ("max cost", f"{usd(lp['max_cost'])} per run" if lp["max_cost"] else None),
                ("max tokens", f"{lp['max_tokens']} per run" if lp["max_tokens"] else None),
                ("daily cost", f"{usd(lp['daily_cost'])} per 24 h" if lp["daily_cost"] else None),
                ("on exhausted", lp["on_exhausted"] if lp["routed"] else None),
                (
                    "verify",
                    f"{lp['verify']} (timeout {format_duration(lp['verify_timeout_s'])})" if lp["verify"] else None,
                ),
                ("review", lp["review"]),
                ("repair", f"{lp['repair']} round(s)" if lp["repair"] else None),
                ("agent args", " ".join(lp["agent_args"]) or None),
                ("timeout", format_duration(lp["timeout_s"]) if lp["timeout_s"] else "none"),
                ("attempt timeout", format_duration(lp["attempt_timeout_s"]) if lp.get("attempt_timeout_s") else None),
                ("output cap", _size(lp["output_cap_bytes"])),  # shown only in --json before
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
    from fleetd.cli.format import local_time, relative_time

    return f"{local_time(iso)} ({relative_time(iso)})" if iso else "-"


def _running_text(lp: dict[str, Any]) -> str:
    from fleetd.cli.format import local_time

    if not lp["running_run_id"]:
        return "no"
    waits = f", waiting until {local_time(lp['waiting_until'])}" if lp.get("waiting_until") else ""
    return f"run {lp['running_run_id']}{waits}"


def _why_not_text(not_firing: dict[str, Any] | None) -> str | None:
    """`loop show`: why the loop did not fire (or will not), with the times in the local zone."""
    from fleetd.cli.format import local_time

    if not not_firing:
        return None
    text = f"{not_firing['message']} [{not_firing['reason']}]"
    if not_firing.get("since"):
        text += f"; since {local_time(not_firing['since'])}"
    if not_firing.get("until"):
        text += f"; until {local_time(not_firing['until'])}"
    return text


def _run_brief(run: dict[str, Any] | None) -> str:
    from fleetd.cli.format import local_time

    if not run:
        return "-"
    return f"{run['id']} {run['status']} at {local_time(run['started_at'])}"


def _loop_action(action: str, verb: str, doc: str) -> Any:
    @loop_name
    def command(name: str) -> None:
        client().call("POST", f"/v1/loops/{segment(name)}/{action}")
        click.echo(f"{verb} loop {name}")

    command.__doc__ = doc
    return command


loop.command("pause")(_loop_action("pause", "paused", "Pause loop NAME: no fires until it is resumed."))
loop.command("resume")(_loop_action("resume", "resumed", "Resume loop NAME: it fires on its schedule again."))


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
    """Fire loop NAME now. Exit 1 when the run is skipped (its last run still runs, a budget is spent)."""
    run = client().call("POST", f"/v1/loops/{segment(name)}/run")
    if run["status"] == "skipped" and not as_json:
        raise CliError(f"run {run['id']} skipped: {run['error']}")
    render(run, as_json, lambda r: f"started run {r['id']} of loop {name}; follow: fleetd runs logs {r['id']} -f")
    if run["status"] == "skipped":  # the same exit status with --json: a script checks one thing
        raise SystemExit(1)


def _size(n: int) -> str:
    """Bytes as `--output-cap` takes them: 10MB, 512k."""
    for unit, size in (("G", 1024**3), ("MB", 1024**2), ("k", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n} bytes"
