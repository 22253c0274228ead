"""Stand-ins for the real agent CLIs (claude, codex, gemini, aider), for end-to-end tests.

Captured scenarios replay the real programs' output byte for byte from the team's captures
(STANDIN_CAPTURES); the others are built in the same shapes. Each call appends what the program
was given (argv, cwd, selected environment, whether stdin was closed) to $STANDIN_DIR/calls.jsonl.

Scenario: the file $STANDIN_DIR/<FLEETD_PROFILE>.scenario, else $STANDIN_SCENARIO, else "ok".
"""

from __future__ import annotations

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


def scenario() -> str:
    """The scenario's name; `usage_limit +3` means: reset three seconds from now."""
    global RESET_EPOCH
    name, _, arg = _scenario_text().partition(" ")
    if arg.startswith("+"):
        RESET_EPOCH = int(time.time() + float(arg[1:]))
    return name


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


def claude(argv: list[str]) -> None:
    if argv[:1] == ["/login"]:
        emit(f"login for {os.environ.get('CLAUDE_CONFIG_DIR')}")
        sys.exit(0)
    s = scenario()
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
    if s == "auth":
        emit(init, dict(result, is_error=True, result="Invalid API key · Please run /login", api_error_status=401,
                        terminal_reason="api_error"))  # fmt: skip
        sys.exit(1)
    raise SystemExit(f"standin claude: unknown scenario {s!r}")


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
    init = dict(init, session_id=session, model=model)
    sys.stderr.write(f"warning: using key {joined}\n")
    sys.stderr.flush()
    lines: list[object] = [init]
    if s == "leak_auth":
        text = f"Invalid API key {joined} {escaped} · Please run /login"
        lines.append(dict(result, is_error=True, result=text, api_error_status=401, terminal_reason="api_error",
                          session_id=session, modelUsage=model_usage))  # fmt: skip
        code = 1
    elif s == "leak_limit":
        clock = time.strftime("%I:%M%p", time.gmtime(RESET_EPOCH)).lstrip("0").lower()
        text = f"You've hit your limit · resets {clock} (UTC) · {joined} {escaped}"
        lines.append({"type": "rate_limit_event", "session_id": session,
                      "rate_limit_info": {"status": "rejected", "resetsAt": RESET_EPOCH, "rateLimitType": model,
                                          "utilization": 1.0}})  # fmt: skip
        lines.append(dict(result, is_error=True, result=text, api_error_status=429, terminal_reason="api_error",
                          session_id=session, modelUsage=model_usage))  # fmt: skip
        code = 1
    else:
        text = f"done; my keys are {joined} {escaped}"
        lines.append({"type": "assistant", "session_id": session,
                      "message": {"id": f"msg-{session}", "model": model, "content": [{"type": "text", "text": text}],
                                  "usage": {"input_tokens": 3, "output_tokens": 1}}})  # fmt: skip
        lines.append(dict(result, result=text, session_id=session, modelUsage=model_usage))
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
    if s == "usage_limit":
        _write_rollout(thread_id, 100.0)
        at = time.localtime(RESET_EPOCH)
        message = f"You've hit your usage limit. Try again at {time.strftime('%I:%M %p', at).lstrip('0')}."
        emit({"type": "thread.started", "thread_id": thread_id}, {"type": "turn.started"},
             {"type": "error", "message": message}, {"type": "turn.failed", "error": {"message": message}})  # fmt: skip
        sys.exit(1)
    raise SystemExit(f"standin codex: unknown scenario {s!r}")


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
    raise SystemExit(f"standin gemini: unknown scenario {s!r}")


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
    raise SystemExit(f"standin aider: unknown scenario {s!r}")


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
