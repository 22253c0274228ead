"""The REAL agent CLIs against the loopback fake provider: success, rate-limit and failure-class runs.

Each CLI test is skipped unless ``scripts/install-agents.sh`` installed that CLI into ``.cache/agents/bin``. The
expected shapes are those of the captures in tests/fixtures/captures (same CLI versions). Only 127.0.0.1 is
contacted: every child gets a clean environment (agents.agent_env) whose proxy variables point at the fake
provider, which refuses and records any outside host asked for (``proxy_attempts``), and each test asserts that
list stays empty.

The fake provider itself is tested at the end of this module with urllib, so those tests run everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers import aider as aider_parser
from fleetd.backends.parsers import claude_code as claude_parser
from fleetd.backends.parsers import codex as codex_parser
from fleetd.backends.parsers import gemini as gemini_parser
from fleetd.backends.parsers.verdict import extract_verdict
from fleetd.records.result import ParsedOutput, Verdict
from tests.harness import wait_until
from tests.integration import agents
from tests.integration import fake_provider as fp
from tests.integration.fake_provider import FakeProvider, running_fake_provider

PROMPT = "say hi"
RUN_TIMEOUT = 120.0  # seconds, per child
FAST_FAIL_LIMIT = 15.0  # seconds: a rate-limited run with the CLI's retries turned down must end well before this
SLOW = os.environ.get("FLEETD_SLOW_INTEGRATION") == "1"

AIDER_RATE_LIMIT_LINE = "The API provider has rate limited you. Try again later or check your quotas."


@dataclass
class AgentRun:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall: float  # start -> exit
    first_call_to_exit: float | None  # the server's first model call -> exit
    stopped_at_line: str | None = None  # set when the run was ended by `stop_on`
    first_call_to_stop: float | None = None
    profile_dir: Path = field(default_factory=Path)
    workdir: Path = field(default_factory=Path)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


def require(name: str) -> Path:
    return agents.require_agent(name)


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with running_fake_provider() as provider:
        yield provider


def run_agent(
    name: str,
    server: FakeProvider,
    tmp_path: Path,
    *,
    api: str,
    stop_on: str | Callable[[str], bool] | None = None,
    on_stop: Callable[[subprocess.Popen[str]], None] | None = None,
    timeout: float = RUN_TIMEOUT,
    base_url: str | None = None,
    drop_flags: tuple[str, ...] = (),
    add_flags: tuple[str, ...] = (),
) -> AgentRun:
    """Run the real CLI once against ``server`` (or ``base_url``) in private dirs under tmp_path.

    With ``stop_on`` (a substring, or a predicate over the line), the first stdout line it matches triggers
    ``on_stop(process)`` (default: SIGTERM). ``drop_flags`` leaves those (valueless) flags out of agents.agent_argv.
    """
    exe = require(name)
    base_url = base_url or server.base_url
    run_dir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"  # several runs may share one tmp_path
    profile_dir = run_dir / "profile"
    workdir = run_dir / "work"
    child_tmp = run_dir / "tmp"
    workdir.mkdir(parents=True)
    child_tmp.mkdir()
    agents.prepare_profile(name, base_url, profile_dir)
    env = agents.agent_env(name, base_url, profile_dir, child_tmp)
    argv = agents.agent_argv(name, PROMPT, base_url=base_url, profile_dir=profile_dir, executable=exe)
    argv = [arg for arg in argv if arg not in drop_flags]
    end = argv.index("--") if "--" in argv else len(argv)  # options go before the prompt's "--"
    argv[end:end] = add_flags
    matches = stop_on if callable(stop_on) else (lambda line: stop_on is not None and stop_on in line)

    out: list[str] = []
    err: list[str] = []
    stopped: list[tuple[str, float]] = []
    start = time.monotonic()
    process = subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )

    def read_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            out.append(line)
            if not stopped and matches(line):
                stopped.append((line.rstrip("\n"), time.monotonic()))
                (on_stop or (lambda p: p.send_signal(signal.SIGTERM)))(process)

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            err.append(line)

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for reader in readers:
            reader.join(timeout=5)
        pytest.fail(
            f"{name} did not exit within {timeout:.0f} s\n--- stdout\n{''.join(out)}\n--- stderr\n{''.join(err)}"
        )
    end = time.monotonic()
    for reader in readers:
        reader.join(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of the process group, if any
    first_call = server.first_call_at.get(api)
    return AgentRun(
        argv=argv,
        returncode=returncode,
        stdout="".join(out),
        stderr="".join(err),
        wall=end - start,
        first_call_to_exit=None if first_call is None else end - first_call,
        stopped_at_line=stopped[0][0] if stopped else None,
        first_call_to_stop=None if not stopped or first_call is None else stopped[0][1] - first_call,
        profile_dir=profile_dir,
        workdir=workdir,
    )


def report(record_property: Callable[[str, object], None], name: str, run: AgentRun) -> None:
    record_property(f"{name}_wall_s", round(run.wall, 3))
    if run.first_call_to_exit is not None:
        record_property(f"{name}_first_call_to_exit_s", round(run.first_call_to_exit, 3))
    first = f"{run.first_call_to_exit:.2f}" if run.first_call_to_exit is not None else "-"
    print(f"\n[{name}] exit {run.returncode}, wall {run.wall:.2f} s, first model call -> exit {first} s")


def assert_loopback_only(server: FakeProvider) -> None:
    assert server.proxy_attempts == [], f"a CLI asked for outside hosts: {server.proxy_attempts}"


# --- Claude Code ---------------------------------------------------------------------------------------------------


def test_claude_success(server: FakeProvider, tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    run = run_agent("claude", server, tmp_path, api=fp.API_ANTHROPIC)
    report(record_property, "claude_ok", run)
    assert run.returncode == 0, run.describe()
    assert run.stderr == ""
    lines = run.json_lines()
    init, result = lines[0], lines[-1]
    assert (init["type"], init["subtype"]) == ("system", "init")
    assert init["claude_code_version"] == agents.VERSIONS["claude"]
    assert init["apiKeySource"] == "ANTHROPIC_API_KEY"
    assert init["model"] == agents.DEFAULT_MODELS["claude"]

    assistant = [line for line in lines if line["type"] == "assistant"]
    assert len(assistant) == 1
    message = assistant[0]["message"]
    assert message["content"] == [{"type": "text", "text": fp.REPLY_TEXT}]
    assert message["usage"]["input_tokens"] == fp.ANTHROPIC_INPUT_TOKENS
    assert "error" not in assistant[0]

    assert result["type"] == "result"
    assert (result["subtype"], result["is_error"], result["result"]) == ("success", False, fp.REPLY_TEXT)
    assert result["terminal_reason"] == "completed"
    assert result["api_error_status"] is None
    usage = result["usage"]
    assert usage["input_tokens"] == fp.ANTHROPIC_INPUT_TOKENS
    assert usage["cache_creation_input_tokens"] == fp.ANTHROPIC_CACHE_CREATION_INPUT_TOKENS
    assert usage["cache_read_input_tokens"] == fp.ANTHROPIC_CACHE_READ_INPUT_TOKENS
    assert usage["output_tokens"] == fp.ANTHROPIC_OUTPUT_TOKENS
    model_usage = result["modelUsage"][agents.DEFAULT_MODELS["claude"]]
    assert (model_usage["inputTokens"], model_usage["outputTokens"]) == (
        fp.ANTHROPIC_INPUT_TOKENS,
        fp.ANTHROPIC_OUTPUT_TOKENS,
    )
    assert model_usage["cacheReadInputTokens"] == fp.ANTHROPIC_CACHE_READ_INPUT_TOKENS
    assert model_usage["cacheCreationInputTokens"] == fp.ANTHROPIC_CACHE_CREATION_INPUT_TOKENS
    assert result["total_cost_usd"] > 0

    assert server.calls[fp.API_ANTHROPIC] == 1
    assert {path.split("?")[0] for path in server.paths} == {"POST /v1/messages"}
    assert list((run.profile_dir / "projects").glob("*/*.jsonl")), "no transcript under CLAUDE_CONFIG_DIR"
    assert_loopback_only(server)


def test_claude_rate_limited(
    server: FakeProvider, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    server.mode = "429"
    run = run_agent("claude", server, tmp_path, api=fp.API_ANTHROPIC)
    report(record_property, "claude_429", run)
    assert run.returncode == 1, run.describe()
    lines = run.json_lines()
    assert not [line for line in lines if line.get("subtype") == "api_retry"], "CLAUDE_CODE_MAX_RETRIES=0 ignored"
    assistant = [line for line in lines if line["type"] == "assistant"]
    assert len(assistant) == 1
    assert assistant[0]["error"] == "rate_limit"
    assert assistant[0]["is_api_error_message"] is True
    assert assistant[0]["api_error_status"] == 429
    assert assistant[0]["message"]["model"] == "<synthetic>"

    result = lines[-1]
    assert result["type"] == "result"
    assert (result["subtype"], result["is_error"]) == ("success", True)
    assert result["api_error_status"] == 429
    assert result["api_error_type"] == "rate_limit_error"
    assert result["terminal_reason"] == "api_error"
    assert result["result"] == f"API Error: Request rejected (429) · {fp.ANTHROPIC_RATE_LIMIT_MESSAGE}"
    assert result["usage"]["input_tokens"] == 0
    assert result["modelUsage"] == {}

    assert server.calls[fp.API_ANTHROPIC] == 1
    assert run.wall < FAST_FAIL_LIMIT
    assert_loopback_only(server)


# --- Codex CLI -----------------------------------------------------------------------------------------------------


def _codex_events(run: AgentRun) -> list[dict[str, Any]]:
    # Codex reports an unknown model as a non-fatal item; the default model is a known one, but accept it anyway.
    return [
        event
        for event in run.json_lines()
        if not (event["type"] == "item.completed" and event["item"]["type"] == "error")
    ]


def test_codex_success(server: FakeProvider, tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    run = run_agent("codex", server, tmp_path, api=fp.API_RESPONSES)
    report(record_property, "codex_ok", run)
    assert run.returncode == 0, run.describe()
    events = _codex_events(run)
    assert [event["type"] for event in events] == ["thread.started", "turn.started", "item.completed", "turn.completed"]
    assert events[2]["item"]["type"] == "agent_message"
    assert events[2]["item"]["text"] == fp.REPLY_TEXT
    assert events[3]["usage"] == {
        "input_tokens": fp.RESPONSES_INPUT_TOKENS,
        "cached_input_tokens": fp.RESPONSES_CACHED_INPUT_TOKENS,
        "cache_write_input_tokens": 0,
        "output_tokens": fp.RESPONSES_OUTPUT_TOKENS,
        "reasoning_output_tokens": fp.RESPONSES_REASONING_OUTPUT_TOKENS,
    }
    assert "Reading additional input from stdin..." in run.stderr

    assert server.calls[fp.API_RESPONSES] == 1
    assert server.paths == ["POST /v1/responses"]
    request = server.requests_for(fp.API_RESPONSES)[0]
    assert request.headers.get("authorization") == f"Bearer {agents.FAKE_API_KEY}"
    thread_id = events[0]["thread_id"]
    assert list((run.profile_dir / "sessions").rglob(f"rollout-*{thread_id}.jsonl")), "no rollout in CODEX_HOME"
    assert_loopback_only(server)


def test_codex_rate_limited(
    server: FakeProvider, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    server.mode = "429"
    run = run_agent("codex", server, tmp_path, api=fp.API_RESPONSES)
    report(record_property, "codex_429", run)
    assert run.returncode == 1, run.describe()
    message = "exceeded retry limit, last status: 429 Too Many Requests"
    assert _codex_events(run)[1:] == [
        {"type": "turn.started"},
        {"type": "error", "message": message},
        {"type": "turn.failed", "error": {"message": message}},
    ]
    assert "Reconnecting" not in run.stdout, "stream_max_retries=0 ignored"
    assert server.calls[fp.API_RESPONSES] == 1
    assert run.wall < FAST_FAIL_LIMIT
    assert_loopback_only(server)


def test_codex_insufficient_quota(server: FakeProvider, tmp_path: Path) -> None:
    server.mode = "quota"
    run = run_agent("codex", server, tmp_path, api=fp.API_RESPONSES)
    assert run.returncode == 1, run.describe()
    message = "Quota exceeded. Check your plan and billing details."
    assert _codex_events(run)[-2:] == [
        {"type": "error", "message": message},
        {"type": "turn.failed", "error": {"message": message}},
    ]
    assert server.calls[fp.API_RESPONSES] == 1


# --- Gemini CLI ----------------------------------------------------------------------------------------------------


def _trailing_json_object(text: str) -> dict[str, Any]:
    """The pretty-printed JSON object at the end of ``text`` (Gemini CLI writes its error report last on stderr)."""
    lines = text.rstrip().splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index] == "{":
            return json.loads("\n".join(lines[index:]))
    raise AssertionError(f"no trailing JSON object in:\n{text[-3000:]}")


def test_gemini_success(server: FakeProvider, tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    run = run_agent("gemini", server, tmp_path, api=fp.API_GEMINI)
    report(record_property, "gemini_ok", run)
    assert run.returncode == 0, run.describe()
    output = json.loads(run.stdout)
    assert output["response"] == fp.REPLY_TEXT
    assert output["session_id"]
    model = agents.DEFAULT_MODELS["gemini"]
    assert list(output["stats"]["models"]) == [model]
    stats = output["stats"]["models"][model]
    assert stats["tokens"] == {
        "input": fp.GEMINI_PROMPT_TOKENS - fp.GEMINI_CACHED_TOKENS,
        "prompt": fp.GEMINI_PROMPT_TOKENS,
        "candidates": fp.GEMINI_CANDIDATES_TOKENS,
        "total": fp.GEMINI_TOTAL_TOKENS,
        "cached": fp.GEMINI_CACHED_TOKENS,
        "thoughts": fp.GEMINI_THOUGHTS_TOKENS,
        "tool": 0,
    }
    assert (stats["api"]["totalRequests"], stats["api"]["totalErrors"]) == (1, 0)

    assert server.calls[fp.API_GEMINI] == 1
    assert server.paths == [f"POST /v1beta/models/{model}:streamGenerateContent?alt=sse"]
    request = server.requests_for(fp.API_GEMINI)[0]
    assert request.headers.get("x-goog-api-key") == agents.FAKE_API_KEY
    assert_loopback_only(server)


def test_gemini_rate_limited(
    server: FakeProvider, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    server.mode = "429"
    run = run_agent("gemini", server, tmp_path, api=fp.API_GEMINI)
    report(record_property, "gemini_429", run)
    assert run.returncode == 173, run.describe()  # process.exit(429) -> 429 mod 256
    assert run.stdout == ""
    report_json = _trailing_json_object(run.stderr)
    assert report_json["session_id"]
    error = report_json["error"]
    assert error["code"] == 429
    assert error["message"] == f"{fp.GEMINI_RATE_LIMIT_MESSAGE}\nSuggested retry after {fp.RETRY_AFTER_SECONDS}s."
    assert "RetryableQuotaError" in run.stderr
    assert "Max attempts reached" in run.stderr
    assert server.calls[fp.API_GEMINI] == 1, "general.maxAttempts=1 ignored"
    assert run.wall < FAST_FAIL_LIMIT
    assert_loopback_only(server)


def test_gemini_daily_quota(server: FakeProvider, tmp_path: Path) -> None:
    server.mode = "quota"
    run = run_agent("gemini", server, tmp_path, api=fp.API_GEMINI)
    assert run.returncode == 173, run.describe()
    error = _trailing_json_object(run.stderr)["error"]
    assert (error["code"], error["message"]) == (429, "You have exhausted your daily quota on this model.")
    assert "TerminalQuotaError" in run.stderr
    assert server.calls[fp.API_GEMINI] == 1


# --- Aider ---------------------------------------------------------------------------------------------------------


def _analytics(run: AgentRun) -> list[dict[str, Any]]:
    path = run.profile_dir / agents.AIDER_ANALYTICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_aider_success(server: FakeProvider, tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    run = run_agent("aider", server, tmp_path, api=fp.API_CHAT)
    report(record_property, "aider_ok", run)
    assert run.returncode == 0, run.describe()
    lines = [line.rstrip() for line in run.stdout.splitlines()]
    assert f"Aider v{agents.VERSIONS['aider']}" in lines
    assert f"Model: openai/{agents.DEFAULT_MODELS['aider']} with whole edit format" in lines
    assert fp.REPLY_TEXT in lines
    assert f"Tokens: {fp.CHAT_PROMPT_TOKENS} sent, {fp.CHAT_COMPLETION_TOKENS} received." in lines
    assert "Input is not a terminal" in run.stderr
    assert "raw.githubusercontent.com" not in run.stdout  # the price list was not fetched

    events = _analytics(run)
    send = [event["properties"] for event in events if event["event"] == "message_send"]
    assert len(send) == 1
    assert send[0]["prompt_tokens"] == fp.CHAT_PROMPT_TOKENS
    assert send[0]["completion_tokens"] == fp.CHAT_COMPLETION_TOKENS
    assert send[0]["total_tokens"] == fp.CHAT_TOTAL_TOKENS
    assert (events[-1]["event"], events[-1]["properties"]) == ("exit", {"reason": "Completed --message"})

    assert server.calls[fp.API_CHAT] == 1
    assert server.paths == ["POST /v1/chat/completions"]
    request = server.requests_for(fp.API_CHAT)[0]
    assert request.body["model"] == agents.DEFAULT_MODELS["aider"]
    assert request.body.get("stream") is not True
    assert_loopback_only(server)


def test_aider_rate_limited(
    server: FakeProvider, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    # Aider has no retry setting (it retries for ~85 s): end it at its first rate-limit line, as fleetd does.
    server.mode = "429"
    run = run_agent("aider", server, tmp_path, api=fp.API_CHAT, stop_on=AIDER_RATE_LIMIT_LINE)
    report(record_property, "aider_429", run)
    assert run.stopped_at_line == AIDER_RATE_LIMIT_LINE, run.describe()
    assert run.first_call_to_stop is not None
    record_property("aider_429_first_call_to_rate_limit_line_s", round(run.first_call_to_stop, 3))
    print(f"[aider_429] first 429 -> rate-limit line {run.first_call_to_stop:.2f} s")
    assert run.returncode == -signal.SIGTERM, run.describe()
    assert f"litellm.RateLimitError: RateLimitError: OpenAIException - {fp.OPENAI_RATE_LIMIT_MESSAGE}" in " ".join(
        run.stdout.split()
    )
    assert "Tokens:" not in run.stdout
    assert run.first_call_to_stop < FAST_FAIL_LIMIT
    # Below the retry layers: litellm's OpenAI client retried (honouring retry-after) before Aider printed anything.
    assert server.calls[fp.API_CHAT] >= 1
    assert_loopback_only(server)


def test_aider_rate_limit_then_success_exits_0(server: FakeProvider, tmp_path: Path) -> None:
    # The rate-limit text alone does not mean failure: once the server recovers, Aider's next retry succeeds.
    server.mode = "429"

    def recover(_process: subprocess.Popen[str]) -> None:
        server.mode = "ok"

    run = run_agent("aider", server, tmp_path, api=fp.API_CHAT, stop_on=AIDER_RATE_LIMIT_LINE, on_stop=recover)
    assert run.returncode == 0, run.describe()
    assert AIDER_RATE_LIMIT_LINE in run.stdout
    assert "Retrying in " in run.stdout
    assert f"Tokens: {fp.CHAT_PROMPT_TOKENS} sent, {fp.CHAT_COMPLETION_TOKENS} received." in run.stdout
    assert_loopback_only(server)


@pytest.mark.skipif(not SLOW, reason="takes ~90 s (Aider's own retries): set FLEETD_SLOW_INTEGRATION=1")
def test_aider_rate_limited_gives_up_with_exit_0(server: FakeProvider, tmp_path: Path) -> None:
    server.mode = "429"
    run = run_agent("aider", server, tmp_path, api=fp.API_CHAT, timeout=240)
    print(f"\n[aider_429_full] exit {run.returncode} after {run.wall:.1f} s, {server.calls[fp.API_CHAT]} calls")
    assert run.returncode == 0, run.describe()
    assert run.stdout.count(AIDER_RATE_LIMIT_LINE) >= 5
    assert "Tokens:" not in run.stdout
    assert_loopback_only(server)


# --- failure classes: what each real CLI prints per provider failure, as fleetd's parser reads it -----------------

API = {"claude": fp.API_ANTHROPIC, "codex": fp.API_RESPONSES, "gemini": fp.API_GEMINI, "aider": fp.API_CHAT}
# Where the CLI would sit out its own retries (Aider on every 429/5xx/connection error for ~90 s, Codex on a
# refused connection without end), fleetd ends the attempt at the first line that proves the failure.
LIVE_FAILURE: dict[str, Callable[[str], object]] = {
    "aider": aider_parser.live_failure,
    "codex": codex_parser.live_failure,
}


def parse_run(name: str, run: AgentRun) -> ParsedOutput:
    """The parser fleetd's adapter for ``name`` applies (same output format as agents.agent_argv asks for)."""
    now, tz = datetime.now(UTC), ZoneInfo("UTC")
    if name == "claude":
        return claude_parser.parse_stream_json(run.stdout, run.stderr, run.returncode, now, tz)
    if name == "codex":
        return codex_parser.parse_exec_jsonl(run.stdout, run.stderr, run.returncode, now, tz)
    if name == "gemini":
        return gemini_parser.parse_json(run.stdout, run.stderr, run.returncode, now, tz)
    analytics = run.profile_dir / agents.AIDER_ANALYTICS_FILE
    log = analytics.read_text() if analytics.exists() else None
    return aider_parser.parse_output(run.stdout, run.stderr, run.returncode, log, now, tz)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CLASS_CASES = [
    (name, mode, expected)
    for name in agents.AGENTS
    for mode, expected in [
        ("529", "transient"),  # Anthropic 529 overloaded_error; the OpenAI and Gemini APIs' 503
        ("500", "transient"),
        ("quota", "quota" if name != "gemini" else "rate_limited"),  # Gemini's "quota" mode is per day: lifts
        ("bad_key", "auth"),  # Gemini: 400 "API key not valid"
        ("bad_request", "contract"),
        ("model_not_found", "contract"),
        ("refused", "transient"),
    ]
]


