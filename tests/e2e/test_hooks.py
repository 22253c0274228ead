"""Hooks against a real daemon: a webhook receiving a real `run.failed` with a correct signature, an
exec hook, `hook test`, a hung hook that does not hold the scheduler back, bad input, the JSON
contract, and the webhook secret kept out of the database, the logs, the events and the answers."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, wait_until
from tests.hooks.receiver import receiver

SECRET = "whsec-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
HOOK_KEYS = {"name", "on", "kind", "exec", "webhook", "timeout_s", "has_secret", "created_at", "last_delivery",
             "pending", "dropped"}  # fmt: skip
DELIVERY_KEYS = {"ok", "detail", "tries", "status_code", "exit_code", "duration_ms"}


def _start(home: Path) -> Daemon:
    d = Daemon(home, "--kill-grace", "0.5s", "--stop-grace", "2s")
    d.env["FLEETD_SECRET_STORE"] = "file"  # no keyring on a test host: the opt-in file store
    return d.start()


def _events(daemon: Daemon) -> list[dict[str, Any]]:
    """`fleetd events --json`: one object per line."""
    return [json.loads(line) for line in daemon.cli("events", "--json", "--limit", "1000").stdout.splitlines()]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    path = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    d = _start(path / "home")
    yield d
    d.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_daemon(short_home: Path) -> Iterator[Daemon]:
    d = _start(short_home / "home")
    yield d
    d.stop()


def test_a_webhook_receives_a_real_run_failed_signed_and_an_exec_hook_gets_it_on_stdin(
    daemon: Daemon, tmp_path: Path
) -> None:
    out = tmp_path / "exec.jsonl"
    with receiver() as rx:
        add = ("hook", "add", "wh-fail", "--on", "run.failed", "--webhook", rx.url, "--secret-stdin", "--json")
        added = json.loads(daemon.cli(*add, input=SECRET).stdout)
        assert set(added) == HOOK_KEYS and added["has_secret"] and added["webhook"] == rx.url
        daemon.cli("hook", "add", "ex-fail", "--on", "run.*", "--exec", f"cat >> {out}")
        daemon.cli("loop", "add", "hk-bad", "--every", "1h", "--paused", "--command", "echo oops; exit 3")
        run = daemon.json("loop", "run", "hk-bad")
        daemon.wait_run(run["id"])
        request = wait_until(lambda: next(iter(rx.requests), None), what="the webhook to get run.failed")
    event = json.loads(request.body)
    assert event["type"] == "run.failed" and event["data"]["run_id"] == run["id"]
    assert event["data"]["loop"] == "hk-bad" and event["data"]["exit_code"] == 3
    assert request.headers["content-type"] == "application/json"
    assert rx.signed_correctly(request, SECRET)
    assert abs(int(request.headers["x-fleetd-timestamp"]) - datetime.now().timestamp()) < 60
    # the same event, as `fleetd events --json` shows it
    assert event in [e for e in _events(daemon) if e["type"] == "run.failed"]
    # A webhook URL can carry its token in its path (Slack's do): httpx logged every one it posted to.
    assert rx.url not in (daemon.home / "daemon-test.log").read_text(errors="replace")

    def exec_got() -> list[dict[str, Any]] | None:
        got = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
        return got if any(e["type"] == "run.failed" for e in got) else None

    got = wait_until(exec_got, what="the exec hook to get run.failed")
    assert [(e["type"], e["data"]["run_id"]) for e in got] == [("run.started", run["id"]), ("run.failed", run["id"])]
    assert got[-1] == event  # `run.*`: the run's start, then the same run.failed the webhook got
    listed = {h["name"]: h for h in daemon.json("hook", "list")}
    assert listed["wh-fail"]["last_delivery"]["ok"] and set(listed["wh-fail"]["last_delivery"]) >= DELIVERY_KEYS
    text = daemon.cli("hook", "list").stdout
    assert "wh-fail" in text and "yes" in text.splitlines()[-1] + text  # the SECRET column says yes, never the value
    daemon.cli("hook", "rm", "wh-fail")
    daemon.cli("hook", "rm", "ex-fail")


def test_hook_test_reports_the_result_and_exits_1_on_failure(daemon: Daemon, tmp_path: Path) -> None:
    with receiver() as rx:
        daemon.cli("hook", "add", "wh-test", "--on", "*", "--webhook", rx.url)
        answer = daemon.json("hook", "test", "wh-test")
        assert set(answer) == {"hook", *DELIVERY_KEYS}
        assert answer["ok"] and answer["status_code"] == 200
        assert json.loads(rx.requests[0].body)["type"] == "hook.test"
        rx.statuses = [500]
        failed = daemon.cli("hook", "test", "wh-test", check=False)
        assert failed.returncode == 1 and "FAILED: HTTP 500" in failed.stdout
        assert len(rx.requests) == 2  # a test is one try: the person at the terminal gets the answer now
    daemon.cli("hook", "add", "ex-test", "--on", "run.failed", "--exec", "echo 'cannot notify' >&2; exit 4")
    failed = daemon.cli("hook", "test", "ex-test", check=False)
    assert failed.returncode == 1 and "exit 4: cannot notify" in failed.stdout
    assert "hook.test" not in {e["type"] for e in _events(daemon)}
    for name in ("wh-test", "ex-test"):
        daemon.cli("hook", "rm", name)
    missing = daemon.cli("hook", "test", "wh-test", check=False)
    assert missing.returncode == 1 and "no hook named 'wh-test'" in missing.stderr


def test_a_failing_hook_is_logged_and_emits_hook_failed_once(daemon: Daemon) -> None:
    daemon.cli("hook", "add", "hk-broken", "--on", "run.succeeded", "--exec", "exit 5")
    daemon.cli("loop", "add", "hk-ok", "--every", "1h", "--paused", "--command", "true")
    run = daemon.json("loop", "run", "hk-ok")
    daemon.wait_run(run["id"])
    failure = wait_until(
        lambda: next((e for e in _events(daemon) if e["type"] == "hook.failed"
                      and e["data"]["hook"] == "hk-broken"), None),
        what="hook.failed",
    )  # fmt: skip
    assert failure["data"]["event_type"] == "run.succeeded" and failure["data"]["detail"] == "exit 5"
    wait_until(lambda: "hook hk-broken: event" in daemon.log_text(), what="the failure in the daemon log")
    daemon.cli("hook", "rm", "hk-broken")


def test_a_hung_hook_does_not_hold_the_scheduler_back(own_daemon: Daemon) -> None:
    daemon = own_daemon
    daemon.cli("hook", "add", "hung", "--on", "run.*", "--exec", "sleep 60", "--timeout", "1m")
    daemon.cli("loop", "add", "tick", "--every", "1s", "--command", "true")
    runs = wait_until(lambda: (r := daemon.runs("--loop", "tick")) and len(r) >= 4 and r, timeout=15,
                      what="four fires while the hook hangs")  # fmt: skip
    # Held back by the hook, a fire would wait for its 60 s; on a loaded host a fire on time can still start
    # some hundreds of milliseconds after its slot (the timer, the run's row, the spawn).
    for run in runs:
        late = datetime.fromisoformat(run["started_at"]) - datetime.fromisoformat(run["scheduled_at"])
        assert late.total_seconds() < 1.0, run
    assert {r["status"] for r in runs} <= {"succeeded", "running"}
    hung = daemon.json("hook", "list")[0]
    assert hung["pending"] >= 2 and hung["last_delivery"] is None  # still in its first delivery
    assert daemon.stop() == 0  # the hung command is killed at stop, not waited for


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["bad-type", "--on", "run.exploded", "--exec", "true"], "unknown event type 'run.exploded'"),
        (["bad-family", "--on", "nope.*", "--exec", "true"], "unknown event family"),
        (["recursive", "--on", "hook.failed", "--exec", "true"], "hook events are not delivered to hooks"),
        (["bad-url", "--on", "run.failed", "--webhook", "ftp://example.com/x"], "invalid --webhook"),
        (["bad-url2", "--on", "run.failed", "--webhook", "not a url"], "invalid --webhook"),
        (["creds", "--on", "run.failed", "--webhook", "https://u:p@example.com/x"], "'https://example.com/x': no cred"),
        (["neither", "--on", "run.failed"], "exactly one of --exec COMMAND or --webhook URL"),
        (["both", "--on", "run.failed", "--exec", "true", "--webhook", "http://127.0.0.1:1/"], "exactly one of"),
        (["no-on", "--exec", "true"], "Missing option '--on'"),
        (["../x", "--on", "run.failed", "--exec", "true"], "invalid hook name"),
        (["slow", "--on", "run.failed", "--exec", "true", "--timeout", "1h"], "at most 120s"),
        (["short-secret", "--on", "run.failed", "--webhook", "http://127.0.0.1:1/", "--secret-stdin"], "16 to"),
        (["exec-secret", "--on", "run.failed", "--exec", "true", "--secret-stdin"], "for --webhook hooks"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_saves_nothing(daemon: Daemon, args: list[str], fragment: str) -> None:
    result = daemon.cli("hook", "add", *args, check=False, input="short")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleetd: ") and fragment in lines[0], result.stderr
    assert result.stdout == ""
    assert args[0] not in {h["name"] for h in daemon.json("hook", "list")}


def test_a_duplicate_name_is_refused_and_the_first_hook_kept(daemon: Daemon) -> None:
    daemon.cli("hook", "add", "dup", "--on", "run.failed", "--exec", "true")
    again = daemon.cli("hook", "add", "dup", "--on", "run.*", "--webhook", "http://127.0.0.1:1/", check=False)
    assert again.returncode == 1 and "hook 'dup' already exists" in again.stderr
    [dup] = [h for h in daemon.json("hook", "list") if h["name"] == "dup"]
    assert dup["kind"] == "exec" and dup["on"] == ["run.failed"]
    daemon.cli("hook", "rm", "dup")


def test_the_webhook_secret_stays_out_of_the_database_logs_events_and_answers(
    own_daemon: Daemon, tmp_path: Path
) -> None:
    daemon = own_daemon
    leak = tmp_path / "leak.txt"  # outside FLEETD_HOME: the run prints it, the loop's definition does not hold it
    leak.write_text(SECRET + "\n")
    with receiver() as rx:
        daemon.cli("hook", "add", "signed", "--on", "run.*", "--webhook", rx.url, "--secret-stdin", input=SECRET)
        daemon.cli("hook", "test", "signed")
        # A run that prints the secret: its log shows it redacted (the scrubber knows webhook secrets too).
        daemon.cli("loop", "add", "leaky", "--every", "1h", "--paused", "--command", f"cat {leak}; exit 1")
        run = daemon.json("loop", "run", "leaky")
        daemon.wait_run(run["id"])
        wait_until(lambda: len(rx.requests) >= 2, what="the run's events delivered")
        assert rx.signed_correctly(rx.requests[-1], SECRET)
    assert "[REDACTED]" in daemon.cli("runs", "logs", str(run["id"])).stdout
    answers = [daemon.cli(*args).stdout for args in (
        ("hook", "list", "--json"), ("hook", "list"), ("events", "--json", "--limit", "1000"),
        ("runs", "show", str(run["id"]), "--json"), ("runs", "logs", str(run["id"])),
    )]  # fmt: skip
    daemon.cli("hook", "rm", "signed")
    daemon.stop()
    stored = b"".join(p.read_bytes() for p in daemon.home.rglob("*") if p.is_file() and p.name != "secrets.json")
    for text in [*answers, daemon.log_text()]:
        assert SECRET not in text
    assert SECRET.encode() not in stored  # the database (and its WAL), the run logs, the daemon log
    assert "hook:signed" not in (daemon.home / "secrets.json").read_text()  # removed with the hook
