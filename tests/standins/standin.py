"""Stand-ins for the real agent CLIs (claude, codex, gemini, aider), for end-to-end tests.

Captured scenarios replay the real programs' output byte for byte from the team's captures
(STANDIN_CAPTURES); the others are built in the same shapes. Each call appends what the program
was given (argv, cwd, selected environment, whether stdin was closed) to $STANDIN_DIR/calls.jsonl.

Scenario: the file $STANDIN_DIR/<FLEETD_PROFILE>.scenario, else $STANDIN_SCENARIO, else "ok".

Failure scenarios every CLI acts out in its own shape (measured with the real programs against
tests/integration/fake_provider.py, see tests/backends/test_classification.py):
  overloaded       529 overloaded (503 for the OpenAI and Gemini APIs)        -> transient
  server_error     500                                                        -> transient
  refused          connection refused (Codex: reconnects without end)         -> transient
  crash_silent     exit 1, no output at all                                   -> transient
  quota            out of credits / insufficient_quota / Gemini `limit: 0`    -> quota
  bad_key          the key is rejected (Gemini: 400 "API key not valid"; alias bad_key_400)  -> auth
  bad_request      400                                                        -> contract
  model_not_found  404 unknown model                                          -> contract
and `flaky [N] [FAILURE]`: the first N calls of this profile (default $STANDIN_FAIL_TIMES, else 1; counted in
$STANDIN_DIR/flaky-<profile>.count) act out FAILURE (default overloaded), every later call succeeds ("ok").
$STANDIN_TIME_SCALE scales the waits of scenarios that replay a CLI's own back-off (Aider's, Codex's).
`held` (claude): answers as "ok" does once $STANDIN_DIR/<FLEETD_PROFILE>.release exists (an attempt kept under way).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import sys
import time
import uuid
from pathlib import Path

ENV_KEYS = (
    "CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_CLI_HOME", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN",
    "CODEX_API_KEY", "GEMINI_API_KEY", "OPENAI_API_KEY", "OPENAI_API_BASE", "CLAUDE_CODE_MAX_RETRIES",
    "GEMINI_CLI_NO_RELAUNCH", "TMPDIR", "FLEETD_RUN_ID", "FLEETD_PROFILE", "FLEETD_RUN_TAG",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
)  # fmt: skip
RESET_EPOCH = int(os.environ.get("STANDIN_RESET_EPOCH", time.time() + 3600))


def _scenario_text() -> str:
    directory = os.environ.get("STANDIN_DIR")
    profile = os.environ.get("FLEETD_PROFILE", "")
    if directory and profile:
        path = Path(directory) / f"{profile}.scenario"
        if path.exists():
            return path.read_text().strip()
    return os.environ.get("STANDIN_SCENARIO", "ok")


FAILURES = ("overloaded", "server_error", "refused", "crash_silent", "quota", "bad_key", "bad_request",
            "model_not_found")  # fmt: skip
_flaky_decided: str | None = None


def scenario() -> str:
    """The scenario's name; `usage_limit +3` means: reset three seconds from now; `flaky …` resolves (once per
    process) to the failure it acts out this time, or "ok"."""
    global RESET_EPOCH, _flaky_decided
    name, *args = _scenario_text().split() or ["ok"]
    if args and args[0].startswith("+"):
        RESET_EPOCH = int(time.time() + float(args[0][1:]))
    if name == "flaky":
        if _flaky_decided is None:
            _flaky_decided = _flaky(args)
        return _flaky_decided
    return "bad_key" if name == "bad_key_400" else name


def _flaky(args: list[str]) -> str:
    times = int(args[0]) if args and args[0].isdigit() else int(os.environ.get("STANDIN_FAIL_TIMES", "1"))
    failure = next((a for a in args if not a.isdigit()), "overloaded")
    directory = Path(os.environ.get("STANDIN_DIR") or ".")
    counter = directory / f"flaky-{os.environ.get('FLEETD_PROFILE') or 'default'}.count"
    with open(counter, "a+") as f:  # one counter per profile, safe against concurrent calls
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        done = int(f.read().strip() or 0)
        f.seek(0)
        f.truncate()
        f.write(str(done + 1))
    return failure if done < times else "ok"


def held() -> None:
    """The `held` scenario's wait (after the call is recorded): until its profile's release file exists."""
    release = Path(os.environ.get("STANDIN_DIR") or ".") / f"{os.environ.get('FLEETD_PROFILE', '')}.release"
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def scaled_sleep(seconds: float) -> None:
    time.sleep(seconds * float(os.environ.get("STANDIN_TIME_SCALE", "1")))


def crash_silent() -> None:
    sys.exit(1)


def record(cli: str, stdin_closed: bool | None) -> None:
    directory = os.environ.get("STANDIN_DIR")
    if not directory:
        return
    entry = {
        "cli": cli,
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
        "stdin_closed": stdin_closed,
        "tmpdir_exists": os.path.isdir(os.environ.get("TMPDIR", "/nonexistent")),
        "scenario": scenario(),
    }
    with open(Path(directory) / "calls.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def capture(name: str) -> tuple[bytes, bytes, int]:
    root = Path(os.environ["STANDIN_CAPTURES"]) / name
    return (root / "stdout.txt").read_bytes(), (root / "stderr.txt").read_bytes(), int((root / "exit_code").read_text())


def replay(name: str) -> None:
    out, err, code = capture(name)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    sys.exit(code)


def emit(*lines: object, stream: object = None) -> None:
    target = stream or sys.stdout
    for line in lines:
        text = line if isinstance(line, str) else json.dumps(line, separators=(",", ":"), ensure_ascii=False)
        target.write(text + "\n")  # type: ignore[attr-defined]
    target.flush()  # type: ignore[attr-defined]


def hang() -> None:
    time.sleep(3600)


def garbled() -> None:
    sys.stdout.buffer.write(b'{"type":"system","subtype":"in\x00\xff\xfe garbage \x1b[31m\n{"type":"result","is_err')
    sys.stdout.flush()
    sys.exit(1)


# -- claude ---------------------------------------------------------------------------------------


def _claude_lines(name: str) -> list[dict]:
    out, _, _ = capture(name)
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


REVIEWER_ANSWERS = {
    "verdict_accept": "Looked at the diff.\n```json\n"
    '{"verdict": "accept", "missing": [], "reason": "the tests pass"}\n```',
    "verdict_reject": '{"verdict": "reject", "missing": ["update the changelog", "test the empty input"],'
    ' "reason": "two things are not done"}',
    "verdict_garbage": "I think it is mostly fine, probably.",
}


def claude(argv: list[str]) -> None:
    if argv[:1] == ["/login"]:
        emit(f"login for {os.environ.get('CLAUDE_CONFIG_DIR')}")
        sys.exit(0)
    s = scenario()
    if s == "held":
        held()
        s = "ok"
    fmt = argv[argv.index("--output-format") + 1] if "--output-format" in argv else "text"
    if s == "ok":
        replay({"stream-json": "cc_ok_stream", "json": "cc_ok_json"}.get(fmt, "cc_ok_json"))
    if s == "429":
        replay("cc_429_retries2_stream" if fmt == "stream-json" else "cc_429_json")
    if s == "529":
        replay("cc_529")
    if s == "hang":
        emit(_claude_lines("cc_ok_stream")[0])
        hang()
    if s == "ok_then_hang":  # its result printed, the process does not exit (a background task holds it)
        emit(*_claude_lines("cc_ok_stream"))
        hang()
    if s == "garbled":
        garbled()
    init, *_, result = _claude_lines("cc_ok_stream")
    if s == "leak_secret":
        emit(
            init,
            {
                "type": "assistant",
                "message": {"content": [{"type": "text", "text": "key=" + os.environ.get("ANTHROPIC_API_KEY", "")}]},
            },
        )
        emit(result)
        sys.exit(0)
    if s in ("leak_auth", "leak_limit", "leak_ok"):
        claude_leak(s, init, result)
    if s in ("usage_limit", "usage_limit_text"):
        clock = time.strftime("%I:%M%p", time.gmtime(RESET_EPOCH)).lstrip("0").lower()
        text = f"You've hit your limit · resets {clock} (UTC)"
        limit_event = {
            "type": "rate_limit_event",
            "rate_limit_info": {"status": "rejected", "resetsAt": RESET_EPOCH, "rateLimitType": "five_hour",
                                "utilization": 1.0},
            "uuid": str(uuid.uuid4()), "session_id": init["session_id"],
        }  # fmt: skip
        synthetic = {
            "type": "assistant",
            "message": {"id": "msg_synthetic", "model": "<synthetic>", "role": "assistant",
                        "content": [{"type": "text", "text": text}],
                        "usage": {"input_tokens": 0, "output_tokens": 0}},
            "error": "rate_limit", "session_id": init["session_id"],
        }  # fmt: skip
        failed = dict(result, is_error=True, subtype="success", result=text, api_error_status=429,
                      terminal_reason="api_error", total_cost_usd=0,
                      usage=dict(result["usage"], input_tokens=0, output_tokens=0,
                                 cache_read_input_tokens=0, cache_creation_input_tokens=0))  # fmt: skip
        lines = [init, synthetic, failed] if s == "usage_limit_text" else [init, limit_event, synthetic, failed]
        emit(*lines)
        sys.exit(1)
    if s in REVIEWER_ANSWERS:  # a reviewer agent: its final message is the answer (json or not)
        emit(init, dict(result, result=REVIEWER_ANSWERS[s]))
        sys.exit(0)
    if s == "auth":
        emit(init, dict(result, is_error=True, result="Invalid API key · Please run /login", api_error_status=401,
                        terminal_reason="api_error"))  # fmt: skip
        sys.exit(1)
    if s == "crash_silent":
        crash_silent()
    if s in CLAUDE_FAILURES or s == "not_logged_in":
        claude_failure(s, fmt, init, result, argv)
    raise SystemExit(f"standin claude: unknown scenario {s!r}")


# Claude Code 2.1.330 with CLAUDE_CODE_MAX_RETRIES=0: (the text it prints, assistant `error`, api_error_status,
# api_error_type). The gateway address is the one the CLI names when ANTHROPIC_BASE_URL is set.
_GATEWAY = "If it persists, check your inference gateway (127.0.0.1:18080)."
CLAUDE_FAILURES: dict[str, tuple[str, str, int | None, str | None]] = {
    "overloaded": (
        "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try again in a moment. "
        + _GATEWAY,
        "server_error", 529, "overloaded_error",
    ),
    "server_error": (
        "API Error: 500 Internal server error. This is a server-side issue, usually temporary — try again in a "
        f"moment. {_GATEWAY}",
        "server_error", 500, "api_error",
    ),
    "refused": (
        "API Error: Connection refused — a firewall or proxy may be blocking it (ECONNREFUSED)", "server_error", None,
        None,
    ),
    "quota": ("Credit balance is too low", "billing_error", 400, "invalid_request_error"),
    "bad_key": ("Invalid API key · Fix external API key", "authentication_failed", 401, "authentication_error"),
    "not_logged_in": ("Not logged in · Please run /login", "authentication_failed", None, None),
    "bad_request": (
        "API Error: 400 messages: at least one message is required", "unknown", 400, "invalid_request_error",
    ),
    "model_not_found": (
        "There's an issue with the selected model ({model}). It may not exist or you may not have access to it. "
        "Run --model to pick a different model.",
        "model_not_found", 404, "not_found_error",
    ),
}  # fmt: skip


def claude_failure(s: str, fmt: str, init: dict, result: dict, argv: list[str]) -> None:
    """A failed turn as 2.1.330 prints it: init, a synthetic assistant message, the result; exit 1."""
    text, error, status, api_type = CLAUDE_FAILURES[s]
    text = text.format(model=argv[argv.index("--model") + 1] if "--model" in argv else init["model"])
    synthetic = {
        "type": "assistant",
        "message": {"id": f"msg_{uuid.uuid4().hex[:16]}", "model": "<synthetic>", "role": "assistant",
                    "content": [{"type": "text", "text": text}], "usage": {"input_tokens": 0, "output_tokens": 0}},
        "session_id": init["session_id"], "error": error, "is_api_error_message": True,
        "api_error_status": status, "api_error_type": api_type,
    }  # fmt: skip
    failed = dict(result, is_error=True, subtype="success", result=text, api_error_status=status,
                  api_error_type=api_type, terminal_reason="api_error", total_cost_usd=0, duration_api_ms=0,
                  modelUsage={}, usage=dict(result["usage"], input_tokens=0, output_tokens=0,
                                            cache_read_input_tokens=0, cache_creation_input_tokens=0))  # fmt: skip
    if fmt == "stream-json":
        emit(init, synthetic, failed)
    elif fmt == "json":
        emit(failed)
    else:
        emit(text)
    sys.exit(1)


def leak_keys() -> list[str]:
    """The keys a leaking scenario prints: this process's own, then those listed in $STANDIN_DIR/leak_keys (another
    profile's, which a CLI might have picked up from a shared file or environment)."""
    own = [os.environ[k] for k in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "CODEX_API_KEY", "GEMINI_API_KEY")
           if os.environ.get(k)]  # fmt: skip
    listed = Path(os.environ.get("STANDIN_DIR", "/nonexistent")) / "leak_keys"
    others = listed.read_text().split() if listed.exists() else []
    return list(dict.fromkeys(own + others))