@pytest.mark.parametrize(("name", "mode", "expected"), CLASS_CASES, ids=[f"{n}-{m}" for n, m, _ in CLASS_CASES])
def test_failure_class_of_the_real_cli(
    name: str, mode: str, expected: str, server: FakeProvider, tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:  # fmt: skip
    require(name)
    base_url = f"http://127.0.0.1:{_closed_port()}" if mode == "refused" else None
    if mode != "refused":
        server.mode = mode
    live = LIVE_FAILURE.get(name)
    run = run_agent(
        name, server, tmp_path, api=API[name], base_url=base_url,
        stop_on=(lambda line: live(line) is not None) if live else None,
    )  # fmt: skip
    report(record_property, f"{name}_{mode}", run)
    parsed = parse_run(name, run)
    print(f"[{name}_{mode}] -> {parsed.error_class}: {parsed.message}")
    assert (parsed.outcome, parsed.error_class) == ("failed", expected), run.describe()
    assert parsed.message
    if name != "aider":
        # Their own retries are off (CLAUDE_CODE_MAX_RETRIES=0, stream/request_max_retries=0, maxAttempts=1):
        # over within seconds, so fleetd's own retry policy is the only one. (Claude Code 2.1.330 still re-sends a
        # 400 a few times, 6 calls in ~0.3 s, and a 404 once without streaming: not waiting, so not a concern.)
        assert run.stopped_at_line is not None or run.wall < FAST_FAIL_LIMIT
        if mode in ("529", "500", "quota", "bad_key"):
            assert server.calls[API[name]] <= 1
    assert_loopback_only(server)


@pytest.mark.parametrize("name", agents.AGENTS)
def test_a_lone_529_then_the_next_attempt_succeeds(name: str, server: FakeProvider, tmp_path: Path) -> None:
    """The provider fails once, then recovers: what fleetd's transient retry will meet (fail_first)."""
    require(name)
    server.fail_first(1, "529")
    first = parse_run(name, run_agent(name, server, tmp_path, api=API[name]))
    if name == "aider":
        # Aider's OpenAI client retries a 503 by itself, silently: the lone failure never shows.
        assert (first.outcome, server.calls[API[name]]) == ("succeeded", 2)
        return
    assert (first.outcome, first.error_class) == ("failed", "transient")
    second = parse_run(name, run_agent(name, server, tmp_path, api=API[name]))
    assert second.outcome == "succeeded"
    assert server.calls[API[name]] == 2 and server.failures_left == 0
    assert_loopback_only(server)


# --- a reviewer's verdict through each real CLI's output ------------------------------------------------------------

REJECT_VERDICT = {"verdict": "reject", "missing": ["a test for the empty input"], "reason": "one case is not covered"}
ACCEPT_VERDICT = {"verdict": "accept", "missing": [], "reason": "the change does what was asked"}


def _reviewer_reply(verdict: dict[str, Any]) -> str:
    """A reviewer's answer as models give it: prose, then the verdict in a ```json fence."""
    return f"Checked it.\n```json\n{json.dumps(verdict)}\n```"


# fleetd's AiderAdapter runs Aider streamed; agents.agent_argv adds --no-stream (for the server's exact usage), and
# then Aider prints the reply through rich, wrapped at 80 columns: a line break lands inside the JSON's strings.
VERDICT_DROP_FLAGS = {"aider": ("--no-stream",)}


@pytest.mark.parametrize("name", agents.AGENTS)
def test_reviewer_verdict_read_from_the_real_cli(name: str, server: FakeProvider, tmp_path: Path) -> None:
    """fleetd reads the reviewer's verdict from `final_text`: the JSON must come through each CLI's output intact."""
    require(name)
    server.reply_text = _reviewer_reply(REJECT_VERDICT)
    run = run_agent(name, server, tmp_path, api=API[name], drop_flags=VERDICT_DROP_FLAGS.get(name, ()))
    parsed = parse_run(name, run)
    assert parsed.outcome == "succeeded", run.describe()
    assert parsed.final_text == server.reply_text, run.describe()
    expected = Verdict("reject", ("a test for the empty input",), "one case is not covered")
    assert extract_verdict(parsed.final_text) == expected
    assert_loopback_only(server)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_reviewer_verdict_through_aider_edits_files_and_without_streaming_is_lost(
    stream: bool, server: FakeProvider, tmp_path: Path
) -> None:
    """What Aider 0.86.2 does with a fenced verdict. Its default "whole" edit format takes the line before a fence
    as a file name, and --yes-always applies it: the reviewer writes the JSON into the workdir, as "Checked it.".
    With --no-stream the reply is wrapped at 80 columns inside the reason string, and no verdict can be read."""
    require("aider")
    server.reply_text = _reviewer_reply(REJECT_VERDICT)
    run = run_agent("aider", server, tmp_path, api=API["aider"], drop_flags=("--no-stream",) if stream else ())
    parsed = parse_run("aider", run)
    assert parsed.outcome == "succeeded", run.describe()
    assert "Applied edit to Checked it." in run.stdout
    assert json.loads((run.workdir / "Checked it.").read_text()) == REJECT_VERDICT
    assert_loopback_only(server)
    if stream:
        assert extract_verdict(parsed.final_text) is not None
        return
    assert parsed.final_text is not None
    assert "```json" not in parsed.final_text  # rich also drops the fence's language
    assert '"reason": "one \ncase is not covered"' in parsed.final_text
    assert extract_verdict(parsed.final_text) is None


def test_an_aider_reviewer_in_ask_mode_answers_without_editing(server: FakeProvider, tmp_path: Path) -> None:
    """What fleetd runs an Aider reviewer with (`--chat-mode ask`): the verdict is read, no file is written."""
    require("aider")
    server.reply_text = _reviewer_reply(REJECT_VERDICT)
    history = tmp_path / "history"
    history.mkdir()
    run = run_agent("aider", server, tmp_path, api=API["aider"], drop_flags=("--no-stream",),
                    add_flags=("--chat-mode", "ask", "--chat-history-file", str(history / "chat.md"),
                               "--input-history-file", str(history / "input")))  # fmt: skip
    parsed = parse_run("aider", run)
    assert parsed.outcome == "succeeded", run.describe()
    assert "Applied edit" not in run.stdout and list(run.workdir.iterdir()) == []
    verdict = extract_verdict(parsed.final_text)
    assert verdict is not None and verdict.verdict == "reject"
    assert_loopback_only(server)


def test_reviewer_accept_verdict_read_from_the_real_cli(server: FakeProvider, tmp_path: Path) -> None:
    require("claude")
    server.reply_text = _reviewer_reply(ACCEPT_VERDICT)
    parsed = parse_run("claude", run_agent("claude", server, tmp_path, api=API["claude"]))
    assert parsed.outcome == "succeeded"
    assert parsed.final_text == server.reply_text
    assert extract_verdict(parsed.final_text) == Verdict("accept", (), "the change does what was asked")
    assert_loopback_only(server)


# --- the fake provider itself (no CLI needed) ----------------------------------------------------------------------


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def _sse_data(raw: bytes) -> list[Any]:
    events = []
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[len("data: ") :]))
    return events


