"""The agent backends end to end: a real daemon runs the stand-in CLIs (which replay the real
programs' captured output) under named profiles; attempts, tokens, failover, scrubbing."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness import Daemon, capture_folder, standin_env, wait_until
from tests.integration import fake_provider as fp

SECRET = "sk-ant-api03-TESTSECRET-0123456789"
RESET_EPOCH = 1795300000  # what the stand-ins report as the limit's reset


@pytest.fixture(scope="module")
def agents() -> Iterator[Daemon]:
    capture_folder("cc_ok_stream")  # fail, not skip, without the captures the stand-ins replay
    root = Path(tempfile.mkdtemp(prefix="fla-", dir="/tmp"))
    standin_dir = root / "standin"
    standin_dir.mkdir()
    d = Daemon(root / "home", "--kill-grace", "0.5s", "--stop-grace", "1s")
    d.env.update(
        standin_env(standin_dir),
        STANDIN_RESET_EPOCH=str(RESET_EPOCH),
        ANTHROPIC_API_KEY="key-in-the-daemons-environment",  # must never reach a subscription profile
    )
    d.start()
    d.standin_dir = standin_dir  # type: ignore[attr-defined]
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def set_scenario(d: Daemon, profile: str, scenario: str) -> None:
    (d.standin_dir / f"{profile}.scenario").write_text(scenario)  # type: ignore[attr-defined]


def calls(d: Daemon, run_id: int) -> list[dict]:
    path = d.standin_dir / "calls.jsonl"  # type: ignore[attr-defined]
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e for e in entries if e["env"].get("FLEETD_RUN_ID") == str(run_id)]


def run_to_end(d: Daemon, loop: str) -> dict:
    return d.wait_run(d.json("loop", "run", loop)["id"])


def first_attempt(d: Daemon, run_id: int) -> dict:
    """The run's first attempt once it has ended (the run itself may go on, e.g. waiting for a reset)."""
    return wait_until(
        lambda: next((a for a in d.json("runs", "show", str(run_id))["attempt_list"] if a["finished_at"]), None),
        timeout=30,
        what=f"run {run_id}'s first attempt",
    )


def waits_then_resumes(d: Daemon, run_id: int, profile: str) -> dict:
    """A single-profile run that hit a limit waits for the reset, then succeeds once the profile is fine."""
    assert wait_until(lambda: d.json("runs", "show", str(run_id))["status"] == "waiting", what="waiting")
    set_scenario(d, profile, "ok")
    run = d.wait_run(run_id, timeout=30)
    assert run["status"] == "succeeded" and run["attempt_list"][-1]["profile"] == profile
    return run


