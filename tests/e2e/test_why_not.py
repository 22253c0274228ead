"""Why a loop did not fire, and the run lifecycle events, through the CLI against a real daemon: a fire
skipped because the previous run still runs, a loop over its daily cost, fires coalesced while a run
waits for headroom (`loop list`: "waiting until"), a one-shot missed while the daemon was down,
and run.* / loop.fire_* events in `fleetd events`."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.harness import Daemon, capture_folder, standin_env, wait_until


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    capture_folder("cc_ok_stream")  # fail, not skip, without the captures the stand-ins replay
    root = Path(tempfile.mkdtemp(prefix="flw-", dir="/tmp"))
    (root / "standin").mkdir()
    daemon = Daemon(root / "home", "--kill-grace", "0.5s", "--heartbeat-interval", "1s")
    daemon.env.update(standin_env(root / "standin"))
    daemon.start()
    daemon.standin_dir = root / "standin"  # type: ignore[attr-defined]
    yield daemon
    daemon.stop()
    shutil.rmtree(root, ignore_errors=True)


def scenario(d: Daemon, profile: str, text: str) -> None:
    (d.standin_dir / f"{profile}.scenario").write_text(text)  # type: ignore[attr-defined]


def events(d: Daemon) -> list[dict]:
    return [json.loads(line) for line in d.cli("events", "--json", "--limit", "1000").stdout.splitlines() if line]


def skipped_row(d: Daemon, loop: str, at_least: int) -> dict:
    """The loop's skipped row once it stands for `at_least` fires."""

    def grown() -> dict | None:
        return next((r for r in d.runs("--loop", loop, "--status", "skipped") if r["skipped_count"] >= at_least), None)

    return wait_until(grown, timeout=15, what=f"{at_least} fires of {loop} skipped")


def why_not(d: Daemon, loop: str) -> str:
    line = next((x for x in d.cli("loop", "show", loop).stdout.splitlines() if x.startswith("why not")), "")
    return line.removeprefix("why not").strip()


def test_loop_show_says_a_fire_was_skipped_because_the_previous_run_still_runs(d: Daemon) -> None:
    # Runs far longer than the test: a second run (whose overlap would start a second skipped row) never starts.
    d.cli("loop", "add", "busy", "--every", "1s", "--command", "sleep 60")
    row = skipped_row(d, "busy", at_least=2)
    d.cli("loop", "pause", "busy")
    assert len(d.runs("--loop", "busy", "--status", "skipped")) == 1  # coalesced: one row that counts
    assert row["skip_reason"] == "overlap" and "still running" in row["error"]
    d.cli("loop", "resume", "busy")  # not paused any more: the skipped fire is the answer again
    shown = d.json("loop", "show", "busy")["not_firing"]
    if shown["reason"] == "overlap":  # (a fire after the resume may have started a run meanwhile)
        assert shown["message"].startswith("its last fire was skipped: previous run ") and shown["run_id"] == row["id"]
    d.cli("loop", "pause", "busy")
    assert why_not(d, "busy").startswith("paused: it fires again after `fleetd loop resume` [paused]; since ")
    types = [e["type"] for e in events(d) if e["data"].get("loop") == "busy"]
    assert types.count("loop.fire_skipped") >= 1 and "run.started" in types
    d.cli("loop", "stop", "busy", "--kill")  # (the daemon's stop would wait for it)


def test_loop_show_says_the_loop_is_over_its_daily_cost(d: Daemon) -> None:
    d.cli("profile", "add", "cc-paid", "--backend", "claude_code")
    scenario(d, "cc-paid", "ok")  # the capture reports $0.0009104 for its run
    d.cli("loop", "add", "thrifty", "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "cc-paid",
          "--prompt", "x", "--daily-cost", "0.0005")  # fmt: skip
    d.cli("loop", "resume", "thrifty")
    assert d.json("loop", "show", "thrifty")["not_firing"] is None
    first = d.wait_run(d.json("loop", "run", "thrifty")["id"])
    assert first["status"] == "succeeded"
    ahead = d.json("loop", "show", "thrifty")["not_firing"]
    assert ahead["reason"] == "over_daily_cost" and ahead["message"].startswith("its next fire will be skipped: budget")
    # When it fires again, should it spend nothing more: a day after the run that spent it (it said nothing).
    eases = datetime.fromisoformat(ahead["until"]) - datetime.fromisoformat(first["started_at"])
    assert timedelta(hours=24) <= eases < timedelta(hours=24, seconds=5), ahead
    answer = d.cli("loop", "run", "thrifty", "--json", check=False)
    assert answer.returncode == 1, answer  # a skipped run is exit 1, with --json too
    skipped = json.loads(answer.stdout)
    assert skipped["status"] == "skipped" and skipped["skip_reason"] == "over_daily_cost"
    assert why_not(d, "thrifty").startswith(
        "its last `loop run` was skipped: budget: the loop spent $0.00091 of its $0.0005"
    )
    assert "[over_daily_cost]" in why_not(d, "thrifty")


