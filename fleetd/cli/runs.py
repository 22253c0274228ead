"""`fleetd runs …`: run history, one run in full, what it said, its output."""

from __future__ import annotations

import sys
from typing import Any

import click

from fleetd.cli import complete
from fleetd.cli.common import checked_run_id, client, fields_text, render
from fleetd.cli.complete import run_id_arg
from fleetd.cli.format import local_time, short, table
from fleetd.timefmt import format_duration


@click.group()
def runs() -> None:
    """Run history and output."""


@runs.command("list")
@click.option("--loop", "loop_name", shell_complete=complete.loops, help="Only this loop's runs.")
@click.option("--status", help="running, succeeded, failed, timed_out, interrupted or skipped.")
@click.option("--since", help="Only runs started within this long, e.g. 24h.")
@click.option("--limit", default=50, show_default=True, type=int, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def runs_list(loop_name: str | None, status: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Runs, newest first."""
    query = {"loop": loop_name, "status": status, "since": since, "limit": limit}
    render(client().call("GET", "/v1/runs", query=query), as_json, _list_text)


def _list_text(items: list[dict[str, Any]]) -> str:
    rows = [
        [
            str(r["id"]),
            r["loop"],
            r["trigger"],
            r["status"],
            "" if r["exit_code"] is None else str(r["exit_code"]),
            local_time(r["started_at"]),
            format_duration(r["duration_s"]),
            short(r["error"], 50),
        ]
        for r in items
    ]
    return table(["ID", "LOOP", "TRIGGER", "STATUS", "EXIT", "STARTED", "TOOK", "ERROR"], rows)


@runs.command("show")
@run_id_arg
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def runs_show(run_id: str, as_json: bool) -> None:
    """One run in full."""
    render(client().call("GET", f"/v1/runs/{checked_run_id(run_id)}"), as_json, _show_text)


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
        what = a["outcome"] if not a["error_class"] else f"{a['outcome']} ({a['error_class']})"
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
@click.option("--follow", "-f", is_flag=True, help="Stream a live run's output until it ends.")
@click.option("--raw", is_flag=True, help="The CLI's own output as it printed it (e.g. its JSON), not rendered.")
def runs_logs(run_id: str, follow: bool, raw: bool) -> None:
    """Print a run's captured output: agents' messages and tool calls as text (a command's output as is)."""
    path = f"/v1/runs/{checked_run_id(run_id)}/log?raw={int(raw)}" + ("&follow=1" if follow else "")
    out = sys.stdout.buffer
    for chunk in client(timeout=None).stream(path):
        out.write(chunk)
        out.flush()