def test_claude_subscription_profile_success_records_usage(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "cc_sub", "--backend", "claude_code")
    set_scenario(d, "cc_sub", "ok")
    d.cli("loop", "add", "cc_ok", "--every", "1h", "--backend", "claude_code", "--profile", "cc_sub",
          "--prompt", "say hi", "--model", "opus", "--agent-arg=--max-turns", "--agent-arg", "3")  # fmt: skip
    run = run_to_end(d, "cc_ok")
    assert run["status"] == "succeeded" and run["profile"] == "cc_sub" and run["attempts"] == 1
    (attempt,) = run["attempt_list"]
    assert attempt["tokens"] == {"input": 123, "output": 9, "cache_read": 67, "cache_write": 45}
    assert attempt["cost_usd"] == pytest.approx(0.0009104)
    assert attempt["session_id"] == "44ce97b6-bd26-4495-bf03-46c93a098e16"
    assert attempt["outcome"] == "succeeded" and attempt["model"]
    (call,) = calls(d, run["id"])
    assert call["argv"] == ["-p", "--output-format", "stream-json", "--verbose", "--model", "opus",
                            "--max-turns", "3", "--", "say hi"]  # fmt: skip
    profile_dir = d.json("profile", "show", "cc_sub")["config_dir"]
    assert call["env"]["CLAUDE_CONFIG_DIR"] == profile_dir
    assert stat.S_IMODE(os.stat(profile_dir).st_mode) == 0o700
    assert "ANTHROPIC_API_KEY" not in call["env"]  # a key would win over the subscription login
    assert call["env"]["CLAUDE_CODE_MAX_RETRIES"] == "0"
    assert call["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    tmpdir = call["env"]["TMPDIR"]
    assert call["tmpdir_exists"] and tmpdir.startswith(str(d.home / "tmp")) and not os.path.exists(tmpdir)


def test_usage_limit_fails_over_to_the_next_profile_and_scrubs_its_key(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "cc_limited", "--backend", "claude_code")
    d.cli("profile", "add", "cc_api", "--backend", "claude_code", "--api-key-stdin",
          "--price-input", "3", "--price-output", "15", input=SECRET + "\n")  # fmt: skip
    set_scenario(d, "cc_limited", "usage_limit")
    set_scenario(d, "cc_api", "leak_secret")
    d.cli("loop", "add", "cc_fail", "--every", "1h", "--backend", "claude_code",
          "--profile", "cc_limited,cc_api", "--prompt", "review")  # fmt: skip
    run = run_to_end(d, "cc_fail")
    assert run["status"] == "succeeded" and run["attempts"] == 2 and run["profile"] == "cc_api"
    first, second = run["attempt_list"]
    assert (first["profile"], first["outcome"], first["error_class"]) == ("cc_limited", "failed", "rate_limited")
    assert datetime.fromisoformat(first["reset_at"]) == datetime.fromtimestamp(RESET_EPOCH, UTC)
    assert "You've hit your limit" in first["error"]
    assert (second["profile"], second["outcome"]) == ("cc_api", "succeeded")
    limited_call, api_call = calls(d, run["id"])
    assert "ANTHROPIC_API_KEY" not in limited_call["env"]
    assert api_call["env"]["ANTHROPIC_API_KEY"] == SECRET
    log = d.cli("runs", "logs", str(run["id"])).stdout
    assert "key=[REDACTED]" in log and SECRET not in log
    assert re.search(r"route: cc_limited: rate_limited, resting until [^;]+; trying the next candidate", log), log
    for path in d.home.rglob("*"):
        if path.is_file() and path.name != "secrets.json":
            assert SECRET.encode() not in path.read_bytes(), path
    secrets = d.home / "secrets.json"
    assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o600


def test_auth_failure_moves_on_and_contract_failure_stops(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "cc_expired", "--backend", "claude_code")
    d.cli("profile", "add", "cc_garbled", "--backend", "claude_code")
    set_scenario(d, "cc_expired", "auth")
    set_scenario(d, "cc_garbled", "garbled")
    d.cli("loop", "add", "cc_auth", "--every", "1h", "--backend", "claude_code",
          "--profile", "cc_expired,cc_garbled,cc_sub", "--prompt", "x")  # fmt: skip
    run = run_to_end(d, "cc_auth")
    classes = [(a["profile"], a["error_class"]) for a in run["attempt_list"]]
    assert classes[0] == ("cc_expired", "auth")
    # Garbled output is nobody's fault we can name: the run stops there instead of burning more profiles.
    assert classes[1][0] == "cc_garbled" and classes[1][1] != "rate_limited"
    assert run["status"] == "failed" and len(classes) == 2
    assert run["attempt_list"][1]["outcome"] in ("unknown", "failed")


def test_a_cli_missing_from_path_is_unavailable_not_contract(agents: Daemon) -> None:
    # The worker cannot run here; the task is not wrong: the router skips the candidate instead of stopping.
    d = agents
    d.cli("profile", "add", "cc_nopath", "--backend", "claude_code")
    d.cli("loop", "add", "cc_nopath", "--every", "1h", "--backend", "claude_code", "--profile", "cc_nopath",
          "--prompt", "x", "--env", "PATH=/nonexistent")  # fmt: skip
    attempt = first_attempt(d, d.json("loop", "run", "cc_nopath")["id"])
    assert (attempt["outcome"], attempt["error_class"]) == ("failed", "unavailable")
    assert "claude not found on PATH" in attempt["error"]


def test_codex_usage_and_window_state_from_its_rollout(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "cx", "--backend", "codex")
    set_scenario(d, "cx", "ok")
    d.cli("loop", "add", "cx_ok", "--every", "1h", "--backend", "codex", "--prompt", "hi", "--profile", "cx")
    run = run_to_end(d, "cx_ok")
    assert run["status"] == "succeeded"
    (attempt,) = run["attempt_list"]
    assert attempt["session_id"] == "01a2006f-309f-7bf3-840a-01322a7670c6"
    assert attempt["tokens"]["output"] == 33
    windows = {w["window_minutes"]: w for w in attempt["windows"]}
    assert windows[300]["used_percent"] == 42.0
    assert datetime.fromisoformat(windows[300]["resets_at"]) == datetime.fromtimestamp(RESET_EPOCH, UTC)
    (call,) = calls(d, run["id"])
    assert call["stdin_closed"] is True  # codex waits for stdin to close
    assert call["argv"][:3] == ["exec", "--json", "--skip-git-repo-check"] and call["argv"][-2:] == ["--", "hi"]
    assert call["env"]["CODEX_HOME"] == d.json("profile", "show", "cx")["config_dir"]


def test_codex_usage_limit_is_rate_limited(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "cx_lim", "--backend", "codex")
    set_scenario(d, "cx_lim", "usage_limit +2")
    d.cli("loop", "add", "cx_lim", "--every", "1h", "--backend", "codex", "--prompt", "hi", "--profile", "cx_lim")
    run_id = d.json("loop", "run", "cx_lim")["id"]
    attempt = first_attempt(d, run_id)
    assert attempt["error_class"] == "rate_limited" and attempt["reset_at"] is not None
    waits_then_resumes(d, run_id, "cx_lim")


def test_codex_default_provider_reconnects_end_the_attempt_at_the_first_429(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "cx_re", "--backend", "codex", "--default-reset", "90s")
    set_scenario(d, "cx_re", "429_reconnecting")
    d.cli("loop", "add", "cx_re", "--every", "1h", "--backend", "codex", "--prompt", "hi", "--profile", "cx_re")
    started = time.monotonic()
    run_id = d.json("loop", "run", "cx_re")["id"]
    attempt = first_attempt(d, run_id)
    # The stand-in reconnects five times, 3 s apart, as Codex does on its built-in provider.
    assert time.monotonic() - started < 6
    assert attempt["error_class"] == "rate_limited"
    assert "ending the attempt" in d.cli("runs", "logs", str(run_id)).stdout
    # No reset time in a plain 429: the profile rests its --default-reset and the run waits that long.
    waiting = wait_until(lambda: (r := d.json("runs", "show", str(run_id)))["status"] == "waiting" and r,
                         what="the run to wait")  # fmt: skip
    pause = datetime.fromisoformat(waiting["wait_until"]) - datetime.fromisoformat(attempt["finished_at"])
    assert 89 <= pause.total_seconds() <= 91


def test_gemini_quota_exit_173_and_own_retries_turned_down(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "gem", "--backend", "gemini", "--api-key-stdin", input="gem-key-123\n")
    set_scenario(d, "gem", "429")
    # A key profile is metered: a loop reaches it by name, or by allowing the tier.
    refused = d.cli("loop", "add", "gm", "--every", "1h", "--backend", "gemini", "--prompt", "hi", check=False)
    assert refused.returncode == 2 and "--tiers local,subscription,metered" in refused.stderr
    d.cli("loop", "add", "gm", "--every", "1h", "--backend", "gemini", "--prompt", "hi", "--model", "gemini-2.5-flash",
          "--tiers", "local,subscription,metered")  # fmt: skip
    run_id = d.json("loop", "run", "gm")["id"]
    attempt = first_attempt(d, run_id)
    assert attempt["exit_code"] == 173 and attempt["error_class"] == "rate_limited"
    waits_then_resumes(d, run_id, "gem")
    run = d.json("runs", "show", str(run_id))
    gemini_home = Path(d.json("profile", "show", "gem")["config_dir"])
    settings = json.loads((gemini_home / ".gemini" / "settings.json").read_text())
    assert settings["general"]["maxAttempts"] == 1
    call = calls(d, run["id"])[0]
    assert call["argv"] == ["--prompt=hi", "-o", "json", "-m", "gemini-2.5-flash"]
    assert call["env"]["GEMINI_API_KEY"] == "gem-key-123"


def test_aider_rate_limit_ends_the_attempt_at_the_first_line(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "aid", "--backend", "aider", "--api-key-stdin", input="aider-key\n")
    set_scenario(d, "aid", "429")
    d.cli("loop", "add", "ai", "--every", "1h", "--backend", "aider", "--prompt", "hi", "--model", "openai/fake",
          "--profile", "aid")  # fmt: skip
    started = time.monotonic()
    run_id = d.json("loop", "run", "ai")["id"]
    attempt = first_attempt(d, run_id)
    took = time.monotonic() - started
    # The stand-in sits out ~64 s of retries, as the real aider does; fleetd must not wait for them.
    assert took < 15, took
    assert attempt["error_class"] == "rate_limited"
    assert "ending the attempt" in d.cli("runs", "logs", str(run_id)).stdout
    waits_then_resumes(d, run_id, "aid")


def test_aider_success_usage_from_its_analytics_log(agents: Daemon) -> None:
    d = agents
    set_scenario(d, "aid", "ok")  # recovered in the test before
    d.cli("loop", "add", "ai_ok", "--every", "1h", "--backend", "aider", "--prompt", "hi", "--model", "openai/fake",
          "--tiers", "metered")  # fmt: skip
    run = run_to_end(d, "ai_ok")
    (attempt,) = run["attempt_list"]
    assert run["status"] == "succeeded"
    assert attempt["tokens"]["input"] + attempt["tokens"]["cache_read"] + attempt["tokens"]["cache_write"] == 593
    assert attempt["tokens"]["output"] == 1


class _Provider(BaseHTTPRequestHandler):
    mode = "ok"
    seen: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Provider.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if _Provider.mode == "429":
            payload = {"error": {"message": "Rate limit reached for requests (fake)", "type": "requests",
                                 "param": None, "code": "rate_limit_exceeded"}}  # fmt: skip
            self._send(429, payload, {"retry-after": "20", "x-ratelimit-reset-requests": "6m0s"})
        else:
            payload = {"id": "c1", "object": "chat.completion", "model": body["model"],
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "local says hi"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25}}  # fmt: skip
            self._send(200, payload, {})

    def _send(self, status: int, payload: dict, headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_openai_compat_local_model_ok_and_429(agents: Daemon) -> None:
    d = agents
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        created = d.json("profile", "add", "local", "--backend", "openai_compat", "--base-url", url, "--model", "qwen3")
        assert created["tier"] == "local" and created["has_api_key"] is False
        d.cli("loop", "add", "oc", "--every", "1h", "--backend", "openai_compat", "--prompt", "hello")
        run = run_to_end(d, "oc")
        (attempt,) = run["attempt_list"]
        assert run["status"] == "succeeded" and attempt["model"] == "qwen3"
        assert attempt["tokens"]["input"] + attempt["tokens"]["cache_read"] == 21 and attempt["tokens"]["output"] == 4
        assert "local says hi" in d.cli("runs", "logs", str(run["id"])).stdout
        assert _Provider.seen[-1]["path"] == "/v1/chat/completions" and _Provider.seen[-1]["auth"] is None
        _Provider.mode = "429"
        run_id = d.json("loop", "run", "oc")["id"]
        attempt = first_attempt(d, run_id)
        assert attempt["error_class"] == "rate_limited"
        reset = datetime.fromisoformat(attempt["reset_at"])
        # x-ratelimit-reset-requests: 6m0s and retry-after: 20 → the run waits until the reset it was given.
        assert 0 < (reset - datetime.fromisoformat(attempt["finished_at"])).total_seconds() <= 361
        waiting = wait_until(lambda: (r := d.json("runs", "show", str(run_id)))["status"] == "waiting" and r,
                             what="the run to wait")  # fmt: skip
        assert datetime.fromisoformat(waiting["wait_until"]) == reset
    finally:
        server.shutdown()


def test_a_local_model_that_hangs_is_cut_at_the_attempt_timeout_and_the_next_step_answers(agents: Daemon) -> None:
    # The call waited with no timeout of its own: a hung local server held the run until its --timeout (and, without
    # one, for ever), the chain's next step never tried.
    d = agents
    with fp.running_fake_provider("ok") as hung, fp.running_fake_provider("ok") as good:
        hung.latency = 30.0
        for name, server in (("oc-hung", hung), ("oc-good", good)):
            d.cli("profile", "add", name, "--backend", "openai_compat", "--base-url", f"{server.base_url}/v1",
                  "--model", "m")  # fmt: skip
        d.cli("loop", "add", "oc_cut", "--every", "1h", "--paused", "--chain", "oc-hung,oc-good", "--prompt", "hi",
              "--attempt-timeout", "1s", "--timeout", "1m")  # fmt: skip
        run = run_to_end(d, "oc_cut")
        assert run["status"] == "succeeded" and run["profile"] == "oc-good", run
        classes = [(a["profile"], a["error_class"]) for a in run["attempt_list"]]
        assert classes == [("oc-hung", "transient")] * 3 + [("oc-good", None)], classes
        assert run["attempt_list"][0]["error"].endswith("attempt timed out after 1s (--attempt-timeout)")
        hung.latency = 0.0


def test_hanging_agent_times_out(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "cc_hang", "--backend", "claude_code")
    set_scenario(d, "cc_hang", "hang")
    d.cli("loop", "add", "cc_h", "--every", "1h", "--backend", "claude_code", "--profile", "cc_hang",
          "--prompt", "x", "--timeout", "1s")  # fmt: skip
    run = run_to_end(d, "cc_h")
    assert run["status"] == "timed_out"
    # Its route says how it ended (it stopped at its `try`, as if the run were still under way).
    assert (run["route"][-1]["kind"], run["route"][-1]["detail"]) == ("stop", "timed out after 1s"), run["route"]
    # Its attempt was cut by the run's end, not failed by its provider (it said "transient: exited -15 without output").
    (attempt,) = run["attempt_list"]
    assert (attempt["error_class"], attempt["error"]) == (None, "cut by the run's --timeout (1s)"), attempt


def test_profile_env_and_login(agents: Daemon) -> None:
    d = agents
    d.cli("profile", "add", "cc_login", "--backend", "claude_code")
    profile_dir = d.json("profile", "show", "cc_login")["config_dir"]
    env = d.cli("profile", "env", "cc_login").stdout.splitlines()
    assert f"export CLAUDE_CONFIG_DIR={profile_dir}" in env and "unset ANTHROPIC_API_KEY" in env
    login = d.cli("profile", "login", "cc_login")
    assert login.stdout.strip() == f"login for {profile_dir}"
    refused = d.cli("profile", "login", "local", check=False)
    assert refused.returncode == 1 and "has no login to run; its authentication: none needed" in refused.stderr


def test_runs_result_and_readable_logs_across_backends(agents: Daemon) -> None:
    """A chain whose claude step hits its limit and whose codex step succeeds: `runs result` is codex's final
    message; `runs logs` renders each attempt with its own backend's renderer; `--raw` keeps the JSON."""
    d = agents
    d.cli("profile", "add", "rd_cc", "--backend", "claude_code")
    d.cli("profile", "add", "rd_cx", "--backend", "codex")
    set_scenario(d, "rd_cc", "usage_limit")
    set_scenario(d, "rd_cx", "ok")
    d.cli("loop", "add", "readable", "--every", "1h", "--chain", "rd_cc,rd_cx", "--prompt", "hi")
    run = run_to_end(d, "readable")
    assert run["status"] == "succeeded" and [a["backend"] for a in run["attempt_list"]] == ["claude_code", "codex"]
    limited, ok = run["attempt_list"]
    assert limited["result_text"] is None and ok["result_text"] == "hi"
    # The run's backend is its last worker's, as its profile is (it said claude_code beside profile rd_cx).
    assert (run["backend"], run["profile"]) == ("codex", "rd_cx")
    listed = [json.loads(line) for line in d.cli("events", "--json", "--limit", "200").stdout.splitlines()]
    ended = next(e for e in listed if e["type"] == "run.succeeded" and e["data"]["run_id"] == run["id"])
    assert (ended["backend"], ended["profile"]) == ("codex", "rd_cx")
    rid = str(run["id"])
    assert d.cli("runs", "result", rid).stdout == "hi\n"
    answer = d.json("runs", "result", rid)
    assert answer == {"run": run["id"], "loop": "readable", "status": "succeeded", "attempt": 2, "step": 2,
                      "backend": "codex", "profile": "rd_cx", "model": ok["model"],
                      "session_id": "01a2006f-309f-7bf3-840a-01322a7670c6", "result_text": "hi"}  # fmt: skip
    assert "    said: hi" in d.cli("runs", "show", rid).stdout

    raw = d.cli("runs", "logs", rid, "--raw").stdout
    assert '{"type":"item.completed"' in raw and '"type":"system"' in raw
    readable = d.cli("runs", "logs", rid).stdout
    lines = readable.splitlines()
    assert not any(line.startswith("{") for line in lines), readable  # no JSON left: each line rendered
    assert any(line.startswith("[fleetd] route: attempt 1: rd_cc") for line in lines)
    assert any(line.startswith("session 01a2006f-309f-7bf3-840a-01322a7670c6") for line in lines)
    assert "hi" in lines and "done: tokens in 111 out 33" in lines
    # claude's part went through claude's renderer, codex's through codex's
    cc_part = readable.split("route: attempt 2")[0]
    assert "You've hit your limit" in cc_part and "session " in cc_part


def test_runs_result_without_one_is_a_clear_error(agents: Daemon) -> None:
    d = agents
    d.cli("loop", "add", "plain_cmd", "--every", "1h", "--command", "printf 'a\\n{\"json\": 1}\\nno end'")
    run = run_to_end(d, "plain_cmd")
    rid = str(run["id"])
    missing = d.cli("runs", "result", rid, check=False)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().endswith(f"run {rid}'s accepted attempt 1 (command) left no final message")
    # a command's output is shown as it is, rendered or not
    assert d.cli("runs", "logs", rid).stdout == d.cli("runs", "logs", rid, "--raw").stdout == 'a\n{"json": 1}\nno end'

    d.cli("loop", "add", "failing_cmd", "--every", "1h", "--command", "exit 3")
    failed = run_to_end(d, "failing_cmd")
    answer = d.cli("runs", "result", str(failed["id"]), check=False)
    assert answer.returncode == 1
    assert f"run {failed['id']} has no accepted result: it ended failed" in answer.stderr
    bad = d.cli("runs", "result", "x1", check=False)
    assert bad.returncode == 2


def test_a_profile_with_an_attempt_under_way_is_not_removed(agents: Daemon) -> None:
    """`profile rm` removed a profile (and its config directory, under the running CLI) while an attempt of a
    backend step that no loop names it in ran on it."""
    d = agents
    d.cli("profile", "add", "cc_busy", "--backend", "claude_code")
    d.cli("profile", "switch", "cc_busy")  # the backend step's active profile: tried first
    set_scenario(d, "cc_busy", "hang")
    d.cli("loop", "add", "busy", "--every", "1h", "--paused", "--chain", "claude_code", "--prompt", "x")
    run_id = d.json("loop", "run", "busy")["id"]
    (attempt,) = wait_until(lambda: d.json("runs", "show", str(run_id))["attempt_list"], what="the attempt to start")
    assert attempt["profile"] == "cc_busy"
    refused = d.cli("profile", "rm", "cc_busy", check=False)
    assert (refused.returncode, refused.stderr) == (
        1, "fleetd: profile 'cc_busy' has 1 attempt or gateway call under way: remove it once that has ended "
           "(fleetd runs list --status running)\n"
    )  # fmt: skip
    assert "cc_busy" in {p["name"] for p in d.json("profile", "list")}
    d.cli("runs", "stop", str(run_id), "--kill")
    d.cli("loop", "rm", "busy")
    d.cli("profile", "rm", "cc_busy")