def test_a_loop_removed_and_added_again_starts_its_daily_cost_afresh(d: Daemon) -> None:
    # A loop's spend was summed by its name: one added under a removed loop's name had its runs skipped for what the
    # removed loop had spent, though `loop show` lists none of that loop's runs.
    d.cli("profile", "add", "cc-again", "--backend", "claude_code")
    scenario(d, "cc-again", "ok")  # the capture reports $0.0009104 for its run
    define = ("loop", "add", "respent", "--every", "1h", "--paused", "--backend", "claude_code", "--profile",
              "cc-again", "--prompt", "x", "--daily-cost", "0.0005")  # fmt: skip
    d.cli(*define)
    assert d.wait_run(d.json("loop", "run", "respent")["id"])["status"] == "succeeded"
    assert d.cli("loop", "run", "respent", "--json", check=False).returncode == 1  # over its daily cost: skipped
    d.cli("loop", "rm", "respent")
    d.cli(*define)
    again = d.cli("loop", "run", "respent", "--json", check=False)
    assert again.returncode == 0, again.stdout
    assert d.wait_run(json.loads(again.stdout)["id"])["status"] == "succeeded"


def test_a_profile_removed_and_added_again_starts_its_daily_cost_afresh(d: Daemon) -> None:
    # Its --limit windows start afresh (`profile rm` forgets its usage records), but its --daily-cost was summed by
    # name: added again, it was passed over for what the removed profile had spent.
    define = ("profile", "add", "cc-back", "--backend", "claude_code", "--daily-cost", "0.0005")
    d.cli(*define)
    scenario(d, "cc-back", "ok")  # the capture reports $0.0009104 for its run
    d.cli("loop", "add", "backer", "--every", "1h", "--paused", "--backend", "claude_code", "--profile", "cc-back",
          "--prompt", "x")  # fmt: skip
    assert d.wait_run(d.json("loop", "run", "backer")["id"])["status"] == "succeeded"
    spent = lambda: next(u["daily_cost"] for u in d.json("usage") if u["profile"] == "cc-back")  # noqa: E731
    assert spent()["spent"] > 0.0005 and spent()["reached"]
    d.cli("loop", "rm", "backer")
    d.cli("profile", "rm", "cc-back")
    d.cli(*define)
    assert spent()["spent"] == 0 and not spent()["reached"]


