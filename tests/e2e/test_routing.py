"""Routing as policy through a real daemon with the stand-in CLIs: transient failures are retried and
fail over, circuit breakers open, half-open and close, metered profiles stay out under the default
tiers, a missing CLI is skipped, budgets skip fires, and every decision is in the run's route."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import STANDIN_BIN, Daemon, capture_folder, standin_env, wait_until

CIRCUIT_COOLDOWN = 4.0  # long enough that the second run surely finds it open, even on a loaded machine


@pytest.fixture(scope="module")
def routed() -> Iterator[Daemon]:
    capture_folder("cc_529")
    root = Path(tempfile.mkdtemp(prefix="flr-", dir="/tmp"))
    standin_dir, bin_dir = root / "standin", root / "bin"
    standin_dir.mkdir()
    bin_dir.mkdir()
    # Claude Code and Gemini CLI are "installed"; Codex is not.
    for cli in ("claude", "gemini"):
        (bin_dir / cli).write_text(f'#!/bin/sh\nexec {STANDIN_BIN / cli} "$@"\n')
        (bin_dir / cli).chmod(0o755)
    d = Daemon(root / "home", "--kill-grace", "0.5s", "--stop-grace", "1s", "--backoff-base", "0.05s",
               "--circuit-cooldown", f"{CIRCUIT_COOLDOWN}s", "--heartbeat-interval", "1s")  # fmt: skip
    d.env.update(standin_env(standin_dir, bin_dir))
    d.start()
    d.standin_dir = standin_dir  # type: ignore[attr-defined]
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def scenario(d: Daemon, profile: str, name: str) -> None:
    (d.standin_dir / f"{profile}.scenario").write_text(name)  # type: ignore[attr-defined]


def called(d: Daemon, profile: str) -> int:
    path = d.standin_dir / "calls.jsonl"  # type: ignore[attr-defined]
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(json.loads(line)["env"].get("FLEETD_PROFILE") == profile for line in lines)


def run(d: Daemon, loop: str) -> dict:
    return d.wait_run(d.json("loop", "run", loop)["id"])


def events(d: Daemon) -> list[dict]:
    """`events --json` prints one object per line."""
    return [json.loads(line) for line in d.cli("events", "--json", "--limit", "500").stdout.splitlines() if line]


def circuit(d: Daemon, profile: str) -> dict:
    return d.json("profile", "show", profile)["circuit"]


def test_a_529_is_retried_then_fails_over_and_the_circuit_opens_half_opens_and_closes(routed: Daemon) -> None:
    d = routed
    d.cli("profile", "add", "over-a", "--backend", "claude_code")
    d.cli("profile", "add", "over-b", "--backend", "claude_code")
    scenario(d, "over-a", "529")
    scenario(d, "over-b", "ok")
    d.cli("loop", "add", "flaky", "--every", "1h", "--paused", "--backend", "claude_code",
          "--profile", "over-a,over-b", "--prompt", "fix it")  # fmt: skip

    first = run(d, "flaky")
    assert first["status"] == "succeeded" and first["profile"] == "over-b"
    tried = [(a["profile"], a["error_class"]) for a in first["attempt_list"]]
    assert tried == [("over-a", "transient")] * 3 + [("over-b", None)]  # 1 try + 2 retries, then B
    kinds = [e["kind"] for e in first["route"] if e["kind"] != "skip"]
    assert kinds == ["try", "outcome", "retry", "try", "outcome", "retry", "try", "outcome", "next", "try", "outcome"]
    text = d.cli("runs", "show", str(first["id"])).stdout
    assert "route:" in text and "transient: retry over-a in" in text
    assert circuit(d, "over-a")["state"] == "open"  # three transient failures in a row
    assert "circuit.opened" in [e["type"] for e in events(d)]

    second = run(d, "flaky")
    assert second["status"] == "succeeded" and [a["profile"] for a in second["attempt_list"]] == ["over-b"]
    assert any(e["kind"] == "skip" and "circuit open until" in e["detail"] for e in second["route"])
    assert "circuit open" in d.cli("usage").stdout  # the narrow table says so in STATE
    assert "open until" in d.cli("usage", "--wide").stdout

    scenario(d, "over-a", "ok")
    wait_until(lambda: circuit(d, "over-a")["state"] == "half_open", timeout=20, what="the cooldown to pass")
    third = run(d, "flaky")
    assert [a["profile"] for a in third["attempt_list"]] == ["over-a"]  # the one probe
    assert circuit(d, "over-a")["state"] == "closed"
    types = [e["type"] for e in events(d)]
    assert "circuit.half_open" in types and "circuit.closed" in types


def test_reset_circuit_closes_it_by_hand(routed: Daemon) -> None:
    d = routed
    d.cli("profile", "add", "over-c", "--backend", "claude_code")
    scenario(d, "over-c", "529")
    d.cli("loop", "add", "flaky-c", "--every", "1h", "--paused", "--backend", "claude_code",
          "--profile", "over-c", "--prompt", "x")  # fmt: skip
    failed = run(d, "flaky-c")
    assert failed["status"] == "failed" and failed["error"].startswith("no usable candidate")
    assert circuit(d, "over-c")["state"] == "open"
    # Pinned with its circuit open, it was "pinned" and the next choice ended the pin at once.
    refused = d.cli("profile", "switch", "over-c", check=False)
    assert refused.returncode == 1 and "over-c's circuit is open until " in refused.stderr, refused.stderr
    d.cli("profile", "reset-circuit", "over-c")
    assert circuit(d, "over-c")["state"] == "closed"


def test_a_metered_profile_is_never_touched_under_the_default_tiers(routed: Daemon) -> None:
    d = routed
    d.cli("profile", "add", "gem-sub", "--backend", "gemini")
    d.cli("profile", "add", "gem-key", "--backend", "gemini", "--api-key-stdin", input="gem-key-0123456789\n")
    scenario(d, "gem-sub", "hang")
    scenario(d, "gem-key", "ok")
    d.cli("loop", "add", "gem", "--every", "1h", "--paused", "--backend", "gemini", "--prompt", "x",
          "--timeout", "2s")  # fmt: skip
    shown = d.json("loop", "show", "gem")
    (step,) = shown["resolved"]
    assert step["candidates"] == ["gem-sub"]
    assert step["passed"] == [{"profile": "gem-key", "why": "tier metered not allowed (--tiers local,subscription)"}]
    result = run(d, "gem")
    assert result["status"] == "timed_out"
    assert called(d, "gem-key") == 0
    assert "gem-key: passed over: tier metered not allowed" in d.cli("loop", "show", "gem").stdout


def test_a_chain_whose_first_cli_is_not_installed_runs_on_the_next_step(routed: Daemon) -> None:
    d = routed
    d.cli("profile", "add", "cx-none", "--backend", "codex")
    d.cli("profile", "add", "cc-next", "--backend", "claude_code")
    scenario(d, "cc-next", "ok")
    d.cli("loop", "add", "chained", "--every", "1h", "--paused", "--chain", "codex,cc-next@sonnet", "--prompt", "x")
    shown = d.json("loop", "show", "chained")
    assert shown["chain"] == ["codex", "cc-next@sonnet"] and shown["backend"] == "codex"
    result = run(d, "chained")
    assert result["status"] == "succeeded"
    (attempt,) = result["attempt_list"]
    assert (attempt["profile"], attempt["step"]) == ("cc-next", 2)
    calls = [json.loads(line) for line in (d.standin_dir / "calls.jsonl").read_text().splitlines()]  # type: ignore[attr-defined]
    argv = next(c["argv"] for c in calls if c["env"].get("FLEETD_RUN_ID") == str(result["id"]))
    assert argv[argv.index("--model") + 1] == "sonnet"  # the step's model
    assert any("cx-none: unavailable: codex not found on the daemon's PATH" in e["detail"] for e in result["route"])
    assert any(e["type"] == "candidate.unavailable" and e["profile"] == "cx-none" for e in events(d))


def test_the_run_budget_is_passed_down_and_the_daily_cost_skips_fires(routed: Daemon) -> None:
    d = routed
    d.cli("profile", "add", "cc-paid", "--backend", "claude_code")
    scenario(d, "cc-paid", "ok")  # the capture reports $0.0009104 for its run
    d.cli("loop", "add", "thrifty", "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "cc-paid",
          "--prompt", "x", "--max-cost", "0.50", "--daily-cost", "0.0005")  # fmt: skip
    first = run(d, "thrifty")
    assert first["status"] == "succeeded"
    calls = [json.loads(line) for line in (d.standin_dir / "calls.jsonl").read_text().splitlines()]  # type: ignore[attr-defined]
    argv = next(c["argv"] for c in calls if c["env"].get("FLEETD_RUN_ID") == str(first["id"]))
    assert argv[argv.index("--max-budget-usd") + 1] == "0.5000"
    answer = d.cli("loop", "run", "thrifty", "--json", check=False)
    assert answer.returncode == 1, answer  # a skipped run is exit 1, with --json too
    second = json.loads(answer.stdout)
    # Under a cent, not "$0.00 of its $0.00":
    assert second["status"] == "skipped" and second["error"].startswith(
        "budget: the loop spent $0.00091 of its $0.0005 "
    )
    assert any(e["type"] == "budget.exceeded" for e in events(d))


def test_a_fire_whose_run_would_pass_the_loops_daily_cost_is_skipped(routed: Daemon) -> None:
    # A loop with `--daily-cost 1` ran twice at $0.82 each ("spent $1.64 of its $1.00"): the cap was checked against
    # what was spent only, never against what the next run would add.
    d = routed
    d.cli("profile", "add", "cc-pricey", "--backend", "claude_code")
    scenario(d, "cc-pricey", "ok")  # $0.0009104 a run
    d.cli("loop", "add", "twice", "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "cc-pricey",
          "--prompt", "x", "--daily-cost", "0.0015")  # fmt: skip
    assert run(d, "twice")["status"] == "succeeded"
    second = json.loads(d.cli("loop", "run", "twice", "--json", check=False).stdout)
    assert second["status"] == "skipped", second
    assert second["error"] == ("budget: the loop spent $0.00091 of its $0.0015 daily cost in the last 24 h, and a "
                               "run of it costs about $0.00091")  # fmt: skip
    d.cli("loop", "resume", "twice")  # (its next fire is an hour away)
    try:
        shown = d.json("loop", "show", "twice")["not_firing"]
        assert shown["reason"] == "over_daily_cost" and shown["until"] is not None, shown
        assert "not so now" not in shown["message"], shown
    finally:
        d.cli("loop", "pause", "twice")


def test_bad_routing_input_is_refused_with_one_line(routed: Daemon) -> None:
    d = routed
    cases = [
        (["--chain", "nobody"], "unknown backend or profile 'nobody' in --chain"),
        (["--chain", "claude_code", "--profile", "cc-next"], "give either --chain or --profile"),
        (["--backend", "claude_code", "--tiers", "gold"], "invalid tier 'gold'"),
        (["--backend", "claude_code", "--max-cost", "nan"], "invalid --max-cost"),
        (["--backend", "claude_code", "--max-tokens", "lots"], "invalid --max-tokens"),
        # Saved as 1 token (and 1.5 as a budget no attempt could stay under):
        (["--backend", "claude_code", "--max-tokens", "1.5"], "invalid --max-tokens '1.5': a whole number of tokens"),
        (["--command", "true", "--max-cost", "1"], "--max-cost needs an agent backend"),
        # Accepted before: a step twice, two models, and --review's error naming --chain.
        (["--chain", "claude_code,claude_code"], "--chain lists the step 'claude_code' twice"),
        (["--chain", "codex@m1@m2"], "invalid --chain step 'codex@m1@m2': one @MODEL per step"),
        (["--backend", "claude_code", "--review", "nosuch"], "unknown backend or profile 'nosuch' in --review"),
    ]
    for args, message in cases:
        result = d.cli("loop", "add", "bad", "--every", "1h", "--prompt", "x", *args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "bad" not in [lp["name"] for lp in d.json("loop", "list")]


def test_attempts_fleetd_cuts_short_do_not_open_the_circuit(routed: Daemon) -> None:
    """A --timeout kill says nothing about the provider: three in a row leave the breaker closed."""
    d = routed
    d.cli("profile", "add", "slow", "--backend", "claude_code")
    scenario(d, "slow", "hang")
    d.cli("loop", "add", "slowpoke", "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "slow",
          "--prompt", "x", "--timeout", "1s")  # fmt: skip
    for _ in range(3):
        assert run(d, "slowpoke")["status"] == "timed_out"
    assert circuit(d, "slow")["state"] == "closed" and circuit(d, "slow")["failures"] == 0


def test_a_profiles_request_limit_counts_the_attempt_under_way(routed: Daemon) -> None:
    # Runs that start together each saw the limit as it stood before any of them ended: a `1d=30req` profile took
    # 31. With its one request under way, the next run goes on to the chain's next step.
    d = routed
    d.cli("profile", "add", "one-req", "--backend", "claude_code", "--limit", "1d=1req")
    d.cli("profile", "add", "spare", "--backend", "claude_code")
    scenario(d, "one-req", "held")
    scenario(d, "spare", "ok")
    for name in ("held-a", "held-b"):
        d.cli("loop", "add", name, "--every", "1h", "--paused", "--backend", "claude_code",
              "--chain", "one-req,spare", "--prompt", "fix it")  # fmt: skip
    first = d.json("loop", "run", "held-a")["id"]
    wait_until(lambda: called(d, "one-req") == 1, what="the first run's attempt under way")
    second = run(d, "held-b")
    assert second["status"] == "succeeded" and second["profile"] == "spare"
    assert any("one-req: no room for another attempt: 1d=1req: 0 used, 1 attempt(s) under way" in e["detail"]
               for e in second["route"]), second["route"]  # fmt: skip
    under_way = d.cli("runs", "show", str(first)).stdout
    assert "attempt 1: claude_code/one-req  running," in under_way, under_way  # it said "None"
    (d.standin_dir / "one-req.release").write_text("")  # type: ignore[attr-defined]
    assert d.wait_run(first)["profile"] == "one-req"
    assert called(d, "one-req") == 1


def test_a_run_waiting_for_room_goes_on_when_the_limit_is_raised(routed: Daemon) -> None:
    # It slept until the reset it was told (a day away) though the edit gave it room at once.
    d = routed
    d.cli("profile", "add", "raised", "--backend", "claude_code", "--limit", "1d=1req")
    scenario(d, "raised", "ok")
    d.cli("loop", "add", "patient-r", "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "raised",
          "--prompt", "x", "--on-exhausted", "wait")  # fmt: skip
    assert run(d, "patient-r")["status"] == "succeeded"  # its one request of the day
    second = d.json("loop", "run", "patient-r")["id"]
    wait_until(lambda: d.json("runs", "show", str(second))["status"] == "waiting", what="the run to wait for room")
    # While it waits, `runs show` says until when and why (its route was shown only once the run had ended).
    shown = d.json("runs", "show", str(second))
    assert [e["kind"] for e in shown["route"]][-1] == "wait" and shown["wait_until"]
    assert "raised: exhausted until" in " ".join(e["detail"] for e in shown["route"])
    text = d.cli("runs", "show", str(second)).stdout
    assert "waiting    until " in text and "step 1 has no headroom (--on-exhausted wait): waiting until" in text
    waiting = [e for e in events(d) if e["type"] == "run.waiting" and e["data"]["run_id"] == second]
    assert waiting and not re.search(r"\d{4}-\d\d-\d\dT", waiting[-1]["message"]), waiting  # local, not ISO
    d.cli("profile", "edit", "raised", "--limit", "1d=2req")
    assert d.wait_run(second, timeout=15)["status"] == "succeeded"


def test_a_run_waiting_out_a_rate_limit_goes_on_when_the_profile_is_enabled_by_hand(routed: Daemon) -> None:
    # `profile enable` made `usage` say available, and a new run used the profile, while the run already waiting for
    # its reset went on waiting (the README: enabling a profile makes waiting runs look again at once).
    d = routed
    d.cli("profile", "add", "limited", "--backend", "claude_code")
    scenario(d, "limited", "usage_limit_text +3600")  # no window the backend reports full
    d.cli("loop", "add", "patient-e", "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "limited",
          "--prompt", "x", "--on-exhausted", "wait")  # fmt: skip
    waiting = d.json("loop", "run", "patient-e")["id"]
    wait_until(lambda: d.json("runs", "show", str(waiting))["status"] == "waiting", what="the run to wait")
    scenario(d, "limited", "ok")
    d.cli("profile", "enable", "limited")
    assert d.wait_run(waiting, timeout=15)["status"] == "succeeded"


def test_a_provider_that_hangs_is_cut_at_the_attempt_timeout_and_the_chain_moves_on(routed: Daemon) -> None:
    # A provider that answered nothing at step 1 held the run until its --timeout: the next profile was never tried,
    # and without a --timeout the run (and the loop's later fires) would wait for ever.
    d = routed
    for name in ("hangs", "answers"):
        d.cli("profile", "add", name, "--backend", "claude_code")
    scenario(d, "hangs", "held")  # never answers (until a release that does not come)
    scenario(d, "answers", "ok")
    d.cli("loop", "add", "cut", "--every", "1h", "--paused", "--chain", "hangs,answers", "--prompt", "x",
          "--attempt-timeout", "1s", "--timeout", "1m")  # fmt: skip
    shown = d.cli("loop", "show", "cut").stdout
    assert re.search(r"attempt timeout\s+1s\n", shown) and re.search(r"output cap\s+10MB\n", shown), shown
    result = run(d, "cut")
    assert result["status"] == "succeeded" and result["profile"] == "answers", result
    tried = [(a["profile"], a["error_class"], a["error"]) for a in result["attempt_list"]]
    cut = ("hangs", "transient", "transient: attempt timed out after 1s (--attempt-timeout)")
    assert tried == [cut] * 3 + [("answers", None, None)], tried  # a try and its 2 retries, then the next profile
    assert "attempt timed out after 1s (--attempt-timeout): killing its process tree" in d.cli(
        "runs", "logs", str(result["id"])).stdout  # fmt: skip
    # Only a routed loop has attempts to cut: a command loop's run is its one process (--timeout).
    refused = d.cli("loop", "add", "cut-cmd", "--every", "1h", "--command", "true", "--attempt-timeout", "1s",
                    check=False)  # fmt: skip
    assert refused.returncode == 2 and "--attempt-timeout needs an agent backend" in refused.stderr, refused
    longer = d.cli("loop", "edit", "cut", "--attempt-timeout", "2m")  # the run's --timeout is 1m
    assert "warning: --attempt-timeout is not shorter than --timeout" in longer.stderr, longer.stderr
    d.cli("loop", "edit", "cut", "--clear-attempt-timeout")
    assert d.json("loop", "show", "cut")["attempt_timeout_s"] is None
    # An attempt whose answer came, its CLI then not exiting, is cut and judged by that answer: not thrown away and
    # done again (with its edits and its cost) on the next candidate.
    d.cli("profile", "add", "lingers", "--backend", "claude_code")
    scenario(d, "lingers", "ok_then_hang")
    d.cli("loop", "edit", "cut", "--chain", "lingers,answers", "--attempt-timeout", "1s")
    done = run(d, "cut")
    assert done["status"] == "succeeded" and [a["profile"] for a in done["attempt_list"]] == ["lingers"], done


def test_a_run_waiting_on_attempts_under_way_looks_again_as_each_ends(routed: Daemon) -> None:
    # With room taken only by attempts under way, the waiting run looked again a minute later, whenever they ended.
    # Now each end wakes it; one that leaves it still without room is the same wait: no second `wait` in its
    # route, no second `run.waiting` event (gateway calls end many times a second).
    d = routed
    d.cli("profile", "add", "busy", "--backend", "claude_code")
    scenario(d, "busy", "ok")
    for name in ("busy-a", "busy-b", "busy-c"):
        d.cli("loop", "add", name, "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "busy",
              "--prompt", "x", "--on-exhausted", "wait")  # fmt: skip
    (attempt,) = run(d, "busy-a")["attempt_list"]  # what one attempt uses becomes known
    each = sum(attempt["tokens"].values())
    assert each > 0
    scenario(d, "busy", "held")
    held = [d.json("loop", "run", name)["id"] for name in ("busy-a", "busy-c")]
    wait_until(lambda: called(d, "busy") == 3, what="two held attempts under way")
    # Room for what is used and one and a half attempts more: with either held one under way, the next has none.
    d.cli("profile", "edit", "busy", "--limit", f"1d={each * 5 // 2}tok")
    waiting = d.json("loop", "run", "busy-b")["id"]
    wait_until(lambda: d.json("runs", "show", str(waiting))["status"] == "waiting", what="the next run to wait")

    told = d.json("runs", "show", str(waiting))
    assert told["route"][-1]["detail"].endswith("at the latest, or until an attempt under way ends"), told["route"]
    d.cli("runs", "stop", str(held[0]))  # it ends having used nothing; the other still takes the room
    # It looks again (its bound moves on) and goes on waiting, the same wait: no second `wait`, nor its figures again.
    looked = wait_until(lambda: (r := d.json("runs", "show", str(waiting)))["wait_until"] != told["wait_until"] and r,
                        what="a look after the end")  # fmt: skip
    assert looked["status"] == "waiting" and looked["route"] == told["route"], looked["route"]
    d.cli("runs", "stop", str(held[1]))  # now there is room: it goes on at once, not minutes later
    wait_until(lambda: called(d, "busy") == 4, timeout=15, what="the waiting run's attempt, at once")
    (d.standin_dir / "busy.release").write_text("")  # type: ignore[attr-defined]
    assert d.wait_run(waiting)["status"] == "succeeded"
    waits = [e for e in events(d) if e["type"] == "run.waiting" and e["data"]["run_id"] == waiting]
    assert len(waits) == 1, waits
    # A run stopped by hand says so where its route ends (it ended at its `try`, as if still under way).
    stopped = d.wait_run(held[0])
    assert stopped["status"] == "cancelled" and stopped["route"][-1]["kind"] == "stop", stopped["route"]
    assert stopped["route"][-1]["detail"] == stopped["error"], (stopped["route"], stopped["error"])