def json_escaped(key: str) -> str:
    """The key as it reads inside a JSON string whose writer escaped its first character: not the key byte for byte,
    yet the key once parsed."""
    return f"\\u{ord(key[0]):04x}{key[1:]}"


def claude_leak(s: str, init: dict, result: dict) -> None:
    """A CLI that prints its keys in every field it has: session id, model, window name, error and answer text, stderr,
    and (leak_ok) its own transcript, which the heartbeat reads."""
    keys = leak_keys()
    joined = " ".join(keys)
    escaped = " ".join(f"@ESCAPED{i}@" for i in range(len(keys)))
    session, model = keys[0], keys[-1]
    model_usage = {model: next(iter(result.get("modelUsage", {}).values()), {"costUSD": 0.001})}
    # Both by-model fields name the model (the turn's one as the CLI prints it since 2.1.x).
    usage_fields = {"modelUsage": model_usage}
    if "model_usage_since_last_result" in result:
        usage_fields["model_usage_since_last_result"] = model_usage
    init = dict(init, session_id=session, model=model)
    sys.stderr.write(f"warning: using key {joined}\n")
    sys.stderr.flush()
    lines: list[object] = [init]
    if s == "leak_auth":
        text = f"Invalid API key {joined} {escaped} · Please run /login"
        lines.append(dict(result, is_error=True, result=text, api_error_status=401, terminal_reason="api_error",
                          session_id=session, **usage_fields))  # fmt: skip
        code = 1
    elif s == "leak_limit":
        clock = time.strftime("%I:%M%p", time.gmtime(RESET_EPOCH)).lstrip("0").lower()
        text = f"You've hit your limit · resets {clock} (UTC) · {joined} {escaped}"
        lines.append({"type": "rate_limit_event", "session_id": session,
                      "rate_limit_info": {"status": "rejected", "resetsAt": RESET_EPOCH, "rateLimitType": model,
                                          "utilization": 1.0}})  # fmt: skip
        lines.append(dict(result, is_error=True, result=text, api_error_status=429, terminal_reason="api_error",
                          session_id=session, **usage_fields))  # fmt: skip
        code = 1
    else:
        text = f"done; my keys are {joined} {escaped}"
        lines.append({"type": "assistant", "session_id": session,
                      "message": {"id": f"msg-{session}", "model": model, "content": [{"type": "text", "text": text}],
                                  "usage": {"input_tokens": 3, "output_tokens": 1}}})  # fmt: skip
        lines.append(dict(result, result=text, session_id=session, **usage_fields))
        _claude_transcript(session, model)
        code = 0
    out = [json.dumps(line, separators=(",", ":"), ensure_ascii=False) for line in lines]
    for i, key in enumerate(keys):
        out = [line.replace(f"@ESCAPED{i}@", json_escaped(key)) for line in out]
    emit(*out)
    sys.exit(code)