def test_fires_while_a_run_waits_for_a_reset_are_one_skipped_row_and_the_list_says_waiting(d: Daemon) -> None:
    d.cli("profile", "add", "solo", "--backend", "codex")
    # The reset far enough ahead for every check below on a loaded host: one that came first would retry the run
    # (a third attempt) and start a second skipped row.
    scenario(d, "solo", "usage_limit +12")
    d.cli("loop", "add", "patient", "--every", "1s", "--backend", "codex", "--prompt", "x", "--on-exhausted", "wait")
    waiting = wait_until(lambda: next(iter(d.runs("--loop", "patient", "--status", "waiting")), None), timeout=15,
                         what="the run to wait for the reset")  # fmt: skip
    row = skipped_row(d, "patient", at_least=3)
    listed = next(line for line in d.cli("loop", "list").stdout.splitlines() if line.startswith("patient"))
    shown = d.json("loop", "show", "patient")
    text = why_not(d, "patient")
    d.cli("loop", "pause", "patient")
    assert len(d.runs("--loop", "patient", "--status", "skipped")) == 1  # not one row per fire
    assert row["skip_reason"] == "waiting"
    told = f"previous run {waiting['id']} waits for headroom until "
    assert row["error"].startswith(told) and not re.search(r"\dT\d", row["error"]), row["error"]
    assert row["error"].endswith(f" ({row['skipped_count']} fires skipped)"), row["error"]  # as an overlap's says it
    assert "waiting until " in listed and "running" not in listed
    assert shown["waiting_until"] == waiting["wait_until"] and shown["running_run_id"] == waiting["id"]
    assert shown["not_firing"]["reason"] == "waiting" and shown["not_firing"]["until"] == waiting["wait_until"]
    assert f"run {waiting['id']} waits for headroom; fires meanwhile are skipped" in text
    d.cli("loop", "resume", "patient")
    by_hand = d.cli("loop", "run", "patient", check=False)  # it said "run 21 skipped: skipped 2 fires while …"
    assert by_hand.returncode == 1, by_hand.stderr
    said = f"fleetd: run {row['id']} skipped: previous run {waiting['id']} waits for headroom "
    assert by_hand.stderr.startswith(said), by_hand.stderr
    assert by_hand.stderr.rstrip().endswith(" fires skipped)"), by_hand.stderr
    d.cli("loop", "pause", "patient")
    scenario(d, "solo", "ok")
    done = d.wait_run(waiting["id"], timeout=30)
    assert done["status"] == "succeeded"
    mine = [e for e in events(d) if e["data"].get("loop") == "patient"]
    assert [e["type"] for e in mine if e["type"] == "loop.fire_skipped"] == ["loop.fire_skipped"]  # told once
    ended = next(e for e in mine if e["type"] == "run.succeeded" and e["data"]["run_id"] == waiting["id"])
    assert ended["profile"] == "solo" and ended["data"]["attempts"] == 2
    assert any(e["type"] == "run.waiting" and e["data"]["run_id"] == waiting["id"] for e in mine)


def test_a_run_that_waits_before_its_first_attempt_keeps_the_fires_start(d: Daemon) -> None:
    # Its first attempt's start replaced the run's (a trial: started 19:17:09 after a 52 s wait, duration 0.07 s).
    d.cli("profile", "add", "spent", "--backend", "codex")
    scenario(d, "spent", "usage_limit +6")
    d.cli("loop", "add", "spender", "--every", "1h", "--paused", "--backend", "codex", "--profile", "spent",
          "--prompt", "x")  # fmt: skip
    spender = d.json("loop", "run", "spender")  # rate limited: the profile is exhausted for 6 s
    wait_until(lambda: {u["profile"]: u for u in d.json("usage")}["spent"]["state"] == "exhausted",
               what="the profile exhausted")  # fmt: skip
    scenario(d, "spent", "ok")
    d.cli("loop", "add", "waiter", "--every", "1h", "--paused", "--backend", "codex", "--profile", "spent",
          "--prompt", "x", "--on-exhausted", "wait")  # fmt: skip
    fired = d.json("loop", "run", "waiter")
    done = d.wait_run(fired["id"], timeout=30)
    assert done["status"] == "succeeded"
    shown = d.json("runs", "show", str(done["id"]))
    first_attempt = datetime.fromisoformat(shown["attempt_list"][0]["started_at"])
    assert done["started_at"] == fired["started_at"]
    assert first_attempt - datetime.fromisoformat(done["started_at"]) > timedelta(seconds=1)  # the wait
    assert done["duration_s"] > 1
    d.wait_run(spender["id"], timeout=30)


def test_run_lifecycle_events_in_fleetd_events(d: Daemon) -> None:
    d.cli("loop", "add", "ok", "--every", "1h", "--paused", "--command", "echo fine")
    d.cli("loop", "add", "bad", "--every", "1h", "--paused", "--command", "echo broken >&2; exit 3")
    d.cli("loop", "add", "slow", "--every", "1h", "--paused", "--command", "sleep 30", "--timeout", "1s")
    ids = {name: d.wait_run(d.json("loop", "run", name)["id"])["id"] for name in ("ok", "bad", "slow")}
    ended = {e["data"]["run_id"]: e for e in events(d) if e["type"] in ("run.succeeded", "run.failed", "run.timed_out")}
    assert ended[ids["ok"]]["type"] == "run.succeeded" and ended[ids["ok"]]["data"]["exit_code"] == 0
    failed = ended[ids["bad"]]
    assert failed["type"] == "run.failed" and failed["data"]["exit_code"] == 3 and failed["data"]["loop"] == "bad"
    assert failed["data"]["duration_s"] is not None and failed["data"]["attempts"] == 1
    assert ended[ids["slow"]]["type"] == "run.timed_out"
    started = [e["data"]["run_id"] for e in events(d) if e["type"] == "run.started"]
    assert set(ids.values()) <= set(started)
    text = d.cli("events").stdout
    # the type column is as wide as the longest type (candidate.unavailable), then the message
    assert f"{'run.failed':<21} run {ids['bad']} of loop bad failed (exit 3) after " in text


