"""The usage heartbeat end to end: failover on a usage limit, exhaustion until the stand-in's reset,
waiting runs that resume by themselves, usage by "someone else", pins, events, restarts."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.harness import Daemon, capture_folder, standin_env, wait_until


@pytest.fixture
def hb() -> Iterator[Daemon]:
    capture_folder("cc_ok_stream")  # fail, not skip, without the captures the stand-ins replay
    root = Path(tempfile.mkdtemp(prefix="flh-", dir="/tmp"))
    (root / "standin").mkdir()
    d = Daemon(root / "home", "--kill-grace", "0.5s", "--heartbeat-interval", "1s")
    d.env.update(standin_env(root / "standin"))
    d.start()
    d.standin_dir = root / "standin"  # type: ignore[attr-defined]
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def scenario(d: Daemon, profile: str, text: str) -> None:
    (d.standin_dir / f"{profile}.scenario").write_text(text)  # type: ignore[attr-defined]


def usage(d: Daemon) -> dict[str, dict]:
    return {row["profile"]: row for row in d.json("usage")}


def events(d: Daemon) -> list[dict]:
    lines = d.cli("events", "--json", "--limit", "500").stdout.splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_usage_limit_mid_run_fails_over_and_the_profile_comes_back_after_its_reset(hb: Daemon) -> None:
    d = hb
    d.cli("profile", "add", "claude_a", "--backend", "claude_code", "--limit", "5h=4000000tok", "--limit", "7d=40Mtok")
    d.cli("profile", "add", "claude_b", "--backend", "claude_code", "--limit", "5h=4000000tok")
    scenario(d, "claude_a", "usage_limit +4")
    scenario(d, "claude_b", "ok")
    d.cli("loop", "add", "review", "--every", "1h", "--backend", "claude_code", "--prompt", "review")
    run = d.wait_run(d.json("loop", "run", "review")["id"])
    assert run["status"] == "succeeded"
    first, second = run["attempt_list"]
    assert (first["profile"], first["error_class"], second["profile"]) == ("claude_a", "rate_limited", "claude_b")
    reset = datetime.fromisoformat(first["reset_at"])
    rows = usage(d)
    assert rows["claude_a"]["state"] == "exhausted"
    assert datetime.fromisoformat(rows["claude_a"]["exhausted_until"]) == reset  # the stand-in's own reset time
    assert rows["claude_b"]["active"] is True and rows["claude_a"]["active"] is False
    assert rows["claude_b"]["windows"][0]["used"] == 244  # 123 in + 9 out + 67 cache read + 45 cache write
    window = rows["claude_b"]["windows"][0]  # counts, as JSON writes counts (`244.0` and `4000000.0` before)
    assert json.dumps([window["used"], window["limit"]]) == "[244, 4000000]"
    table = d.cli("usage").stdout
    assert "exhausted" in table and "claude_b" in table and "5h 0%" in table  # 244 of 4M tokens
    assert "5h 244tok/4.0Mtok 0%" in d.cli("usage", "--wide").stdout
    wait_until(lambda: usage(d)["claude_a"]["state"] == "available", timeout=15, what="claude_a back after reset")
    back = usage(d)["claude_a"]
    assert back["unconfirmed"] is True  # until an attempt proves it
    types = [e["type"] for e in events(d) if e["profile"] in ("claude_a", "claude_b")]
    assert "profile.exhausted" in types and "profile.switched" in types and "profile.recovered" in types
    shown = d.cli("runs", "show", str(run["id"])).stdout
    assert "attempt 1: claude_code/claude_a" in shown and "failed (rate_limited)" in shown
    assert "attempt 2: claude_code/claude_b" in shown


def test_all_profiles_exhausted_run_waits_and_resumes_by_itself(hb: Daemon) -> None:
    d = hb
    d.cli("profile", "add", "solo", "--backend", "codex")
    scenario(d, "solo", "usage_limit +3")
    d.cli("loop", "add", "patient", "--every", "1h", "--backend", "codex", "--prompt", "x")
    run_id = d.json("loop", "run", "patient")["id"]
    waiting = wait_until(
        lambda: (r := d.json("runs", "show", str(run_id)))["status"] == "waiting" and r, what="the run to wait"
    )
    assert waiting["wait_until"] is not None
    assert d.runs("--status", "waiting")[0]["id"] == run_id
    scenario(d, "solo", "ok")
    run = d.wait_run(run_id, timeout=20)
    assert run["status"] == "succeeded"
    assert [a["outcome"] for a in run["attempt_list"]] == ["failed", "succeeded"]
    # It resumed at the reset, not before (no tight retry loop) and not much after.
    resumed = datetime.fromisoformat(run["attempt_list"][1]["started_at"])
    assert resumed >= datetime.fromisoformat(waiting["wait_until"]) - timedelta(milliseconds=50)
    assert "run.waiting" in [e["type"] for e in events(d)]


def test_usage_by_someone_else_moves_the_window_and_garbled_lines_are_counted(hb: Daemon) -> None:
    d = hb
    d.cli("profile", "add", "shared", "--backend", "claude_code", "--limit", "5h=10000tok")
    assert usage(d)["shared"]["windows"][0]["used"] == 0  # shown at once, before any beat
    config = Path(d.json("profile", "show", "shared")["config_dir"])
    transcript = config / "projects" / "-home-me-app" / "8f0c-session.jsonl"
    transcript.parent.mkdir(parents=True)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    line = {
        "parentUuid": None, "isSidechain": False, "userType": "external", "cwd": "/home/me/app",
        "sessionId": "8f0c-session", "version": "2.1.330", "type": "assistant", "uuid": "u1", "timestamp": now,
        "requestId": "req_1",
        "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                    "content": [{"type": "text", "text": "hi"}],
                    "usage": {"input_tokens": 4000, "output_tokens": 500, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0}},
    }  # fmt: skip
    # Claude Code writes one line per content block with the same ids: counted once.
    compact = json.dumps(line, separators=(",", ":"))  # as Claude Code writes them
    transcript.write_text(compact + "\n" + compact + "\n" + '{"truncated": \n' + "\x00\xff\n")
    row = wait_until(lambda: (r := usage(d)["shared"])["windows"][0]["used"] > 0 and r, what="the window to move")
    assert row["windows"][0]["window"] == "5h"
    assert row["windows"][0]["used"] == 4500
    assert row["garbled_lines"] >= 1
    line2 = dict(line, requestId="req_2", message=dict(line["message"], id="msg_2"))
    with transcript.open("a") as f:
        f.write(json.dumps(line2, separators=(",", ":")) + "\n")
    row = wait_until(lambda: (r := usage(d)["shared"])["windows"][0]["used"] == 9000 and r, what="appended usage")
    assert row["state"] == "near_limit"  # 90 % of the 5h window


def test_manual_pin_and_auto(hb: Daemon) -> None:
    d = hb
    for name in ("g1", "g2"):
        d.cli("profile", "add", name, "--backend", "gemini", "--api-key-stdin", input=f"key-{name}")
    wait_until(lambda: any(r["active"] for r in d.json("usage") if r["backend"] == "gemini"), what="an active one")
    assert d.cli("profile", "switch", "g2").stdout.strip() == "gemini: g2 pinned"
    rows = usage(d)
    assert rows["g2"]["active"] and rows["g2"]["pinned"] and not rows["g1"]["active"]
    assert "pinned" in d.cli("usage").stdout
    assert d.cli("profile", "switch", "--auto", "gemini").stdout.startswith("gemini: automatic")
    assert usage(d)["g2"]["pinned"] is False
    # An unknown backend is a usage error (it was exit 1, as a known one without profiles is).
    bad = d.cli("profile", "switch", "--auto", "nonsense", check=False)
    assert bad.returncode == 2 and "unknown backend 'nonsense'" in bad.stderr, bad.stderr
    none = d.cli("profile", "switch", "--auto", "codex", check=False)
    assert none.returncode == 1 and "no profile for backend 'codex'" in none.stderr, none.stderr
    # A profile that cannot be active is not pinned (it said "pinned", and the next beat moved on).
    d.cli("profile", "disable", "g1")
    refused = d.cli("profile", "switch", "g1", check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "fleetd: profile g1 is disabled: disabled by hand; it cannot be the active one now"
    ), refused.stderr
    assert usage(d)["g1"]["pinned"] is False
    d.cli("profile", "enable", "g1")


def test_exhaustion_survives_a_restart(hb: Daemon) -> None:
    d = hb
    d.cli("profile", "add", "tired", "--backend", "claude_code")
    scenario(d, "tired", "usage_limit +3600")
    d.cli("loop", "add", "once_more", "--every", "1h", "--backend", "claude_code", "--prompt", "x",
          "--profile", "tired")  # fmt: skip
    run_id = d.json("loop", "run", "once_more")["id"]
    wait_until(lambda: usage(d)["tired"]["state"] == "exhausted", what="tired exhausted")
    until = usage(d)["tired"]["exhausted_until"]
    wait_until(lambda: d.json("runs", "show", str(run_id))["status"] == "waiting", what="the run to wait")
    started = time.monotonic()
    d.stop()
    assert time.monotonic() - started < 10  # a waiting run has nothing to finish: no stop grace for it
    d.start()
    row = usage(d)["tired"]
    assert (row["state"], row["exhausted_until"]) == ("exhausted", until)
    after = d.json("runs", "show", str(run_id))
    assert after["status"] == "interrupted" and "waited for headroom" in after["error"]
    assert after["wait_until"] is not None  # what it waited for when the stop cut it
    # Nothing ran when the stop came: no exit code (it had its earlier attempt's 1, as if the stop had made it exit 1).
    assert after["exit_code"] is None
    shown = d.cli("runs", "show", str(run_id)).stdout
    assert "\nwaited     for headroom until " in shown and "\nwaiting " not in shown, shown


def test_a_run_the_stop_cut_while_it_waited_is_run_again_at_the_next_start(hb: Daemon) -> None:
    """A restart (an upgrade, a reboot) while a run waited hours for a reset lost its work: the run ended
    `interrupted` and nothing ran until the loop's next fire (never, for an `--at` loop). As a fire missed while the
    daemon was down, it is run once at the next start (`--catch-up once`), where it waits again for the same reset."""
    d = hb
    d.cli("profile", "add", "spent", "--backend", "claude_code")
    scenario(d, "spent", "usage_limit +3600")
    d.cli("loop", "add", "nightly", "--every", "1d", "--backend", "claude_code", "--prompt", "x", "--profile", "spent")
    d.cli("loop", "add", "quiet", "--every", "1d", "--backend", "claude_code", "--prompt", "x", "--profile", "spent",
          "--catch-up", "skip")  # fmt: skip
    d.cli("loop", "add", "held", "--every", "1d", "--backend", "claude_code", "--prompt", "x", "--profile", "spent")
    later = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    d.cli("loop", "add", "one_shot", "--at", later, "--backend", "claude_code", "--prompt", "x", "--profile", "spent")
    cut = {name: d.json("loop", "run", name)["id"] for name in ("nightly", "quiet", "held", "one_shot")}
    for run_id in cut.values():
        wait_until(lambda r=run_id: d.json("runs", "show", str(r))["status"] == "waiting", what=f"run {run_id} to wait")
    # Fires that find it waiting are skipped rows, newer than it: they hid it (a loop firing more often than it
    # waited was never run again).
    skip = d.cli("loop", "run", "nightly", "--json", check=False)
    assert skip.returncode == 1 and json.loads(skip.stdout)["status"] == "skipped", (skip.stdout, skip.stderr)
    d.cli("loop", "pause", "held")
    d.stop()
    d.start()
    again = wait_until(lambda: [r for r in d.json("runs", "list", "--loop", "nightly")
                                if r["id"] != cut["nightly"] and r["status"] != "skipped"],
                       what="nightly's run to be run again")  # fmt: skip
    assert [r["trigger"] for r in again] == ["catch-up"]
    waiting = wait_until(lambda: (r := d.json("runs", "show", str(again[0]["id"])))["status"] == "waiting" and r,
                         what="the new run to wait for the same reset")  # fmt: skip
    assert waiting["wait_until"] == usage(d)["spent"]["exhausted_until"]  # no attempt: the profile is still spent
    assert len(waiting["attempt_list"]) == 0
    log = d.cli("runs", "logs", str(again[0]["id"])).stdout
    assert f"run {cut['nightly']} was waiting for headroom when the daemon stopped" in log, log
    assert [r["id"] for r in d.json("runs", "list", "--loop", "quiet")] == [cut["quiet"]]  # --catch-up skip
    assert [r["id"] for r in d.json("runs", "list", "--loop", "held")] == [cut["held"]]  # paused
    assert wait_until(lambda: (t := [r["trigger"] for r in d.json("runs", "list", "--loop", "one_shot")])
                      == ["catch-up", "manual"] and t, what="the one-shot's run to be run again")  # fmt: skip
    # Resumed by hand after the cut: the user has decided about it since (as a resume catches up no fire), so a later
    # start does not bring back a run of who knows how long ago.
    d.cli("loop", "resume", "held")
    # Once: the next start finds the new run (interrupted in its turn), not the first one, to run again.
    d.stop()
    d.start()
    runs = wait_until(lambda: r if len(r := [x for x in d.json("runs", "list", "--loop", "nightly")
                                            if x["status"] != "skipped"]) == 3 else None,
                      what="the second cut run to be run again")  # fmt: skip
    assert [r["status"] for r in runs[1:]] == ["interrupted", "interrupted"]
    assert [r["id"] for r in d.json("runs", "list", "--loop", "held")] == [cut["held"]]


def test_disable_by_hand_and_enable_after_an_auth_failure(hb: Daemon) -> None:
    d = hb
    d.cli("profile", "add", "ka", "--backend", "claude_code")
    d.cli("profile", "add", "kb", "--backend", "claude_code")
    scenario(d, "ka", "auth")
    scenario(d, "kb", "ok")
    d.cli("loop", "add", "keys", "--every", "1h", "--backend", "claude_code", "--prompt", "x", "--profile", "ka,kb")
    run = d.wait_run(d.json("loop", "run", "keys")["id"])
    assert [(a["profile"], a["error_class"]) for a in run["attempt_list"]] == [("ka", "auth"), ("kb", None)]
    assert usage(d)["ka"]["state"] == "disabled" and "auth failure" in usage(d)["ka"]["reason"]
    # `profile list` and `show` said ENABLED yes for it, while every run passed it over.
    listed = {line.split()[0]: line for line in d.cli("profile", "list").stdout.splitlines()[1:]}
    assert " no (auth failure) " in listed["ka"] and " yes " in listed["kb"], listed
    shown = d.json("profile", "show", "ka")
    assert shown["enabled"] is True and "auth failure" in shown["disabled_reason"]
    enabled = next(line for line in d.cli("profile", "show", "ka").stdout.splitlines() if line.startswith("enabled"))
    assert "no, auth failure" in enabled and "fleetd profile enable ka" in enabled, enabled
    scenario(d, "ka", "ok")  # the login was fixed
    assert d.cli("profile", "enable", "ka").stdout.strip() == "enabled profile ka"
    assert usage(d)["ka"]["state"] == "available"
    assert d.json("profile", "show", "ka")["disabled_reason"] is None
    d.cli("profile", "disable", "kb")
    assert (usage(d)["kb"]["state"], usage(d)["kb"]["reason"]) == ("disabled", "disabled by hand")
    assert d.json("profile", "show", "kb")["enabled"] is False
    run = d.wait_run(d.json("loop", "run", "keys")["id"])
    assert [a["profile"] for a in run["attempt_list"]] == ["ka"] and run["status"] == "succeeded"
    d.cli("profile", "enable", "kb")
    assert usage(d)["kb"]["state"] == "available" and d.json("profile", "show", "kb")["enabled"] is True


def test_a_new_profiles_records_are_seen_within_seconds_not_at_the_next_beat(short_home: Path) -> None:
    """With a 10-minute beat, only the directory watch can notice the file in time."""
    d = Daemon(short_home / "home", "--heartbeat-interval", "10m")
    d.start()
    try:
        d.cli("profile", "add", "late", "--backend", "claude_code", "--limit", "5h=1000tok")
        transcript = Path(d.json("profile", "show", "late")["config_dir"]) / "projects" / "p" / "s.jsonl"
        transcript.parent.mkdir(parents=True)  # the CLI makes projects/ on its first run, after `profile add`
        line = {"sessionId": "s", "version": "2.1.330", "type": "assistant", "cwd": "/w", "requestId": "r1",
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "message": {"id": "m1", "model": "claude-sonnet-4-5",
                            "usage": {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 0}}}  # fmt: skip
        transcript.write_text(json.dumps(line, separators=(",", ":")) + "\n")
        wait_until(lambda: usage(d)["late"]["windows"][0]["used"] == 120, timeout=20, what="the first record")
        time.sleep(1.5)  # well past arming: from here on only the directory watch can notice in time
        second = dict(line, requestId="r2", message=dict(line["message"], id="m2"))
        with transcript.open("a") as f:
            f.write(json.dumps(second, separators=(",", ":")) + "\n")
        wait_until(lambda: usage(d)["late"]["windows"][0]["used"] == 240, timeout=20, what="the watch to notice")
    finally:
        d.stop()