def _claude_transcript(session: str, model: str) -> None:
    """One usage line in the agent's own transcript, its ids and model made of keys (a session of its own, so the
    heartbeat counts it rather than match it to fleetd's attempt)."""
    projects = Path(os.environ["CLAUDE_CONFIG_DIR"]) / "projects" / "leak"
    projects.mkdir(parents=True, exist_ok=True)
    line = {"type": "assistant", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "sessionId": f"t-{session}", "requestId": f"req-{model}", "version": "2.0.0",
            "message": {"id": f"msg-{session}", "model": model, "role": "assistant",
                        "usage": {"input_tokens": 7, "output_tokens": 2}}}  # fmt: skip
    with open(projects / "transcript.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


# -- codex ----------------------------------------------------------------------------------------


def _write_rollout(thread_id: str, used_percent: float) -> None:
    home = Path(os.environ.get("CODEX_HOME", Path.home() / ".codex"))
    now = time.localtime()
    day = home / "sessions" / time.strftime("%Y/%m/%d", now)
    day.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", now)
    line = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "type": "event_msg",
        "payload": {
            "type": "token_count",
            "info": None,
            "rate_limits": {
                "limit_id": "codex", "limit_name": None,
                "primary": {"used_percent": used_percent, "window_minutes": 300, "resets_at": RESET_EPOCH},
                "secondary": {"used_percent": 7.0, "window_minutes": 10080, "resets_at": RESET_EPOCH + 86400},
                "credits": None, "plan_type": "pro",
            },
        },
    }  # fmt: skip
    (day / f"rollout-{stamp}-{thread_id}.jsonl").write_text(json.dumps(line) + "\n")


