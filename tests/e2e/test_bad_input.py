"""Bad input: one line on stderr, exit 2 for usage errors and 1 otherwise, nothing saved."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon


def assert_refused(daemon: Daemon, args: list[str], code: int, *fragments: str) -> None:
    before = daemon.json("loop", "list")
    result = daemon.cli(*args, check=False)
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fleetd: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert daemon.json("loop", "list") == before  # nothing partially saved


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--cron", "61 * * * *"], ["invalid cron expression '61 * * * *'"]),
        (["--cron", "every day"], ["invalid cron expression"]),
        (["--every", "10 parsecs"], ["invalid --every", "10 parsecs"]),
        (["--every", "0s"], ["must be positive"]),
        (["--at", "next tuesday"], ["invalid time 'next tuesday'"]),
        (["--at", "2001-01-01T09:00"], ["is in the past"]),
        (["--every", "1m", "--timeout", "forever"], ["invalid --timeout"]),
        (["--every", "1m", "--dir", "/nonexistent/dir"], ["directory not found: /nonexistent/dir"]),
        (["--every", "1m", "--prompt-file", "/nonexistent/p.md"], ["prompt file not found"]),
        (["--every", "1m", "--env", "NOEQUALS"], ["invalid --env 'NOEQUALS'"]),
        (["--every", "1m", "--env", "FLEETD_RUN_ID=3"], ["reserved for fleetd"]),
        (["--every", "1m", "--tz", "Mars/Olympus"], ["unknown time zone 'Mars/Olympus'"]),
        (["--every", "1m", "--backend", "teleport"], ["unknown backend 'teleport'"]),
        (["--every", "1m", "--cron", "* * * * *"], ["exactly one schedule"]),
        ([], ["exactly one schedule"]),
        # Numbers that cannot be stored or encoded (were a 500 *and* a saved loop that broke `loop list`):
        (["--every", "1m", "--timeout", "9" * 400], ["invalid --timeout", "too long (at most 100 years)"]),
        (["--every", "99999999999w"], ["invalid --every", "too long"]),
        (["--every", "1m", "--output-cap", "99999999999999G"], ["invalid --output-cap"]),
        (["--every", "1m", "--output-cap", "inf"], ["invalid --output-cap 'inf'"]),
        (["--every", "1m", "--output-cap", "lots"], ["invalid --output-cap 'lots'"]),
        (["--every", "1m", "--output-cap", "100"], ["invalid --output-cap '100'", "from 1k to 1024G"]),
        # The text typed, not its byte count (was "invalid --output-cap 1100585369600"); 0.3k was saved as 307.
        (["--every", "1m", "--output-cap", "1025G"], ["invalid --output-cap '1025G'", "from 1k to 1024G"]),
        (["--every", "1m", "--output-cap", "0.3k"], ["invalid --output-cap '0.3k'", "whole number of bytes"]),
        (["--every", "1m", "--dir", "/" + "d" * 300], ["cannot use directory", "File name too long"]),
        (["--every", "1m", "--dir", "/" + "d/" * 2100], ["directory is longer than 4096 bytes"]),
        (["--at", "9999-12-31T23:59:59-12:00"], ["invalid time", "out of range"]),
        (["--cron", "0 0 31 2 *"], ["cron expression '0 0 31 2 *' never fires"]),
        (["--cron", "0 0 31 2 *", "--paused"], ["never fires"]),
    ],
)
def test_invalid_loop_definitions_exit_2(daemon: Daemon, args: list[str], fragments: list[str]) -> None:
    command = [] if "--backend" in args else ["--command", "true"]
    assert_refused(daemon, ["loop", "add", "bad", *args, *command], 2, *fragments)


def test_prompt_and_prompt_file_together_exit_2(daemon: Daemon) -> None:
    prompt_file = str(Path(__file__).resolve())  # exists: only the "not both" rule refuses it
    args = ["loop", "add", "bad", "--every", "1h", "--command", "true", "--prompt", "hi", "--prompt-file", prompt_file]
    assert_refused(daemon, args, 2, "give either --prompt or --prompt-file, not both")


def test_command_backend_needs_a_command(daemon: Daemon) -> None:
    assert_refused(daemon, ["loop", "add", "bad", "--every", "1m"], 2, "needs --command")


def test_invalid_name_exits_2(daemon: Daemon) -> None:
    assert_refused(daemon, ["loop", "add", "../etc", "--every", "1m", "--command", "true"], 2, "invalid loop name")


def test_duplicate_loop_exits_1_and_keeps_the_first(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "dup", "--every", "1h", "--command", "echo first")
    assert_refused(daemon, ["loop", "add", "dup", "--every", "1m", "--command", "x"], 1, "loop 'dup' already exists")
    assert daemon.json("loop", "show", "dup")["command"] == "echo first"


@pytest.mark.parametrize("verb", ["show", "pause", "resume", "rm", "run"])
def test_unknown_loop_exits_1(daemon: Daemon, verb: str) -> None:
    assert_refused(daemon, ["loop", verb, "ghost"], 1, "no loop named 'ghost'")


def test_unknown_and_malformed_runs(daemon: Daemon) -> None:
    assert_refused(daemon, ["runs", "show", "999999"], 1, "no run with id 999999")
    assert_refused(daemon, ["runs", "show", "abc"], 2, "invalid run id 'abc'")
    assert_refused(daemon, ["runs", "list", "--status", "happy"], 2, "invalid status 'happy'")
    assert_refused(daemon, ["runs", "list", "--since", "yesterday"], 2, "invalid --since")
    assert_refused(daemon, ["runs", "list", "--limit", "0"], 2, "--limit must be between")
    assert_refused(daemon, ["runs", "list", "--loop", "bad name"], 2, "invalid loop name 'bad name'")  # was []


def test_a_loop_name_nothing_knows_is_refused_not_an_empty_answer(daemon: Daemon) -> None:
    # A typo in --loop printed an empty list (and stats all zeros), exit 0: as if the loop had never run.
    assert_refused(daemon, ["runs", "list", "--loop", "ghost"], 1, "no loop named 'ghost'")
    assert_refused(daemon, ["stats", "--loop", "ghost"], 1, "no loop named 'ghost'")
    # A loop that exists but has not run yet, and one removed whose runs are on record, are answered.
    daemon.cli("loop", "add", "fresh", "--every", "1h", "--paused", "--command", "true")
    assert daemon.json("runs", "list", "--loop", "fresh") == []
    assert daemon.json("stats", "--loop", "fresh")["total"]["runs_started"] == 0
    daemon.cli("loop", "add", "gone", "--every", "1h", "--paused", "--command", "true")
    daemon.wait_run(daemon.json("loop", "run", "gone")["id"])
    daemon.cli("loop", "rm", "gone")
    assert [r["loop"] for r in daemon.json("runs", "list", "--loop", "gone")] == ["gone"]
    assert daemon.json("runs", "list", "--loop", "gone", "--status", "failed") == []  # known: filtered, not refused
    assert daemon.json("stats", "--loop", "gone")["total"]["runs_started"] == 1


def test_click_usage_errors_are_one_line_exit_2(daemon: Daemon) -> None:
    assert_refused(daemon, ["loop", "add", "x", "--catch-up", "twice"], 2, "twice")
    assert_refused(daemon, ["loop", "frobnicate"], 2, "No such command")


def test_daemon_not_running_message(tmp_path: Path) -> None:
    absent = Daemon(tmp_path / "nothing-here")
    for args in (["loop", "list"], ["runs", "list"], ["daemon", "status"]):
        result = absent.cli(*args, check=False)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"fleetd: the daemon is not running (socket {absent.socket}); start it with `fleetd daemon start`"
        )


def _raw(daemon: Daemon, request: bytes) -> tuple[int, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(daemon.socket))
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"POST /v1/loops HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{bad}", 400,
         "invalid_argument"),
        (b"POST /v1/loops HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]", 400,
         "invalid_argument"),
        (b'POST /v1/loops HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nConnection: close\r\n\r\n'
         b'{"name": 5, "every": "1m"}    ', 400, "invalid_argument"),
        (b"GET /v1/nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
        (b"PUT /v1/loops HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 405,
         "method_not_allowed"),
    ],
)  # fmt: skip
def test_api_answers_bad_requests_with_json_errors(
    daemon: Daemon, request_bytes: bytes, status: int, code: str
) -> None:
    got_status, body = _raw(daemon, request_bytes)
    assert got_status == status
    assert body["error"]["code"] == code and body["error"]["message"]


def test_gateway_public_without_a_gateway_is_refused(tmp_path: Path) -> None:
    # It started the daemon with no gateway and no word: the flag only widens what --gateway may listen on.
    result = Daemon(tmp_path / "h").cli("daemon", "run", "--gateway-public", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("fleetd: --gateway-public needs --gateway HOST:PORT")
    assert not (tmp_path / "h").exists()


def test_start_of_a_running_daemon_says_the_options_given_are_not_applied(daemon: Daemon) -> None:
    result = daemon.cli("daemon", "start", "--retain", "1m", "--kill-grace", "2s")
    assert result.stdout.startswith("fleetd daemon already running")
    assert result.stderr.strip() == (
        "warning: --kill-grace, --retain not applied: the running daemon keeps its options "
        "(`fleetd daemon restart` with them applies them)"
    )
    assert daemon.cli("daemon", "start").stderr == ""  # none given, nothing to say


@pytest.mark.parametrize("value", ["150%", "0", "most"])
def test_daemon_refuses_a_bad_near_limit(tmp_path: Path, value: str) -> None:
    result = Daemon(tmp_path / "h").cli("daemon", "run", "--near-limit", value, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"fleetd: invalid --near-limit {value!r}: " + (
        "use e.g. 90% or 0.9" if value == "most" else "between 0 and 100%"
    )
    assert not (tmp_path / "h").exists()  # refused before anything was created


def assert_profile_refused(daemon: Daemon, args: list[str], *fragments: str) -> None:
    before = daemon.json("profile", "list")
    result = daemon.cli("profile", "add", "bad", *args, check=False)
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fleetd: ") and all(f in line for f in fragments), line
    assert "SECRET" not in line
    # Nothing saved, and the listings that a stored inf or 400-digit number broke still answer.
    assert daemon.json("profile", "list") == before
    daemon.json("usage")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--price-input", "inf"], ["invalid --price-input inf", "a finite number"]),
        (["--price-output", "nan"], ["invalid --price-output nan"]),
        (["--price-cache-read", "1e400"], ["invalid --price-cache-read inf"]),
        (["--price-input", "-1"], ["--price-input cannot be negative"]),
        (["--limit", "5h=" + "9" * 400 + "tok"], ["invalid --limit", "at most 1,000,000,000,000,000"]),
        (["--limit", "99999999999w=5tok"], ["invalid --limit", "too long"]),
        (["--base-url", "http://[::1"], ["invalid --base-url 'http://[::1'"]),
        (["--base-url", "http://localhost:99999/v1"], ["invalid --base-url"]),
        # Credentials in the URL were stored and shown by `profile show`, `profile env` and --json:
        (["--base-url", "http://user:pw@127.0.0.1:1/v1"], ["--base-url 'http://127.0.0.1:1/v1': no credentials"]),
        # A key in the query was shown as the credentials were, and the API's path went after it (?key=K/chat/…):
        (["--base-url", "https://gw.example/v1?key=AIzaSECRET"], ["--base-url 'https://gw.example/v1?…': no query"]),
        (["--base-url", "http://127.0.0.1:1/v1#frag"], ["--base-url 'http://127.0.0.1:1/v1#…': no query or fragment"]),
        (["--config-dir", "/proc/fleetd-nope/x"], ["/proc/fleetd-nope does not exist"]),
        (["--model", ""], ["--model needs a value"]),  # was taken as no model
    ],
)
def test_profile_numbers_and_urls_that_cannot_be_stored_exit_2(
    daemon: Daemon, args: list[str], fragments: list[str]
) -> None:
    backend = "openai_compat" if "--base-url" in args else "claude_code"
    assert_profile_refused(daemon, ["--backend", backend, *args], *fragments)


def test_a_profile_named_like_another_backend_is_refused(daemon: Daemon) -> None:
    """`--chain codex` means the codex backend (any of its profiles): a claude_code profile named `codex` was saved,
    and a chain naming it silently ran Codex instead."""
    result = daemon.cli("profile", "add", "codex", "--backend", "claude_code", check=False)
    assert (result.returncode, result.stderr) == (
        2, "fleetd: a profile named 'codex' must be a codex profile: --chain and --review read the name as the codex "
           "backend\n"
    )  # fmt: skip
    assert "codex" not in {p["name"] for p in daemon.json("profile", "list")}


def _request(daemon: Daemon, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return _raw(daemon, head.encode() + body)


def _loop_body(**fields: object) -> bytes:
    return json.dumps({"name": "api-bad", "every": "1h", "command": "true", "enabled": False, **fields}).encode()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/runs/99999999999999999999", b"", 404),
        ("GET", "/v1/runs/99999999999999999999/log", b"", 404),
        ("GET", "/v1/runs/" + "9" * 5000, b"", 400),
        ("GET", "/v1/loops/", b"", 404),  # an empty name: was a 307 with no body, which the CLI read as None
        ("GET", "/v1/runs?since=" + "9" * 20, b"", 400),
        ("GET", "/v1/runs?limit=" + "9" * 20, b"", 400),
        ("GET", "/v1/events?limit=" + "9" * 20, b"", 400),
        ("GET", "/v1/events?after=" + "9" * 20, b"", 400),
        ("GET", "/v1/events?limit=-5", b"", 400),
        ("POST", "/v1/loops", b"[" * 100_000 + b"]" * 100_000, 400),
        ("POST", "/v1/loops", b'{"a":' * 40 + b"1" + b"}" * 40, 400),
        ("POST", "/v1/loops", b'{"name": ' + b"1" * 5000 + b"}", 400),
        ("POST", "/v1/loops", _loop_body(command="\ud800"), 400),
        ("POST", "/v1/loops", _loop_body(dir="/tmp\x00"), 400),
        ("POST", "/v1/loops", _loop_body(prompt_file="/etc/hostname\x00", command="true"), 400),
        ("POST", "/v1/loops", _loop_body(command="true\x00"), 400),
        ("POST", "/v1/loops", _loop_body(dir="/" + "d" * 300), 400),
        ("POST", "/v1/loops", _loop_body(output_cap=10**30), 400),
        ("POST", "/v1/loops", _loop_body(output_cap=1e400), 400),
        ("POST", "/v1/loops", _loop_body(timeout=1e400), 400),
        ("POST", "/v1/loops", _loop_body(enabled="yes"), 400),
        ("POST", "/v1/loops", _loop_body(env={"A": {"nested": 1}}), 400),
        ("POST", "/v1/profiles", b'{"name": "api-bad", "backend": "codex", "price_input": Infinity}', 400),
        ("POST", "/v1/profiles", b'{"name": "api-bad", "backend": "codex", "price_input": ' + b"9" * 400 + b"}", 400),
        ("POST", "/v1/profiles", b'{"name": "api-bad", "backend": "codex", "config_dir": "/tmp/x\\u0000"}', 400),
    ],
)  # fmt: skip
def test_api_answers_unstorable_input_with_4xx_and_no_traceback(
    daemon: Daemon, method: str, path: str, body: bytes, status: int
) -> None:
    log = daemon.home / "daemon-test.log"
    log_size = log.stat().st_size
    got, answer = _request(daemon, method, path, body)
    assert (got, answer["error"]["code"]) == (status, "not_found" if status == 404 else "invalid_argument"), answer
    assert answer["error"]["message"]
    with log.open("rb") as f:
        f.seek(log_size)
        assert b"Traceback" not in f.read()  # bad input is not an internal error: no log noise
    for listing in ("/v1/loops", "/v1/profiles"):
        status, items = _request(daemon, "GET", listing)
        assert status == 200 and "api-bad" not in {x["name"] for x in items}


@pytest.mark.parametrize("interval", ["-1", "0", "nan", "inf"])
def test_usage_watch_refuses_a_bad_interval(daemon: Daemon, interval: str) -> None:
    result = daemon.cli("usage", "--watch", "--interval", interval, check=False)
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fleetd: Invalid value for '--interval'")


@pytest.mark.parametrize(
    "command",
    [
        ["daemon", "stop", "--wait"],
        ["daemon", "start", "--wait"],
        ["daemon", "restart", "--stop-wait"],
        ["usage", "--watch", "--interval"],
    ],
)
def test_the_clis_own_waits_take_a_duration_as_every_other_flag_does(daemon: Daemon, command: list[str]) -> None:
    # `daemon stop --wait 60s` said "'60s' is not a valid float", where `--stop-grace 30s` beside it was taken.
    result = daemon.cli(*command, "1h30", check=False)  # a bad duration: refused in its own words
    assert result.returncode == 2 and "invalid duration '1h30'" in result.stderr, result
    if command[:2] == ["daemon", "start"]:  # a good one is taken (the daemon runs already: nothing more to do)
        assert "already running" in daemon.cli(*command, "90s").stdout


def test_usage_watch_refuses_an_interval_that_would_poll_in_a_tight_loop(daemon: Daemon) -> None:
    assert_refused(daemon, ["usage", "--watch", "--interval", "1ms"], 2, "--interval must be at least 0.5s")


def test_usage_interval_without_watch_is_refused(daemon: Daemon) -> None:
    assert_refused(daemon, ["usage", "--interval", "1"], 2, "--interval needs --watch")  # was taken and ignored


@pytest.mark.parametrize("command", [["daemon", "start"], ["daemon", "run"]])
def test_a_home_that_cannot_be_made_is_one_line_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    home = Daemon(tmp_path / "unused")
    home.env["FLEETD_HOME"] = "/proc/fleetd-nope"  # /proc refuses new directories, even to root
    result = home.cli(*command, check=False)
    assert result.returncode == 1, result
    expected = "fleetd: cannot create the fleetd home /proc/fleetd-nope: No such file or directory"
    assert result.stderr.strip() == expected
    assert not os.path.exists("/proc/fleetd-nope")


@pytest.mark.parametrize("command", [["daemon", "start"], ["daemon", "run"], ["loop", "list"], ["daemon", "status"]])
def test_a_home_too_deep_for_a_socket_says_to_shorten_it(command: list[str]) -> None:
    home = Path("/tmp") / ("fleetd-deep-" + "d" * 100)
    socket_path = f"{home}/run/fleetd.sock"  # 133 bytes: over sun_path's 108
    daemon = Daemon(home)
    result = daemon.cli(*command, check=False)
    assert result.returncode == 1, result
    assert result.stderr.strip() == (
        f"fleetd: the socket path {socket_path} is {len(socket_path)} bytes, more than the 107 a Unix socket's path "
        "can have: set a shorter FLEETD_HOME"
    )  # was "cannot listen on the socket …: AF_UNIX path too long", the home made all the same
    assert not home.exists()


def test_daemon_stop_without_a_daemon_exits_1_with_one_line(tmp_path: Path) -> None:
    result = Daemon(tmp_path / "home").cli("daemon", "stop", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"fleetd: the daemon is not running (socket {tmp_path}/home/run/fleetd.sock)"
    ]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["loop", "show", "a/b"], "invalid loop name 'a/b'"),
        (["loop", "rm", "../hooks/h5"], "invalid loop name '../hooks/h5'"),
        (["loop", "show", ""], "invalid loop name ''"),
        (["loop", "run", "x/run"], "invalid loop name 'x/run'"),
        (["loop", "edit", "a/b", "--every", "1h"], "invalid loop name 'a/b'"),
        (["profile", "show", "a/b"], "invalid profile name 'a/b'"),
        (["profile", "rm", ""], "invalid profile name ''"),
        (["hook", "rm", "a/b"], "invalid hook name 'a/b'"),
        (["hook", "test", "../loops/x"], "invalid hook name '../loops/x'"),
        (["route", "show", "a/b"], "invalid route name 'a/b'"),
        (["route", "rm", ""], "invalid route name ''"),
        (["gateway", "key", "rm", "a/b"], "invalid key name 'a/b'"),
        (["usage", "show", "a/b"], "invalid profile name 'a/b'"),
    ],
)
def test_a_name_no_loop_profile_hook_or_route_can_have_is_a_usage_error(
    daemon: Daemon, args: list[str], fragment: str
) -> None:
    # A '/' made the request's path another resource's (`GET /v1/loops/a/b: Not Found`, exit 1).
    assert_refused(daemon, args, 2, fragment)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--paused", "--enabled"], ["give --paused or --enabled, not both"]),
        (["--verify-timeout", "abc"], ["--verify-timeout needs an agent backend"]),
        (["--verify-timeout", "0"], ["--verify-timeout needs an agent backend"]),
        (["--model", "sonnet"], ["the command backend takes no --model"]),
        (["--agent-arg", "--verbose"], ["the command backend takes no --agent-arg"]),
        (["--tz", ""], ["--tz needs a value"]),
        (["--tiers", ""], ["--tiers needs a value"]),
    ],
)
def test_options_a_command_loop_cannot_use_are_refused(daemon: Daemon, args: list[str], fragments: list[str]) -> None:
    assert_refused(daemon, ["loop", "add", "bad", "--every", "1h", "--command", "true", *args], 2, *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--verify-timeout", "abc"], ["invalid --verify-timeout"]),
        (["--verify-timeout", "-1"], ["invalid --verify-timeout"]),
        (["--verify-timeout", "0"], ["invalid --verify-timeout"]),
    ],
)
def test_options_an_agent_loop_cannot_use_are_refused(daemon: Daemon, args: list[str], fragments: list[str]) -> None:
    _a_claude_profile(daemon)
    assert_refused(daemon, ["loop", "add", "bad", "--every", "1h", "--backend", "claude_code", "--prompt", "hi",
                            "--verify", "true", *args], 2, *fragments)  # fmt: skip


def test_verify_timeout_needs_verify_and_goes_with_it(daemon: Daemon) -> None:
    _a_claude_profile(daemon)
    agent = ["--every", "1h", "--backend", "claude_code", "--prompt", "hi"]
    # Accepted and doing nothing before.
    assert_refused(
        daemon, ["loop", "add", "bad", *agent, "--verify-timeout", "5m"], 2, "--verify-timeout needs --verify"
    )
    daemon.cli("loop", "add", "gated-vt", *agent, "--verify", "true", "--verify-timeout", "5m")
    daemon.cli("loop", "edit", "gated-vt", "--clear-verify")  # its timeout goes with it
    shown = daemon.json("loop", "show", "gated-vt")
    assert shown["verify"] is None and shown["verify_timeout_s"] == 600.0
    daemon.cli("loop", "rm", "gated-vt")


def test_a_prompt_file_too_big_to_pass_is_refused_at_add_and_fails_its_run_clearly(
    daemon: Daemon, tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("p" * 132_000)
    assert_refused(daemon, ["loop", "add", "bad", "--every", "1h", "--command", "true", "--prompt-file", str(prompt)],
                   2, "prompt file", "132,000 bytes", "at most 131,057")  # fmt: skip
    # One that grows past the limit after `loop add`: `loop run` refuses it saying so (a scheduled run fails saying
    # so, not "Argument list too long": tests/loops/test_executor_output.py).
    prompt.write_text("small")
    daemon.cli("loop", "add", "grows", "--every", "1h", "--command", "cat", "--prompt-file", str(prompt))
    prompt.write_text("p" * 132_000)
    refused = daemon.cli("loop", "run", "grows", check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("fleetd: loop grows cannot run: prompt file"), refused
    assert "132,000 bytes" in refused.stderr and "(`fleetd loop edit grows --prompt-file FILE`)" in refused.stderr
    assert daemon.json("runs", "list", "--loop", "grows") == []


@pytest.mark.parametrize("args", [["loop", "edit", "x", "--paused", "--enabled"], ["loop", "edit", "x", "--tz", ""]])
def test_edit_refuses_what_add_refuses(daemon: Daemon, args: list[str]) -> None:
    if not any(lp["name"] == "x" for lp in daemon.json("loop", "list")):
        daemon.cli("loop", "add", "x", "--every", "1h", "--command", "true")
    before = daemon.json("loop", "show", "x")
    result = daemon.cli(*args, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result
    assert daemon.json("loop", "show", "x") == before


def test_loop_run_json_of_a_skipped_run_exits_1(daemon: Daemon, tmp_path: Path) -> None:
    daemon.cli("loop", "add", "slow", "--every", "1h", "--command", "sleep 30")
    first = daemon.json("loop", "run", "slow")
    result = daemon.cli("loop", "run", "slow", "--json", check=False)
    assert result.returncode == 1, result
    assert json.loads(result.stdout)["status"] == "skipped"
    daemon.cli("loop", "stop", "slow", "--kill")
    assert daemon.wait_run(first["id"])["status"] == "cancelled"


@pytest.mark.parametrize("args", [[], ["loop"], ["profile"], ["gateway", "key"]])
def test_a_group_without_a_command_is_one_line_naming_its_commands(daemon: Daemon, args: list[str]) -> None:
    result = daemon.cli(*args, check=False)
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fleetd: ") and "--help" in line, line
    assert ("list" in line) if args else ("loop" in line and "daemon" in line), line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"prompt": "x" * 140_000}, "--prompt is 140,000 bytes; at most 131,057"),
        ({"env": ["BIG=" + "x" * 140_000]}, "--env BIG is 140,004 bytes"),
        ({"command": "echo " + "x" * 140_000}, "--command is 140,005 bytes; at most 130,047"),
        # Under Linux's 128 KiB, yet too long once the line that joins its cgroup is put before it:
        ({"command": "true #" + "a" * 131_000}, "--command is 131,006 bytes; at most 130,047"),
        ({"command": None, "backend": "claude_code", "prompt": "hi", "agent_args": ["y" * 140_000]},
         "--agent-arg is 140,000 bytes"),
        # Each entry under the limit, all of them together over what one process can be given (2 MiB):
        ({"env": [f"V{i}=" + "x" * 130_000 for i in range(17)]}, "together are 2,210,0"),
    ],
)  # fmt: skip
def test_a_value_too_big_for_one_argument_or_variable_is_refused(
    daemon: Daemon, fields: dict[str, Any], fragment: str
) -> None:
    # Linux takes at most 128 KiB in one argument or environment variable: such a loop was saved and every
    # run failed with "Argument list too long". (The CLI cannot even be given one: its own argv has the cap.)
    _a_claude_profile(daemon)
    before = daemon.json("loop", "list")
    body = {key: value for key, value in json.loads(_loop_body(**fields)).items() if value is not None}
    status, answer = _request(daemon, "POST", "/v1/loops", json.dumps(body).encode())
    assert status == 400, answer
    assert fragment in answer["error"]["message"] and "at most 1" in answer["error"]["message"], answer
    assert daemon.json("loop", "list") == before


def _a_claude_profile(daemon: Daemon) -> None:
    if not any(p["name"] == "p1" for p in daemon.json("profile", "list")):
        daemon.cli("profile", "add", "p1", "--backend", "claude_code", "--config-dir", str(daemon.home / "p1"))


def test_a_command_and_a_prompt_at_their_limits_run(daemon: Daemon) -> None:
    # The limits are what a run can really be given: at them, the run starts (in its cgroup, where it has one).
    head = 'printf %s "${#FLEETD_PROMPT}" #'
    command = head + "a" * (130_047 - len(head))
    assert len(command) == 130_047
    body = {"name": "at-limits", "every": "1h", "command": command, "prompt": "p" * 131_057, "enabled": False}
    status, answer = _request(daemon, "POST", "/v1/loops", json.dumps(body).encode())
    assert status == 201, answer
    run = daemon.wait_run(daemon.json("loop", "run", "at-limits")["id"])
    assert run["status"] == "succeeded", run
    assert daemon.cli("runs", "logs", str(run["id"])).stdout == "131057"


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/loops", {"name": "typo", "every": "1h", "command": "true", "timout": "5m"}, "field 'timout'"),
        ("/v1/loops", {"name": "typo", "every": "1h", "command": "true", "paused": True}, "field 'paused'"),
        ("/v1/profiles", {"name": "typo", "backend": "claude_code", "modle": "x"}, "unknown profile field 'modle'"),
        ("/v1/hooks", {"name": "typo", "on": "run.failed", "exec": "true", "timeot": "5s"}, "unknown hook field"),
        ("/v1/routes", {"name": "typo", "chain": "nobody", "apis": "chat"}, "unknown route field 'apis'"),
        ("/v1/gateway/keys", {"name": "typo", "route": "r1"}, "unknown key field 'route'"),
    ],
)  # fmt: skip
def test_a_field_the_api_does_not_know_is_refused_not_dropped(
    daemon: Daemon, path: str, body: dict[str, Any], fragment: str
) -> None:
    # The loop was saved enabled and without a timeout: both fields dropped without a word (PATCH refused them).
    status, answer = _request(daemon, "POST", path, json.dumps(body).encode())
    assert status == 400, answer
    assert fragment in answer["error"]["message"], answer
    listed = {"/v1/loops": ["loop", "list"], "/v1/profiles": ["profile", "list"], "/v1/hooks": ["hook", "list"],
              "/v1/routes": ["route", "list"], "/v1/gateway/keys": ["gateway", "key", "list"]}[path]  # fmt: skip
    assert "typo" not in {item["name"] for item in daemon.json(*listed)}


def test_an_action_refuses_a_body_it_does_not_take_and_does_nothing(daemon: Daemon) -> None:
    """`POST …/run` with `{"x": 1}` or a body that is not JSON started a run; `{"kil": true}` stopped gracefully
    what was meant to be killed: the actions never read their bodies."""
    daemon.cli("loop", "add", "acted", "--every", "1h", "--command", "sleep 30")
    _a_claude_profile(daemon)
    before = daemon.json("runs", "list", "--loop", "acted")
    for path, body in [
        ("/v1/loops/acted/run", b'{"x": 1}'),
        ("/v1/loops/acted/run", b"notjson"),
        ("/v1/loops/acted/pause", b'{"x": 1}'),
        ("/v1/loops/acted/resume", b'{"x": 1}'),
        ("/v1/profiles/p1/switch", b'{"x": 1}'),
        ("/v1/profiles/p1/disable", b'{"x": 1}'),
        ("/v1/profiles/p1/reset-circuit", b'{"x": 1}'),
        ("/v1/backends/claude_code/auto", b'{"x": 1}'),
        ("/v1/gateway/disable", b'{"x": 1}'),
        ("/v1/shutdown", b'{"x": 1}'),
    ]:
        status, answer = _request(daemon, "POST", path, body)
        assert status == 400, (path, answer)
        message = answer["error"]["message"]
        assert message in ("request body is not valid JSON", f"unknown field 'x' for POST {path} (it takes none)")
    assert daemon.json("runs", "list", "--loop", "acted") == before
    assert daemon.json("loop", "show", "acted")["enabled"] is True
    assert [p["enabled"] for p in daemon.json("profile", "list") if p["name"] == "p1"] == [True]
    assert daemon.status() == "ok"

    run_id = daemon.json("loop", "run", "acted")["id"]
    status, answer = _request(daemon, "POST", f"/v1/runs/{run_id}/stop", b'{"kil": true}')
    assert status == 400 and answer["error"]["message"] == (
        f"unknown field 'kil' for POST /v1/runs/{run_id}/stop (its fields: kill)"
    ), answer
    status, answer = _request(daemon, "POST", "/v1/loops/acted/stop", b'{"kil": true}')
    assert status == 400, answer
    assert daemon.json("runs", "show", str(run_id))["status"] == "running"
    daemon.cli("runs", "stop", str(run_id), "--kill")


def test_a_command_given_to_an_agent_backend_is_what_the_refusal_names(daemon: Daemon) -> None:
    # With no profile of that backend yet, it said what tiers or profiles were missing, never that the backend takes
    # no --command: the user fixed the profiles first and was refused again.
    args = ["loop", "add", "bad", "--every", "1m", "--command", "true", "--prompt", "x", "--backend", "openai_compat"]
    assert_refused(daemon, args, 2, "the openai_compat backend takes no --command")
    # A metered profile of it, outside a loop's default tiers: the refusal was about tiers.
    daemon.cli("profile", "add", "cmd-metered", "--backend", "openai_compat", "--base-url", "http://127.0.0.1:9/v1",
               "--model", "m", "--tier", "metered")  # fmt: skip
    try:
        assert_refused(daemon, args, 2, "the openai_compat backend takes no --command")
    finally:
        daemon.cli("profile", "rm", "cmd-metered")
