"""`fleetd stats`: success, fallback and escalation rates, durations, tokens and cost per group."""

from __future__ import annotations

from typing import Any

import click

from fleetd.cli.common import client, render
from fleetd.cli.format import local_time, table
from fleetd.timefmt import format_duration


@click.command("stats")
@click.option("--since", help="Work started within this long, e.g. 24h, 30d (default 7d).")
@click.option("--by", help="backend, profile, model, loop, step or role; or two joined, e.g. loop,step "
              "(default backend).")  # fmt: skip
@click.option("--loop", "loop_name", help="Only this loop's runs.")
@click.option("--source", type=click.Choice(["loops", "gateway"]), default="loops", show_default=True,
              help="The loops' runs, or the gateway's calls (--by route, profile, model, key or api).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def stats(since: str | None, by: str | None, loop_name: str | None, source: str, as_json: bool) -> None:
    """Runs, attempts, success, fallback and escalation rates, attempt durations, tokens and cost per group.

    \b
    Finished work only. Attempt figures belong to the attempt's own group. A run counts twice, once
    in each of two groups: it starts in its first attempt's group (RUNS, FALLBACK, ESCALATION) and
    ends in its last work attempt's group (SUCCESS). So a run that fell back from backend A to B is
    a start in A and an end in B, and every column sums to the TOTAL row.
    \b
    FALLBACK: runs that needed more than their first candidate (chain step and profile; a retry on
    the same profile is not one). ESCALATION: runs that went past their first chain step.
    COST/SUCCESS: the group's whole cost, failed attempts included, per succeeded run.
    P50/P95: attempt durations, rounded to two significant digits.
    """
    query = {"since": since, "by": by, "loop": loop_name}
    if source == "gateway":
        query["source"] = source
    answer = client().call("GET", "/v1/stats", query=query)
    render(answer, as_json, _gateway_table if source == "gateway" else _stats_table)


def _gateway_table(answer: dict[str, Any]) -> str:
    by = answer["by"]

    def ms(value: int | None) -> str:
        return "-" if value is None else f"{value}ms"

    def cells(row: dict[str, Any]) -> list[str]:
        t = row["tokens"]
        return [
            str(row["calls"]), str(row["rejected"]), _percent(row["success_rate"]), _percent(row["fallback_rate"]),
            str(row["stream_errors"]), ms(row["p50_latency_ms"]), ms(row["p95_latency_ms"]), ms(row["p50_ttft_ms"]),
            _tokens(t["input"]), _tokens(t["output"]), _tokens(t["cache_read"]), _tokens(t["cache_write"]),
            f"${row['cost_usd']:.4f}",
        ]  # fmt: skip

    headers = [key.upper() for key in by]
    headers += ["CALLS", "REFUSED", "SUCCESS", "FALLBACK", "STREAM ERR", "P50", "P95", "TTFT P50",
                "IN", "OUT", "CACHE R", "CACHE W", "COST"]  # fmt: skip
    rows = [[_group_value(row["group"][key]) for key in by] + cells(row) for row in answer["groups"]]
    rows.append(["TOTAL"] + [""] * (len(by) - 1) + cells(answer["total"]))
    return f"gateway calls since {local_time(answer['since'])}\n" + table(headers, rows)


def _stats_table(answer: dict[str, Any]) -> str:
    by = answer["by"]

    def cells(row: dict[str, Any]) -> list[str]:
        t = row["tokens"]
        return [
            str(row["runs_started"]), str(row["attempts"]), _percent(row["success_rate"]),
            _percent(row["fallback_rate"]), _percent(row["escalation_rate"]),
            format_duration(row["p50_duration_s"]), format_duration(row["p95_duration_s"]),
            _tokens(t["input"]), _tokens(t["output"]), _tokens(t["cache_read"]), _tokens(t["cache_write"]),
            f"${row['cost_usd']:.4f}",
            "-" if row["cost_per_success_usd"] is None else f"${row['cost_per_success_usd']:.4f}",
        ]  # fmt: skip

    headers = [key.upper() for key in by]
    headers += ["RUNS", "ATTEMPTS", "SUCCESS", "FALLBACK", "ESCALATION", "P50", "P95",
                "IN", "OUT", "CACHE R", "CACHE W", "COST", "COST/SUCCESS"]  # fmt: skip
    rows = [[_group_value(row["group"][key]) for key in by] + cells(row) for row in answer["groups"]]
    rows.append(["TOTAL"] + [""] * (len(by) - 1) + cells(answer["total"]))
    scope = f" of loop {answer['loop']}" if answer["loop"] else ""
    return f"since {local_time(answer['since'])}{scope}\n" + table(headers, rows)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _tokens(n: int) -> str:
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def _group_value(value: Any) -> str:
    return "-" if value in (None, "") else str(value)