def codex(argv: list[str]) -> None:
    if argv[:1] == ["login"]:
        emit(f"login for {os.environ.get('CODEX_HOME')}")
        sys.exit(0)
    s = scenario()
    if s == "hang":
        hang()
    if s == "garbled":
        garbled()
    out, _, _ = capture("codex_ok_codex-prof-quiet")
    thread_id = json.loads(out.decode().splitlines()[0])["thread_id"]
    if s == "ok":
        _write_rollout(thread_id, 42.0)
        replay("codex_ok_codex-prof-quiet")
    if s == "429":
        replay("codex_429_codex-prof-quiet")
    if s == "429_reconnecting":
        # The default provider: five reconnects, each after the server's retry-after, then the failure.
        out, err, code = capture("codex_429")
        sys.stderr.buffer.write(err)
        for line in out.decode().splitlines(keepends=True):
            sys.stdout.write(line)
            sys.stdout.flush()
            if "Reconnecting..." in line:
                time.sleep(3)
        sys.exit(code)
    if s == "429_then_exit":
        # Codex on a custom provider: its final error line, then turn.failed and exit 1 a moment later.
        out, err, code = capture("codex_429_codex-prof-quiet")
        lines = out.decode().splitlines(keepends=True)
        sys.stderr.buffer.write(err)
        sys.stderr.flush()
        sys.stdout.write("".join(lines[:3]))
        sys.stdout.flush()
        time.sleep(0.2)
        sys.stdout.write("".join(lines[3:]))
        sys.stdout.flush()
        sys.exit(code)
    if s == "quota":
        replay("codex_quota")
    if s == "crash_silent":
        crash_silent()
    if s == "refused":
        codex_refused(thread_id)
    if s in CODEX_FAILURES:
        model = argv[argv.index("-m") + 1] if "-m" in argv else "gpt-5.5"
        message = CODEX_FAILURES[s].replace("{model}", model)
        sys.stderr.write("Reading additional input from stdin...\n")
        emit({"type": "thread.started", "thread_id": thread_id}, {"type": "turn.started"},
             {"type": "error", "message": message}, {"type": "turn.failed", "error": {"message": message}})  # fmt: skip
        sys.exit(1)
    if s == "usage_limit":
        _write_rollout(thread_id, 100.0)
        at = time.localtime(RESET_EPOCH)
        message = f"You've hit your usage limit. Try again at {time.strftime('%I:%M %p', at).lstrip('0')}."
        emit({"type": "thread.started", "thread_id": thread_id}, {"type": "turn.started"},
             {"type": "error", "message": message}, {"type": "turn.failed", "error": {"message": message}})  # fmt: skip
        sys.exit(1)
    raise SystemExit(f"standin codex: unknown scenario {s!r}")


