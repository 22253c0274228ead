"""`fleetd stats` against a real daemon: runs of the command backend that succeed and fail, the JSON
contract, the table, and bad input (one line, exit 2)."""

from __future__ import annotations

import pytest

from tests.harness import Daemon, wait_until

ROW_KEYS = {"group", "runs_started", "runs_ended", "attempts", "succeeded", "fallbacks", "escalations",
            "success_rate", "fallback_rate", "escalation_rate", "p50_duration_s", "p95_duration_s", "tokens",
            "cost_usd", "cost_per_success_usd"}  # fmt: skip


def _run(daemon: Daemon, loop: str, times: int) -> None:
    for _ in range(times):
        run = daemon.json("loop", "run", loop)
        daemon.wait_run(run["id"])


def test_stats_json_contract_and_figures(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "st-ok", "--every", "1h", "--paused", "--command", "true")
    daemon.cli("loop", "add", "st-bad", "--every", "1h", "--paused", "--command", "sleep 0.3; exit 3")
    _run(daemon, "st-ok", 3)
    _run(daemon, "st-bad", 1)
    answer = wait_until(
        lambda: (s := daemon.json("stats", "--by", "loop,role", "--since", "1h"))["total"]["runs_ended"] >= 4 and s,
        what="four finished runs in stats",
    )
    assert set(answer) == {"since", "until", "by", "loop", "groups", "total"}
    assert answer["by"] == ["loop", "role"] and answer["loop"] is None
    groups = {(g["group"]["loop"], g["group"]["role"]): g for g in answer["groups"]}
    ok, bad = groups[("st-ok", "work")], groups[("st-bad", "work")]
    for row in (ok, bad, answer["total"]):
        assert set(row) == ROW_KEYS
        assert set(row["tokens"]) == {"input", "output", "cache_read", "cache_write"}
    assert (ok["runs_started"], ok["runs_ended"], ok["attempts"], ok["succeeded"]) == (3, 3, 3, 3)
    assert (ok["success_rate"], ok["fallback_rate"], ok["escalation_rate"]) == (1.0, 0.0, 0.0)
    assert (bad["runs_ended"], bad["succeeded"], bad["success_rate"]) == (1, 0, 0.0)
    assert bad["cost_per_success_usd"] is None  # nothing succeeded: no price per success
    assert 0.3 <= bad["p50_duration_s"] == bad["p95_duration_s"] < 10
    assert ok["p50_duration_s"] <= ok["p95_duration_s"] < bad["p50_duration_s"]

    only = daemon.json("stats", "--loop", "st-bad", "--since", "1h")
    assert only["loop"] == "st-bad" and only["by"] == ["backend"]
    assert [g["group"] for g in only["groups"]] == [{"backend": "command"}]
    assert only["total"]["runs_started"] == 1 and only["total"]["success_rate"] == 0.0

    text = daemon.cli("stats", "--loop", "st-ok", "--since", "1h").stdout.splitlines()
    assert text[1].split()[:6] == ["BACKEND", "RUNS", "ATTEMPTS", "SUCCESS", "FALLBACK", "ESCALATION"]
    assert text[2].split()[:4] == ["command", "3", "3", "100.0%"] and "$0.0000" in text[2]
    assert text[-1].startswith("TOTAL")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--by", "nope"], "unknown --by 'nope' (one of: backend, profile, model, loop, step, role"),
        (["--by", "loop,loop"], "twice"),
        (["--since", "-1"], "invalid --since"),
        (["--since", "soon"], "invalid --since"),
        (["--since", "100000000000d"], "at most 100 years"),
        (["--loop", "../x"], "invalid loop name"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(daemon: Daemon, args: list[str], fragment: str) -> None:
    result = daemon.cli("stats", *args, check=False)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleetd: ") and fragment in lines[0], result.stderr
    assert result.stdout == ""
