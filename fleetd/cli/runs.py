"""`fleetd runs …`: run history, one run in full, what it said, its output."""

from __future__ import annotations

import sys
from typing import Any

import click

from fleetd.cli import complete
from fleetd.cli.client import CliError
from fleetd.cli.common import (
    checked_run_id,
    client,
    emit_json,
    fields_text,
    json_flag,
    laid_out_rows,
    render,
    seconds,
)
from fleetd.cli.complete import run_id_arg
from fleetd.cli.format import local_time, local_times, short, table
from fleetd.records.status import STATUSES
from fleetd.timefmt import format_duration


@click.group()
def runs() -> None:
    """Run history and output."""


@runs.command("list")
@click.option("--loop", "loop_name", shell_complete=complete.loops, help="Only this loop's runs.")
@click.option("--status", help=f"Only runs in this status: {', '.join(STATUSES)}.")
@click.option("--since", help="Only runs started within this long, e.g. 24h.")
@click.option("--limit", default=50, show_default=True, type=int, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def runs_list(loop_name: str | None, status: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Runs, newest first."""
    query = {"loop": loop_name, "status": status, "since": since, "limit": limit}
    if not as_json:
        render(client().call("GET", "/v1/runs", query=query), as_json, _list_text)
        return
    from urllib.parse import urlencode

    answer = client().request("GET", "/v1/runs?" + urlencode({k: v for k, v in query.items() if v is not None}))
    # The daemon's array as SQLite wrote it, laid out as --json lays out any answer, without decoding it.
    laid_out = laid_out_rows(answer.body) if answer.status < 400 else None
    if laid_out is None:
        emit_json(answer.decoded())
    else:
        click.echo(laid_out)


def _list_text(items: list[dict[str, Any]]) -> str:
    started = local_times([r["started_at"] for r in items])
    rows = [
        [
            str(r["id"]),
            r["loop"],
            r["trigger"],
            r["status"],
            "" if r["exit_code"] is None else str(r["exit_code"]),
            at,
            format_duration(r["duration_s"]),
            short(r["error"], 50),
        ]
        for r, at in zip(items, started, strict=True)
    ]
    return table(["ID", "LOOP", "TRIGGER", "STATUS", "EXIT", "STARTED", "TOOK", "ERROR"], rows)


@runs.command("prune")
@click.option("--older-than", help="Prune runs (their attempts and logs) and events older than this, e.g. 30d. "
              "Without options: the daemon's --retain.")  # fmt: skip
@click.option("--keep-per-loop", type=click.IntRange(min=1), help="Prune each loop's runs past its newest N.")
@json_flag
def runs_prune(older_than: str | None, keep_per_loop: int | None, as_json: bool) -> None:
    """Delete old history now: running runs and each loop's last run are always kept; stats keep their figures."""
    if older_than is not None:
        seconds(older_than, "--older-than")  # a typo is exit 2 before anything is deleted
    body = {k: v for k, v in (("older_than", older_than), ("keep_per_loop", keep_per_loop)) if v is not None}
    render(client(timeout=None).call("POST", "/v1/runs/prune", body), as_json, _pruned_text)


def _pruned_text(freed: dict[str, Any]) -> str:
    return (
        f"pruned {freed['runs']} run(s), {freed['attempts']} attempt(s), {freed['events']} event(s), "
        f"{freed['gateway_calls']} gateway call(s), {freed['log_files']} log file(s) ({_size(freed['log_bytes'])})"
    )


def _size(n: float) -> str:
    unit = "bytes"
    for bigger in ("KB", "MB", "GB"):
        if n < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"


@runs.command("show")
@run_id_arg
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def runs_show(run_id: str, as_json: bool) -> None:
    """One run in full."""
    render(client().call("GET", f"/v1/runs/{checked_run_id(run_id)}"), as_json, _show_text)


def _wait_field(r: dict[str, Any]) -> tuple[str, str | None]:
    """What a run waits for; for one the daemon's stop interrupted while it waited, what it waited for."""
    if not r.get("wait_until"):
        return ("waiting", None)
    until = local_time(r["wait_until"])
    return ("waiting", f"until {until}") if r["status"] == "waiting" else ("waited", f"for headroom until {until}")


def _show_text(r: dict[str, Any]) -> str:
    lines = [
        fields_text(
            [
                ("id", r["id"]),
                ("loop", r["loop"]),
                ("trigger", r["trigger"]),
                ("status", r["status"]),
                ("exit code", r["exit_code"]),
                ("error", r["error"]),
                ("scheduled", local_time(r["scheduled_at"])),
                ("started", local_time(r["started_at"])),
                ("finished", local_time(r["finished_at"])),
                ("took", format_duration(r["duration_s"]) if r["duration_s"] is not None else None),
                _wait_field(r),
                ("backend", r["backend"]),
                ("profile", r["profile"]),
                ("attempts", r["attempts"]),
                ("log", r["log_path"]),
            ]
        )
    ]
    for a in r.get("attempt_list", []):
        t = a["tokens"]
        cost = f" ${a['cost_usd']:.4f}" if a["cost_usd"] is not None else ""
        outcome = a["outcome"] or "running"  # none yet: the attempt is under way
        what = outcome if not a["error_class"] else f"{outcome} ({a['error_class']})"
        role = " (review)" if a.get("role") == "review" else ""
        lines.append(
            f"  attempt {a['number']}{role}: {a['backend']}/{a['profile'] or '-'} {a['model'] or ''} {what}, "
            f"tokens in {t['input']} out {t['output']} cache r/w {t['cache_read']}/{t['cache_write']}{cost}"
            + (f", resets {local_time(a['reset_at'])}" if a["reset_at"] else "")
        )
        if a["error"]:
            lines.append(f"    {short(a['error'], 150)}")
        if a.get("result_text"):
            lines.append(f"    said: {short(a['result_text'], 150)}")
        if a.get("verify_exit") is not None:
            took = format_duration(a["verify_ms"] / 1000) if a.get("verify_ms") is not None else "-"
            lines.append(f"    verify: exit {a['verify_exit']} after {took}")
        if a.get("accepted") is not None:
            verdict = "accepted" if a["accepted"] else f"rejected: {short(a.get('findings') or '', 150)}"
            lines.append(f"    gate: {verdict}")
    route = r.get("route") or []
    if route:
        lines.append("route:")
        for entry in route:
            who = "review " if entry.get("role") == "review" else ""
            lines.append(f"  {local_time(entry['at'])}  {who}{entry['kind']:<7}  {short(entry['detail'], 300)}")
    return "\n".join(lines)


@runs.command("result")
@run_id_arg
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def runs_result(run_id: str, as_json: bool) -> None:
    """The final message of the attempt the run accepted: what the agent said it did."""
    answer = client().call("GET", f"/v1/runs/{checked_run_id(run_id)}/result")
    render(answer, as_json, lambda r: r["result_text"])


@runs.command("logs")
@run_id_arg
@click.option("--follow", "-f", is_flag=True,
              help="Stream a live run's output until it ends; exit 0 if it succeeded, 1 otherwise.")  # fmt: skip
@click.option("--raw", is_flag=True, help="The CLI's own output as it printed it (e.g. its JSON), not rendered.")
def runs_logs(run_id: str, follow: bool, raw: bool) -> None:
    """Print a run's captured output: agents' messages and tool calls as text (a command's output as is).

    With --follow, a last line on stderr says how the run ended ("run 7 failed, exit 3"), and the exit
    status is the run's: 0 when it succeeded, 1 otherwise (and when the daemon goes away meanwhile)."""
    from fleetd.cli.client import StreamCut

    checked = checked_run_id(run_id)
    path = f"/v1/runs/{checked}/log?raw={int(raw)}" + ("&follow=1" if follow else "")
    out = sys.stdout.buffer
    printed = False
    try:
        for chunk in client(timeout=None).stream(path):
            out.write(chunk)
            out.flush()
            printed = printed or bool(chunk)
    except StreamCut:
        raise CliError(f"the fleetd daemon went away while following run {checked}") from None
    if not follow:
        if not printed:  # a skipped run ran nothing: say so, rather than look like a silent run
            run = client().call("GET", f"/v1/runs/{checked}")
            if run["status"] == "skipped":
                click.echo(f"run {checked} was skipped ({run['error']}): no output", err=True)
        return
    # The daemon ends a followed stream once the run's end is written: this reads its final status.
    try:
        run = client().call("GET", f"/v1/runs/{checked}")
    except CliError:
        raise CliError(f"the fleetd daemon went away while following run {checked}") from None
    click.echo(ending(run), err=True)
    raise SystemExit(0 if run["status"] == "succeeded" else 1)


def ending(run: dict[str, Any]) -> str:
    """One line on how a run ended: `run 7 failed, exit 3`, `run 7 succeeded`, `run 7 cancelled`."""
    status = run["status"]
    if status in ("running", "waiting"):
        return f"run {run['id']} is still {status} (its end is not recorded yet)"
    line = f"run {run['id']} {status.replace('_', ' ')}"
    if status == "failed":
        line += f", exit {run['exit_code']}" if run["exit_code"] is not None else f": {run['error']}"
    elif status in ("cancelled", "interrupted") and run["error"]:
        line += f" ({run['error']})"
    return line


@runs.command("stop")
@run_id_arg
@click.option(
    "--kill", is_flag=True, help="SIGKILL the run's processes at once (default: SIGTERM, the kill grace, SIGKILL)."
)
@json_flag
def runs_stop(run_id: str, kill: bool, as_json: bool) -> None:
    """Stop run RUN_ID and its whole process tree; it ends `cancelled`. Exit 1 if it had already ended."""
    # The daemon answers once the run's end is written (it bounds the wait by its kill grace).
    answer = client(timeout=None).call("POST", f"/v1/runs/{checked_run_id(run_id)}/stop", {"kill": kill})
    render(answer, as_json, stopped_text)


def stopped_text(run: dict[str, Any]) -> str:
    if run["status"] in ("running", "waiting"):
        return f"stopping run {run['id']}: its processes are still exiting (see `fleetd runs show {run['id']}`)"
    code = f", exit {run['exit_code']}" if run["exit_code"] is not None else ""
    return f"run {run['id']} of loop {run['loop']} {run['status']}{code}"