# Codex 0.169.0, custom provider with stream_max_retries = request_max_retries = 0: its turn's error message.
_CODEX_URL = "url: http://127.0.0.1:18080/v1/responses"
CODEX_FAILURES = {
    "overloaded": "unexpected status 503 Service Unavailable: The engine is currently overloaded, please try again "
    f"later., {_CODEX_URL}",
    "server_error": "We\u2019re currently experiencing high demand, which may cause temporary errors.",
    "bad_key": "unexpected status 401 Unauthorized: Incorrect API key provided: sk-fake***6789. You can find your API "
    f"key at https://platform.openai.com/account/api-keys., {_CODEX_URL}",
    "bad_request": '{"error": {"message": "Invalid value for \'input\': expected a list of items.", '
    '"type": "invalid_request_error", "param": null, "code": null}}',
    "model_not_found": "The model `{model}` does not exist or you do not have access to it.",
}


def codex_refused(thread_id: str) -> None:
    """Connection refused: 0.169.0 reconnects without end, at 0.45 s, then 5, 10, 20 s... apart."""
    sys.stderr.write("Reading additional input from stdin...\n")
    emit({"type": "thread.started", "thread_id": thread_id}, {"type": "turn.started"})
    line = {
        "type": "error",
        "message": "Reconnecting... waiting for network (Connection failed: error sending request)",
    }
    pause = 5.0
    while True:
        emit(line)
        scaled_sleep(pause)
        pause = min(pause * 2, 300)


