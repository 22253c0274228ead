"""The acceptance gate through a real daemon with the stand-in CLIs: a verify command rejects a
worker's work (the next chain step gets the task, with the findings), repair rounds go back to the
same worker and continue its session, and a gate that cannot run stops the run."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.timefmt import format_duration
from tests.harness import Daemon, capture_folder, standin_env

SESSION = "44ce97b6-bd26-4495-bf03-46c93a098e16"  # what the cc_ok_stream capture's session is


@pytest.fixture(scope="module")
def gated() -> Iterator[Daemon]:
    capture_folder("cc_ok_stream")
    root = Path(tempfile.mkdtemp(prefix="flg-", dir="/tmp"))
    (root / "standin").mkdir()
    (root / "work").mkdir()
    d = Daemon(root / "home", "--kill-grace", "0.5s", "--stop-grace", "1s", "--backoff-base", "0.05s")
    d.env.update(standin_env(root / "standin"))
    d.start()
    d.root = root  # type: ignore[attr-defined]
    for name in ("cc-first", "cc-second"):
        d.cli("profile", "add", name, "--backend", "claude_code")
        (root / "standin" / f"{name}.scenario").write_text("ok")
    d.cli("profile", "add", "gem", "--backend", "gemini")
    (root / "standin" / "gem.scenario").write_text("ok")
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def calls(d: Daemon, run_id: int) -> list[dict]:
    lines = (d.root / "standin" / "calls.jsonl").read_text().splitlines()  # type: ignore[attr-defined]
    return [c for c in map(json.loads, lines) if c["env"].get("FLEETD_RUN_ID") == str(run_id)]


def prompt_of(call: dict) -> str:
    """The prompt a stand-in was given: Gemini's --prompt=TEXT, Claude Code's last argument after "--"."""
    argv = call["argv"]
    given = [a.removeprefix("--prompt=") for a in argv if a.startswith("--prompt=")]
    if given:
        return given[0]
    assert argv[-2] == "--", argv
    return argv[-1]


def run(d: Daemon, loop: str) -> dict:
    return d.wait_run(d.json("loop", "run", loop)["id"])


def test_rejected_on_step_one_the_next_step_is_accepted_with_the_findings(gated: Daemon) -> None:
    d = gated
    verify = 'echo "checked by $FLEETD_PROFILE"; test "$FLEETD_BACKEND" = gemini || { echo "2 tests fail"; exit 1; }'
    d.cli("loop", "add", "esc", "--every", "1h", "--paused", "--chain", "cc-first,gem@gemini-2.5-flash",
          "--prompt", "fix the tests", "--dir", str(d.root / "work"), "--verify", verify)  # type: ignore[attr-defined]  # fmt: skip
    result = run(d, "esc")
    assert result["status"] == "succeeded" and result["profile"] == "gem"
    first, second = result["attempt_list"]
    assert (first["profile"], first["accepted"], first["verify_exit"], first["step"]) == ("cc-first", False, 1, 1)
    assert "2 tests fail" in first["findings"]
    assert (second["profile"], second["accepted"], second["verify_exit"], second["step"]) == ("gem", True, 0, 2)
    cc_call, gem_call = calls(d, result["id"])
    assert prompt_of(cc_call) == "fix the tests"
    prompt = prompt_of(gem_call)
    assert prompt.startswith("fix the tests") and "2 tests fail" in prompt  # the next worker gets the findings
    log = d.cli("runs", "logs", str(result["id"])).stdout
    assert "[fleetd] verify (attempt 1, cc-first):" in log and "checked by cc-first" in log
    # The log said 5ms where the record said 4ms (rounded one, truncated the other).
    assert f"[fleetd] verify exit 1 after {format_duration(first['verify_ms'] / 1000)}\n" in log
    assert any(e["kind"] == "next" and "rejected" in e["detail"] for e in result["route"])


def test_a_repair_round_continues_the_same_workers_session(gated: Daemon) -> None:
    d = gated
    counter = d.root / "verify-count"  # type: ignore[attr-defined]
    verify = f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n -ge 2 ] || {{ echo "lint: 3 errors"; exit 1; }}'  # noqa: E501
    d.cli("loop", "add", "rep", "--every", "1h", "--paused", "--chain", "cc-second,gem", "--prompt", "tidy up",
          "--verify", verify, "--repair", "1")  # fmt: skip
    result = run(d, "rep")
    assert result["status"] == "succeeded"
    assert [(a["profile"], a["accepted"]) for a in result["attempt_list"]] == [
        ("cc-second", False),
        ("cc-second", True),
    ]
    first, repair = calls(d, result["id"])
    assert "--resume" not in first["argv"]
    assert repair["argv"][repair["argv"].index("--resume") + 1] == SESSION
    assert "lint: 3 errors" in prompt_of(repair)
    assert any(e["kind"] == "repair" for e in result["route"])


def test_rejected_everywhere_fails_with_reason_rejected(gated: Daemon) -> None:
    d = gated
    d.cli("loop", "add", "never", "--every", "1h", "--paused", "--chain", "cc-first,gem", "--prompt", "x",
          "--verify", "echo 'still broken'; exit 3")  # fmt: skip
    result = run(d, "never")
    assert result["status"] == "failed" and result["error"].startswith("rejected: verify `echo 'still broken'; exit 3`")
    assert "still broken" in result["error"]
    assert len(result["attempt_list"]) == 2


def test_a_gate_that_cannot_run_stops_without_escalating(gated: Daemon) -> None:
    d = gated
    d.cli("loop", "add", "broken", "--every", "1h", "--paused", "--chain", "cc-first,gem", "--prompt", "x",
          "--verify", "no-such-checker --all")  # fmt: skip
    result = run(d, "broken")
    assert result["status"] == "failed"
    assert result["error"].startswith("contract: the verify command could not run (exit 127)")
    assert [a["profile"] for a in result["attempt_list"]] == ["cc-first"]  # gem never asked


def test_repair_without_verify_is_refused(gated: Daemon) -> None:
    refused = gated.cli("loop", "add", "r", "--every", "1h", "--backend", "claude_code", "--prompt", "x",
                        "--repair", "1", check=False)  # fmt: skip
    assert refused.returncode == 2 and "--repair needs --verify or --review" in refused.stderr


def reviewer(d: Daemon, answers: str) -> None:
    (d.root / "standin" / "reviewer.scenario").write_text(answers)  # type: ignore[attr-defined]


def test_the_reviewer_accepts_and_its_attempt_is_role_review(gated: Daemon) -> None:
    d = gated
    d.cli("profile", "add", "reviewer", "--backend", "claude_code")
    reviewer(d, "verdict_accept")
    d.cli("loop", "add", "reviewed", "--every", "1h", "--paused", "--chain", "cc-first", "--prompt", "add a flag",
          "--dir", str(d.root / "work"), "--review", "reviewer@haiku")  # type: ignore[attr-defined]  # fmt: skip
    result = run(d, "reviewed")
    assert result["status"] == "succeeded" and result["profile"] in ("cc-first", "reviewer")
    roles = [(a["profile"], a["role"]) for a in result["attempt_list"]]
    assert roles == [("cc-first", "work"), ("reviewer", "review")]
    # The route numbers attempts as the list does (the review was "review 1" beside attempt 2).
    tries = [(e["number"], e["detail"].split(":")[0]) for e in result["route"] if e["kind"] == "try"]
    assert tries == [(1, "attempt 1"), (2, "review 2")], result["route"]
    assert [a["number"] for a in result["attempt_list"]] == [1, 2]
    _, review = calls(d, result["id"])
    question = prompt_of(review)
    assert "add a flag" in question and '"verdict"' in question and "## What changed" in question
    assert review["argv"][review["argv"].index("--model") + 1] == "haiku"
    assert d.cli("runs", "result", str(result["id"])).stdout.strip() == "hi"  # the worker's message, not the review


def test_a_reviewer_rejection_escalates_with_the_missing_items(gated: Daemon) -> None:
    d = gated
    reviewer(d, "verdict_reject")
    d.cli("loop", "add", "picky", "--every", "1h", "--paused", "--chain", "cc-first,gem", "--prompt", "do it",
          "--review", "reviewer")  # fmt: skip
    result = run(d, "picky")
    assert result["status"] == "failed" and result["error"].startswith("rejected: the reviewer rejected it")
    assert "update the changelog" in result["error"]
    # Its findings are lines of their own: `runs result` printed them on lines of their own too.
    no_result = d.cli("runs", "result", str(result["id"]), check=False)
    assert no_result.returncode == 1 and len(no_result.stderr.strip().splitlines()) == 1, no_result.stderr
    assert "has no accepted result" in no_result.stderr and "update the changelog" in no_result.stderr
    gem_call = next(c for c in calls(d, result["id"]) if c["cli"] == "gemini")
    assert "test the empty input" in prompt_of(gem_call)


def test_a_reviewer_without_a_verdict_is_asked_once_more_then_the_run_fails(gated: Daemon) -> None:
    d = gated
    reviewer(d, "verdict_garbage")
    d.cli("loop", "add", "vague", "--every", "1h", "--paused", "--chain", "cc-first,gem", "--prompt", "do it",
          "--review", "reviewer")  # fmt: skip
    result = run(d, "vague")
    assert result["status"] == "failed" and "the reviewer gave no verdict" in result["error"]
    roles = [a["role"] for a in result["attempt_list"]]
    assert roles == ["work", "review", "review"]  # one retry, never a silent accept, no escalation


def test_the_reviewers_cost_counts_toward_the_runs_budget(gated: Daemon) -> None:
    """Each stand-in attempt costs $0.0009: work + review exceed $0.0015, so after the rejection
    nothing more may run (without the reviewer's cost the next step would get the task)."""
    d = gated
    reviewer(d, "verdict_reject")
    d.cli("loop", "add", "frugal", "--every", "1h", "--paused", "--chain", "cc-first,gem", "--prompt", "do it",
          "--review", "reviewer", "--max-cost", "0.0015")  # fmt: skip
    result = run(d, "frugal")
    assert result["status"] == "failed" and result["error"].startswith("budget: spent $0.0018")
    assert [a["role"] for a in result["attempt_list"]] == ["work", "review"]
    text = d.cli("runs", "show", str(result["id"])).stdout
    assert "attempt 2 (review)" in text and "gate: rejected: the reviewer rejected it" in text
