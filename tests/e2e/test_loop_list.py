"""`fleetd loop list`, the command scripts poll: what it loads (so its start-up cannot grow unnoticed),
how its --json is laid out (as every --json, though it prints the daemon's bytes as they come), and that
the daemon's answer, rendered once per change, follows every change."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

from tests.harness import FLEETD, Daemon, wait_until

# Runs the `fleetd` entry point as the shell does, then names every module the process loaded.
_LOADED = """
import runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code or 0
sys.stderr.write("\\n".join(sorted(sys.modules)) + f"\\nexit {code}\\n")
"""

# What `loop list --json` may load of fleetd: no other command module, not `loop add`'s options
# (loopdef, addedit), not the text formatters, nothing daemon-side.
LOOP_LIST_FLEETD = {
    "fleetd",
    "fleetd.cli",
    "fleetd.cli.client",
    "fleetd.cli.common",
    "fleetd.cli.complete",
    "fleetd.cli.loop",
    "fleetd.cli.main",
    "fleetd.paths",
}
# What it must not load beyond click: each costs milliseconds of a ~30 ms command.
HEAVY = {
    "dataclasses",  # fleetd's records and Option
    "pathlib",  # with urllib.parse and ipaddress
    "urllib.parse",
    "socket",  # selectors, array: the client uses _socket
    "json",  # the answer is printed as it comes
    "http.client",
    "ssl",
    "importlib.metadata",  # an entry point that looked itself up
    "platformdirs",
    "asyncio",
}


def _loaded(daemon: Daemon, *args: str) -> tuple[set[str], str]:
    result = subprocess.run(
        [sys.executable, "-c", _LOADED, FLEETD, *args], env=daemon.env, capture_output=True, text=True, timeout=60
    )
    *modules, status = result.stderr.splitlines()
    assert status == "exit 0", result.stderr[-2000:]
    return set(modules), result.stdout


def test_loop_list_json_loads_only_its_own_path(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "light", "--every", "1h", "--paused", "--command", "true")
    modules, out = _loaded(daemon, "loop", "list", "--json")
    assert "light" in {lp["name"] for lp in json.loads(out)}
    assert {m for m in modules if m.split(".")[0] == "fleetd"} == LOOP_LIST_FLEETD
    assert modules & HEAVY == set()


def test_loop_list_json_is_laid_out_as_every_json_output(daemon: Daemon) -> None:
    """The daemon lays the answer out and the CLI prints it as it comes: byte for byte what decoding
    it and printing it as every other --json does (json.dumps, indent 2, non-ASCII escaped) gives."""
    daemon.cli("loop", "add", "accents", "--every", "1h", "--paused", "--command", "echo héllo ✓ \"q\"",
               "--env", "GREETING=grüß dich", "--env", "MOOD=très ✓")  # fmt: skip
    out = daemon.cli("loop", "list", "--json").stdout
    assert out == json.dumps(json.loads(out), indent=2) + "\n"
    assert "\\u00e9" in out  # escaped, as json.dumps does by default
    shown = daemon.cli("loop", "show", "accents", "--json").stdout  # decoded and printed by the CLI
    assert json.loads(shown)["command"] == next(lp for lp in json.loads(out) if lp["name"] == "accents")["command"]


def test_loop_list_follows_every_change(daemon: Daemon) -> None:
    """The daemon renders the list once per change: each change shows at once, in the text and in --json."""

    def listed(name: str) -> dict[str, Any] | None:
        return next((lp for lp in daemon.json("loop", "list") if lp["name"] == name), None)

    assert listed("follows") is None
    daemon.cli("loop", "add", "follows", "--every", "1h", "--paused", "--command", "echo up; sleep 30")
    assert listed("follows")["enabled"] is False  # type: ignore[index]
    daemon.cli("loop", "resume", "follows")
    assert listed("follows")["enabled"] is True  # type: ignore[index]
    daemon.cli("loop", "edit", "follows", "--every", "2h")
    assert listed("follows")["schedule"]["expr"] == "2h"  # type: ignore[index]

    run = daemon.json("loop", "run", "follows")
    running = wait_until(lambda: (lp := listed("follows")) and lp["running_run_id"], what="listed as running")
    assert running == run["id"]
    assert "running" in daemon.cli("loop", "list").stdout
    daemon.cli("loop", "stop", "follows")
    daemon.wait_run(run["id"])
    after = listed("follows")
    assert after is not None and after["running_run_id"] is None
    assert after["last_run"] == {"id": run["id"], "status": "cancelled", "started_at": after["last_run"]["started_at"]}

    daemon.cli("loop", "rm", "follows")
    assert listed("follows") is None


def _get(daemon: Daemon, path: str) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(daemon.socket))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: fleetd\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_loops_answer_compact_unless_asked_and_a_bad_indent_is_a_400(daemon: Daemon) -> None:
    daemon.cli("loop", "add", "compact", "--every", "1h", "--paused", "--command", "true")
    status, body = _get(daemon, "/v1/loops")
    assert status == 200 and b"\n" not in body and json.loads(body)
    for bad in ("abc", "99", "-1", "1e400"):
        status, body = _get(daemon, f"/v1/loops?indent={bad}")
        assert status == 400 and json.loads(body)["error"]["code"], bad