# -- gemini ---------------------------------------------------------------------------------------


def gemini(argv: list[str]) -> None:
    if not argv:
        emit(f"login for {os.environ.get('GEMINI_CLI_HOME')}")
        sys.exit(0)
    s = scenario()
    fmt = argv[argv.index("-o") + 1] if "-o" in argv else "text"
    if s == "ok":
        replay("gemini_ok_stream" if fmt == "stream-json" else "gemini_ok_json")
    if s == "429":
        replay("gemini_429_json")
    if s == "hang":
        hang()
    if s == "garbled":
        garbled()
    if s == "crash_silent":
        crash_silent()
    if s in GEMINI_FAILURES or s == "daily_quota":
        gemini_failure(s, argv[argv.index("-m") + 1] if "-m" in argv else "gemini-2.5-pro")
    raise SystemExit(f"standin gemini: unknown scenario {s!r}")


GEMINI_NOISE = (
    "Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a "
    "better visual experience.\nRipgrep is not available. Falling back to GrepTool.\n"
    "[STARTUP] Phase 'cleanup_ops' was started but never ended. Skipping metrics.\n"
)
_GEMINI_REPORT = "Error when talking to Gemini API Full report available at: /tmp/gemini-client-error-Turn.run.json"


def _google_body(code: int, status: str, message: str, details: list[dict] | None = None) -> str:
    return json.dumps({"error": {"code": code, "message": message, "status": status, "details": details or []}},
                      separators=(",", ":"))  # fmt: skip