def test_fake_provider_ok_mode(server: FakeProvider) -> None:
    base = server.base_url
    status, headers, raw = _post(f"{base}/v1/messages?beta=true", {"model": "m", "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = _sse_data(raw)
    assert events[0]["type"] == "message_start"
    assert events[-2]["usage"]["output_tokens"] == fp.ANTHROPIC_OUTPUT_TOKENS
    status, _, raw = _post(f"{base}/v1/messages", {"model": "m"})
    assert json.loads(raw)["usage"]["input_tokens"] == fp.ANTHROPIC_INPUT_TOKENS

    status, _, raw = _post(f"{base}/v1/responses", {"model": "m", "stream": True})
    completed = _sse_data(raw)[-1]
    assert completed["type"] == "response.completed"
    assert completed["response"]["usage"]["input_tokens"] == fp.RESPONSES_INPUT_TOKENS

    status, _, raw = _post(f"{base}/v1beta/models/g:streamGenerateContent?alt=sse", {})
    chunks = _sse_data(raw)
    assert "".join(chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in chunks) == fp.REPLY_TEXT
    assert chunks[-1]["usageMetadata"]["promptTokenCount"] == fp.GEMINI_PROMPT_TOKENS
    status, _, raw = _post(f"{base}/v1beta/models/g:generateContent", {})
    assert json.loads(raw)["usageMetadata"]["totalTokenCount"] == fp.GEMINI_TOTAL_TOKENS
    status, _, raw = _post(f"{base}/v1beta/models/g:countTokens", {})
    assert json.loads(raw) == {"totalTokens": fp.GEMINI_PROMPT_TOKENS}

    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    status, _, raw = _post(f"{base}/v1/chat/completions", body)
    assert raw.rstrip().endswith(b"data: [DONE]")
    assert _sse_data(raw)[-1]["usage"]["prompt_tokens"] == fp.CHAT_PROMPT_TOKENS
    status, _, raw = _post(f"{base}/v1/chat/completions", {"model": "m"})
    assert json.loads(raw)["usage"]["completion_tokens"] == fp.CHAT_COMPLETION_TOKENS

    status, _, raw = _post(f"{base}/v1/unknown", {})
    assert status == 404 and b"(fake)" in raw
    assert server.calls == {fp.API_ANTHROPIC: 2, fp.API_RESPONSES: 1, fp.API_GEMINI: 2, fp.API_CHAT: 2}
    assert server.paths[-1] == "POST /v1/unknown"


@pytest.mark.parametrize(
    ("mode", "path", "status", "check"),
    [
        ("429", "/v1/messages", 429, lambda b: b["error"]["type"] == "rate_limit_error"),
        ("529", "/v1/messages", 529, lambda b: b["error"]["type"] == "overloaded_error"),
        ("500", "/v1/messages", 500, lambda b: b["error"]["type"] == "api_error"),
        ("quota", "/v1/messages", 400, lambda b: "credit balance" in b["error"]["message"]),
        ("429", "/v1/responses", 429, lambda b: b["error"]["code"] == "rate_limit_exceeded"),
        ("quota", "/v1/responses", 429, lambda b: b["error"]["code"] == "insufficient_quota"),
        ("429", "/v1/chat/completions", 429, lambda b: b["error"]["code"] == "rate_limit_exceeded"),
        ("500", "/v1/chat/completions", 500, lambda b: b["error"]["type"] == "server_error"),
        ("429", "/v1beta/models/g:streamGenerateContent", 429, lambda b: b["error"]["status"] == "RESOURCE_EXHAUSTED"),
        ("quota", "/v1beta/models/g:generateContent", 429, lambda b: "PerDay" in json.dumps(b)),
        ("529", "/v1beta/models/g:generateContent", 503, lambda b: b["error"]["status"] == "UNAVAILABLE"),
    ],
)
def test_fake_provider_error_modes(
    server: FakeProvider, mode: str, path: str, status: int, check: Callable[[dict[str, Any]], bool]
) -> None:
    server.mode = mode
    got_status, headers, raw = _post(server.base_url + path, {"model": "m", "stream": True})
    body = json.loads(raw)
    assert got_status == status
    assert check(body), body
    assert "(fake)" in json.dumps(body)
    if mode == "429":
        assert headers["retry-after"] == str(fp.RETRY_AFTER_SECONDS)
    assert sum(server.calls.values()) == 1


@pytest.mark.parametrize(
    ("mode", "path", "status", "check"),
    [
        ("bad_key", "/v1/messages", 401, lambda b: b["error"]["type"] == "authentication_error"),
        ("bad_key", "/v1/responses", 401, lambda b: b["error"]["code"] == "invalid_api_key"),
        ("bad_key", "/v1beta/models/g:generateContent", 400, lambda b: "API key not valid" in b["error"]["message"]),
        ("bad_request", "/v1/chat/completions", 400, lambda b: b["error"]["type"] == "invalid_request_error"),
        ("bad_request", "/v1beta/models/g:generateContent", 400, lambda b: b["error"]["status"] == "INVALID_ARGUMENT"),
        ("model_not_found", "/v1/messages", 404, lambda b: b["error"]["type"] == "not_found_error"),
        ("model_not_found", "/v1/responses", 404, lambda b: "`m` does not exist" in b["error"]["message"]),
        (
            "model_not_found",
            "/v1beta/models/g:generateContent",
            404,
            lambda b: "models/g is not found" in json.dumps(b),
        ),
    ],
)
def test_fake_provider_request_error_modes(
    server: FakeProvider, mode: str, path: str, status: int, check: Callable[[dict[str, Any]], bool]
) -> None:
    server.mode = mode
    got_status, _, raw = _post(server.base_url + path, {"model": "m"})
    body = json.loads(raw)
    assert got_status == status
    assert check(body), body


def test_fake_provider_fail_first_counts_generation_calls_per_server(server: FakeProvider) -> None:
    server.fail_first(2, "529")
    statuses = [_post(server.base_url + "/v1/messages", {"model": "m"})[0] for _ in range(2)]
    assert _post(server.base_url + "/v1/messages/count_tokens", {})[0] == 200  # not a generation call
    statuses += [_post(server.base_url + "/v1/messages", {"model": "m"})[0] for _ in range(2)]
    assert statuses == [529, 529, 200, 200]
    assert server.failures_left == 0
    with running_fake_provider() as other:
        server.fail_first(1, "500")
        assert _post(other.base_url + "/v1/chat/completions", {"model": "m"})[0] == 200  # its own counter
    assert _post(server.base_url + "/v1/chat/completions", {"model": "m"})[0] == 500
    with pytest.raises(ValueError):
        server.fail_first(1, "ok")


def test_fake_provider_decides_a_requests_answer_when_it_arrives(server: FakeProvider) -> None:
    """A request that hangs (``latency``) keeps the answer it arrived to: one still sleeping when a later test set up
    fail_first once took that failure, and the later test's own call got through where it should have failed."""
    server.latency = 0.5
    statuses: list[int] = []
    hung = threading.Thread(target=lambda: statuses.append(_post(server.base_url + "/v1/chat/completions", {})[0]))
    try:
        hung.start()
        wait_until(lambda: server.calls[fp.API_CHAT], interval=0.01, what="the request to arrive (it then sleeps)")
        server.fail_first(1, "529")
        hung.join(10)
    finally:
        server.latency = 0.0
    assert statuses == [200]
    assert server.failures_left == 1  # still there for the call it was meant for
    server.fail_first(0)


def test_fake_provider_refuses_proxy_requests(server: FakeProvider) -> None:
    proxy = urllib.request.ProxyHandler({"http": server.base_url})
    opener = urllib.request.build_opener(proxy)
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open("http://example.invalid/", timeout=10)
    assert caught.value.code == 403
    assert server.proxy_attempts == ["http://example.invalid/"]
    with pytest.raises(ValueError):
        server.mode = "418"


def test_fake_provider_reply_text_in_every_api_shape(server: FakeProvider) -> None:
    base, text = server.base_url, 'Checked it.\n```json\n{"verdict": "accept"}\n```'
    server.reply_text = text

    def joined(raw: bytes, pick: Callable[[dict[str, Any]], str | None]) -> str:
        return "".join(piece for event in _sse_data(raw) if (piece := pick(event)) is not None)

    raw = _post(f"{base}/v1/messages", {"model": "m", "stream": True})[2]
    assert joined(raw, lambda e: e.get("delta", {}).get("text")) == text
    assert json.loads(_post(f"{base}/v1/messages", {"model": "m"})[2])["content"] == [{"type": "text", "text": text}]
    raw = _post(f"{base}/v1/responses", {"model": "m", "stream": True})[2]
    assert joined(raw, lambda e: e.get("delta")) == text
    assert _sse_data(raw)[-1]["response"]["output"][0]["content"][0]["text"] == text
    raw = _post(f"{base}/v1beta/models/g:streamGenerateContent?alt=sse", {})[2]
    assert joined(raw, lambda e: e["candidates"][0]["content"]["parts"][0]["text"]) == text
    raw = _post(f"{base}/v1beta/models/g:generateContent", {})[2]
    assert json.loads(raw)["candidates"][0]["content"]["parts"][0]["text"] == text
    json_mode = {"generationConfig": {"responseMimeType": "application/json"}}
    raw = _post(f"{base}/v1beta/models/g:generateContent", json_mode)[2]
    assert "next_speaker" in json.loads(json.loads(raw)["candidates"][0]["content"]["parts"][0]["text"])
    raw = _post(f"{base}/v1/chat/completions", {"model": "m", "stream": True})[2]
    assert joined(raw, lambda e: e["choices"][0]["delta"].get("content") if e["choices"] else None) == text
    raw = _post(f"{base}/v1/chat/completions", {"model": "m"})[2]
    assert json.loads(raw)["choices"][0]["message"]["content"] == text
    server.reset()
    assert server.reply_text == text  # configuration, like mode: reset() forgets only what was recorded