def test_a_one_shot_missed_while_the_daemon_was_down_says_so(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "home", "--kill-grace", "0.5s").start()
    try:
        at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat(timespec="seconds")
        d.cli("loop", "add", "once", "--at", at, "--catch-up", "skip", "--command", "true")
        d.stop()
        wait_until(lambda: datetime.now(UTC) > datetime.fromisoformat(at) + timedelta(seconds=0.5), timeout=10,
                   what="the one-shot's time to pass while the daemon is down")  # fmt: skip
        d.start()
        (row,) = d.runs("--loop", "once")
        assert (row["status"], row["skip_reason"], row["trigger"]) == ("skipped", "daemon_down", "catch-up")
        assert why_not(d, "once").startswith(
            "its last fire was skipped: missed 1 fire while the daemon was down; not run: --catch-up skip [daemon_down]"
        )
        (missed,) = [e for e in events(d) if e["type"] == "loop.fire_missed"]
        assert missed["data"] == {"loop": "once", "run_id": row["id"], "reason": "daemon_down", "missed": 1,
                                  "first_missed_at": row["scheduled_at"], "caught_up": False}  # fmt: skip
    finally:
        d.stop()


def test_a_profile_resting_until_its_reset_is_no_reason_to_add_one(d: Daemon) -> None:
    """`loop show` said "no usable profile for its chain … `fleetd profile add NAME --backend codex` adds another"
    while the chain's one profile was only exhausted until a reset minutes before the loop's next fire."""
    d.cli("profile", "add", "resting", "--backend", "codex")
    scenario(d, "resting", "usage_limit +600")
    d.cli("loop", "add", "tires", "--every", "1h", "--paused", "--backend", "codex", "--profile", "resting",
          "--prompt", "x")  # fmt: skip
    d.cli("loop", "add", "later", "--every", "1h", "--backend", "codex", "--profile", "resting", "--prompt", "x")
    tired = d.json("loop", "run", "tires")["id"]
    wait_until(lambda: {u["profile"]: u for u in d.json("usage")}["resting"]["state"] == "exhausted",
               what="the profile exhausted")  # fmt: skip
    try:
        assert why_not(d, "later") == ""
    finally:
        d.cli("runs", "stop", str(tired))
        scenario(d, "resting", "ok")


def test_loop_show_says_its_runs_fail_at_once_when_its_dir_is_gone(d: Daemon, tmp_path: Path) -> None:
    """A --dir removed since the loop was added failed every run ("working directory not found") while `loop show`
    said nothing was wrong; `fleetd doctor` knew. It says why, and the fix."""
    work = tmp_path / "app"
    work.mkdir()
    d.cli("loop", "add", "homeless_show", "--every", "1h", "--dir", str(work), "--command", "true")
    assert why_not(d, "homeless_show") == ""
    work.rmdir()
    assert why_not(d, "homeless_show") == (f"its runs fail at once: directory not found: {work} "
                                           "(`fleetd loop edit homeless_show --dir DIR`) [unusable_path]")  # fmt: skip
    assert d.json("loop", "show", "homeless_show")["not_firing"]["reason"] == "unusable_path"


def test_loop_run_refuses_a_loop_whose_dir_is_gone_saying_the_fix(d: Daemon, tmp_path: Path) -> None:
    """`loop run` of such a loop said "started run N" of a run that failed at once; it says why it cannot run,
    and the fix, and records no run."""
    work = tmp_path / "app"
    work.mkdir()
    d.cli("loop", "add", "homeless_run", "--every", "1h", "--dir", str(work), "--command", "true")
    work.rmdir()
    done = d.cli("loop", "run", "homeless_run", check=False)
    assert done.returncode == 1, done
    assert done.stderr == (f"fleetd: loop homeless_run cannot run: directory not found: {work} "
                           "(`fleetd loop edit homeless_run --dir DIR`)\n")  # fmt: skip
    assert d.json("runs", "list", "--loop", "homeless_run") == []