_BAD_KEY = "API key not valid. Please pass a valid API key."
_KEY_DETAILS = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]  # fmt: skip
_NO_TIER = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: "
    "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: {model}"
)
# Gemini CLI 0.61.0 with general.maxAttempts=1 and -m: (stderr before the JSON report, its message, its code, exit).
GEMINI_FAILURES: dict[str, tuple[str, str, int, int]] = {
    "overloaded": (
        "Attempt 1 failed: The model is overloaded. Please try again later.. Max attempts reached\n"
        f"{_GEMINI_REPORT} RetryableQuotaError: The model is overloaded. Please try again later.\n"
        "  cause: {\n    code: 503,\n    message: 'The model is overloaded. Please try again later.',\n"
        "    details: []\n  },\n  retryDelayMs: undefined,\n  status: 503\n}\n",
        "The model is overloaded. Please try again later.", 503, 247,
    ),
    "server_error": (
        f"Attempt 1 failed: {_google_body(500, 'INTERNAL', 'An internal error has occurred.')}. Max attempts reached\n",
        _google_body(500, "INTERNAL", "An internal error has occurred."), 500, 244,
    ),
    "refused": (
        f"{_GEMINI_REPORT} Error: exception TypeError: fetch failed sending request\n",
        "exception TypeError: fetch failed sending request", 1, 1,
    ),
    "quota": (
        f"{_GEMINI_REPORT} TerminalQuotaError: {_NO_TIER}\n", _NO_TIER, 429, 173,
    ),
    "daily_quota": (
        f"{_GEMINI_REPORT} TerminalQuotaError: You have exhausted your daily quota on this model.\n"
        "  cause: {\n    code: 429,\n  },\n  status: 429\n}\n",
        "You have exhausted your daily quota on this model.", 429, 173,
    ),
    "bad_key": (
        f"{_GEMINI_REPORT} _ApiError: {_google_body(400, 'INVALID_ARGUMENT', _BAD_KEY, _KEY_DETAILS)}\n"
        "  status: 400\n}\n",
        _google_body(400, "INVALID_ARGUMENT", _BAD_KEY, _KEY_DETAILS), 400, 144,
    ),
    "bad_request": (
        "", _google_body(400, "INVALID_ARGUMENT", 'Invalid JSON payload received. Unknown name "bogus".'), 400, 144,
    ),
    "model_not_found": (
        f"{_GEMINI_REPORT} ModelNotFoundError: models/{{model}} is not found for API version v1beta\n  code: 404\n}}\n",
        "models/{model} is not found for API version v1beta, or is not supported for generateContent. Call "
        "ListModels to see the list of available models and their supported methods.", 1, 1,
    ),
}  # fmt: skip


def gemini_failure(s: str, model: str) -> None:
    """Nothing on stdout; start-up noise, the error dump and a JSON report on stderr; exit = status mod 256."""
    dump, message, code, exit_code = GEMINI_FAILURES[s]
    report = {"session_id": str(uuid.uuid4()), "error": {"type": "Error", "message": message.replace("{model}", model),
                                                          "code": code}}  # fmt: skip
    sys.stderr.write(GEMINI_NOISE + dump.replace("{model}", model) + json.dumps(report, indent=2) + "\n")
    sys.stderr.flush()
    sys.exit(exit_code)


# -- aider ----------------------------------------------------------------------------------------


def aider(argv: list[str]) -> None:
    s = scenario()
    log = argv[argv.index("--analytics-log") + 1] if "--analytics-log" in argv else None
    if s == "ok":
        if log:
            props = {"main_model": "openai/fake", "prompt_tokens": 593, "completion_tokens": 1, "total_tokens": 594,
                     "cost": 0.0, "total_cost": 0.0}  # fmt: skip
            event = {"event": "message_send", "properties": props, "time": int(time.time())}
            Path(log).write_text(json.dumps(event) + "\n")
        replay("aider_ok_quiet")
    if s == "429":
        # The real thing: each rate-limit report, then the back-off it announces, ~64 s in all.
        out, err, code = capture("aider_429")
        sys.stderr.buffer.write(err)
        sys.stderr.flush()
        for line in out.decode().splitlines(keepends=True):
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("Retrying in "):
                time.sleep(float(line.split()[2]))
        sys.exit(code)
    if s == "hang":
        hang()
    if s == "crash_silent":
        crash_silent()
    if s in AIDER_FAILURES:
        aider_failure(s)
    raise SystemExit(f"standin aider: unknown scenario {s!r}")


AIDER_BANNER = (
    "Analytics have been permanently disabled.\n\nAider v0.86.2\nModel: openai/fake with whole edit format\n"
    "Git repo: none\nRepo-map: disabled\n\n"
)
_DOWN = "The API provider's servers are down or overloaded."
_LIMITED = "The API provider has rate limited you. Try again later or check your quotas."
# Aider 0.86.2: (its error block, wrapped at 80 columns as printed, and whether it retries it). Retried ones are
# printed 9 times over ~64 s of announced back-off (0.2 s doubling to 32 s), then it exits 0.
AIDER_FAILURES: dict[str, tuple[str, bool]] = {
    "overloaded": (
        "litellm.ServiceUnavailableError: ServiceUnavailableError: OpenAIException - The \n"
        f"engine is currently overloaded, please try again later.\n{_DOWN}", True,
    ),
    "server_error": (
        "litellm.InternalServerError: InternalServerError: OpenAIException - The server \n"
        f"had an error while processing your request. Sorry about that!\n{_DOWN}", True,
    ),
    "refused": (
        f"litellm.InternalServerError: InternalServerError: OpenAIException - Connection\nerror.\n{_DOWN}", True,
    ),
    "quota": (
        "litellm.RateLimitError: RateLimitError: OpenAIException - You exceeded your \n"
        "current quota, please check your plan and billing details. For more information \n"
        f"on this error, read the docs: \nhttps://platform.openai.com/docs/guides/error-codes/api-errors.\n{_LIMITED}",
        True,
    ),
    "bad_key": (
        "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect \n"
        "API key provided: sk-fake***6789. You can find your API key at \n"
        "https://platform.openai.com/account/api-keys.\n"
        "The API provider is not able to authenticate you. Check your API key.\n"
        "https://platform.openai.com/account/api-keys", False,
    ),
    "bad_request": (
        "litellm.BadRequestError: OpenAIException - Invalid value for 'input': expected a\nlist of items.", False,
    ),
    "model_not_found": (
        "litellm.NotFoundError: OpenAIException - The model `fake` does not exist or you \n"
        "do not have access to it.", False,
    ),
}  # fmt: skip


def aider_failure(s: str) -> None:
    block, retried = AIDER_FAILURES[s]
    sys.stderr.write("Warning: Input is not a terminal (fd=0).\n")
    sys.stderr.flush()
    emit(AIDER_BANNER + block)
    if retried:
        for pause in (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0):
            emit(f"Retrying in {pause} seconds...")
            scaled_sleep(pause)
            emit(block)
    emit("")
    sys.exit(0)


def _stdin_closed() -> bool:
    """Like the real codex, wait for stdin to close; report whether it did within 5 s."""
    ready, _, _ = select.select([sys.stdin], [], [], 5)
    return bool(ready) and sys.stdin.read() == ""


def main(cli: str) -> None:
    stdin_closed = _stdin_closed() if cli == "codex" else None
    record(cli, stdin_closed)
    if cli == "codex" and not stdin_closed:
        hang()
    {"claude": claude, "codex": codex, "gemini": gemini, "aider": aider}[cli](sys.argv[1:])
