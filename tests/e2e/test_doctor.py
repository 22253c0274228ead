"""`fleetd doctor` against a real daemon whose PATH lacks `claude`, and without a daemon; `loop add`'s
warning for a CLI the daemon cannot find; `service status/uninstall` where systemctl is absent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.harness import FLEETD, STANDIN_BIN, Daemon

DAEMON_PATH = "/usr/bin:/bin"  # no claude there
REPORT_KEYS = ["ok", "errors", "warnings", "daemon", "findings", "checked", "skipped"]
FINDING_KEYS = {"check", "severity", "subject", "message", "fix"}


def isolated(d: Daemon, root: Path) -> Daemon:
    # A service unit installed for the real user must not leak into these answers.
    d.env["XDG_CONFIG_HOME"] = str(root / "xdg")
    d.env.pop("INVOCATION_ID", None)
    return d


def test_doctor_finds_a_cli_missing_from_the_daemons_path(short_home: Path) -> None:
    d = isolated(Daemon(short_home / "home", "--kill-grace", "0.5s"), short_home)
    d.env["PATH"] = DAEMON_PATH
    d.env["FLEETD_SECRET_STORE"] = "file"  # a key profile below; no keyring here
    d.start()
    try:
        # The user's shell finds claude (in ~/.local/bin, say); the daemon, started elsewhere, does not.
        d.env["PATH"] = f"{STANDIN_BIN}:{os.environ['PATH']}"
        d.cli("profile", "add", "work", "--backend", "claude_code")
        added = d.cli("loop", "add", "nightly", "--backend", "claude_code", "--prompt", "fix it", "--every", "1h")
        assert added.returncode == 0  # saved all the same
        assert added.stderr == f"warning: claude not on the daemon's PATH ({DAEMON_PATH}); see `fleetd doctor`\n"
        shell = d.json("loop", "add", "shell", "--command", "true", "--every", "1h")
        assert shell["warnings"] == []

        text = d.cli("doctor", check=False)
        assert text.returncode == 1, text.stdout + text.stderr
        assert (
            f"error    cli          claude not on the daemon's PATH ({DAEMON_PATH}); needed by loop nightly"
            in text.stdout
        )
        assert f"your shell finds it at {STANDIN_BIN}/claude" in text.stdout
        assert "fix: restart the daemon from this shell: fleetd daemon restart" in text.stdout
        assert "fleetd service install" in text.stdout
        assert "error    login        profile work: never logged in" in text.stdout
        assert "fix: fleetd profile login work" in text.stdout

        raw = d.cli("doctor", "--json", check=False)
        assert raw.returncode == 1
        report = json.loads(raw.stdout)
        assert list(report) == REPORT_KEYS
        assert report["ok"] is False and report["errors"] >= 2
        assert set(report["daemon"]) == {"running", "pid", "version", "home", "path", "manager"}
        assert report["daemon"]["path"] == DAEMON_PATH and report["daemon"]["running"] is True
        assert all(set(f) == FINDING_KEYS for f in report["findings"])
        cli = next(f for f in report["findings"] if f["check"] == "cli")
        assert (cli["severity"], cli["subject"]) == ("error", "claude_code")
        assert {"check": "service", "why": "no service unit is installed"} in report["skipped"]

        # Its one profile taken out of rotation: every fire of the loop would fail, and doctor said nothing.
        d.cli("profile", "disable", "work")
        report = json.loads(d.cli("doctor", "--json", check=False).stdout)
        [stranded] = [f for f in report["findings"] if f["check"] == "rotation"]
        assert stranded["severity"] == "error" and stranded["subject"] == "nightly"
        assert stranded["message"] == "loop nightly: every profile it may use is out of rotation (work)"
        assert stranded["fix"].startswith("fleetd profile enable work")
        d.cli("profile", "enable", "work")

        # Logged in (the file Claude Code writes) and the loop paused: what is left are warnings.
        assert d.json("profile", "show", "work")["auth_hint"] == "log in with `fleetd profile login work`"
        (d.home / "profiles" / "work" / ".credentials.json").write_text('{"claudeAiOauth": {}}')
        # `profile show` said "to do: log in" all the same:
        assert d.json("profile", "show", "work")["auth_hint"] is None
        d.cli("loop", "pause", "nightly")
        after = d.cli("doctor", "--json", check=False)
        report = json.loads(after.stdout)
        assert [f["severity"] for f in report["findings"] if f["check"] in ("cli", "login")] == ["warning"]
        assert after.returncode == (1 if report["errors"] else 0)

        # A key profile whose config directory is gone: every run on it failed `unavailable`, and doctor said nothing.
        d.cli("profile", "add", "keyed", "--backend", "claude_code", "--api-key-stdin", "--tier", "subscription",
              input="sk-ant-doctor-0123456789\n")  # fmt: skip
        d.cli("loop", "resume", "nightly")
        (d.home / "profiles" / "keyed").rename(short_home / "keyed-moved")
        report = json.loads(d.cli("doctor", "--json", check=False).stdout)
        [gone] = [f for f in report["findings"] if f["subject"] == "keyed"]
        assert (gone["check"], gone["severity"]) == ("login", "error")
        assert gone["message"] == f"profile keyed: its config directory {d.home / 'profiles' / 'keyed'} is gone"
        assert gone["fix"] == f"mkdir -p -m 700 {d.home / 'profiles' / 'keyed'}"
    finally:
        d.stop()


def test_doctor_without_a_daemon_says_so_and_checks_what_it_can(short_home: Path) -> None:
    d = isolated(Daemon(short_home / "home"), short_home)
    text = d.cli("doctor", check=False)
    assert text.returncode == 1
    assert f"error    daemon       the daemon is not running (socket {d.socket})" in text.stdout
    assert "fix: fleetd daemon start" in text.stdout
    report = json.loads(d.cli("doctor", "--json", check=False).stdout)
    assert list(report) == REPORT_KEYS
    assert report["daemon"] == {"running": False, "home": str(d.home), "socket": str(d.socket)}
    assert {s["check"] for s in report["skipped"]} >= {"cli", "login", "key", "rotation", "database"}
    assert "disk" in report["checked"] and "socket" in report["checked"]


def test_doctor_with_a_home_too_deep_for_a_socket_reports_it(short_home: Path) -> None:
    # It exited with that one line as an error, not the report the README's `socket` finding promises.
    d = isolated(Daemon(short_home / ("deep-" + "d" * 110)), short_home)
    report = json.loads(d.cli("doctor", "--json", check=False).stdout)
    socket = [f for f in report["findings"] if f["check"] == "socket"]
    assert socket and "longer than a Unix socket allows" in socket[0]["message"], report
    assert "shorter FLEETD_HOME" in socket[0]["fix"]
    assert not d.home.exists()


def test_service_status_and_uninstall_without_systemctl(short_home: Path) -> None:
    env = {**os.environ, "HOME": str(short_home), "XDG_CONFIG_HOME": str(short_home / "xdg"), "PATH": "/nowhere"}
    env.pop("FLEETD_HOME", None)

    def run(*args: str) -> tuple[int, str]:
        done = subprocess.run([FLEETD, "service", *args], env=env, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    unit = short_home / "xdg" / "systemd" / "user" / "fleetd.service"
    code, out = run("install")
    assert code == 0 and unit.is_file(), out
    assert "Environment=PATH=/nowhere" in unit.read_text()
    code, out = run("status", "--json")
    status = json.loads(out)
    assert (code, status["installed"], status["reachable"]) == (0, True, False)
    assert status["note"] == "systemctl is not available on this host: the unit's state cannot be asked"
    assert status["environment"]["PATH"] == "/nowhere"
    code, out = run("uninstall")
    assert code == 0
    assert out.splitlines() == [
        "systemctl is not available on this host: nothing to stop or disable",
        f"removed {unit}",
    ]
    code, out = run("uninstall")
    assert (code, out.strip()) == (0, f"no service file at {unit}: nothing to stop, disable or remove")
    code, out = run("status")
    assert f"systemd unit {unit}: not installed" in out


def test_a_loops_dir_or_prompt_file_gone_since_its_add_is_a_doctor_error_not_a_refused_edit(short_home: Path) -> None:
    """The directory or prompt file a loop was saved with goes away: each run fails. `loop edit --timeout` and
    `--paused` were refused ("directory not found"), as if the edit had named it, and doctor said nothing."""
    d = isolated(Daemon(short_home / "home", "--kill-grace", "0.5s"), short_home)
    d.start()
    try:
        work, prompt = short_home / "work", short_home / "prompt.txt"
        work.mkdir()
        prompt.write_text("look at X")
        d.cli("loop", "add", "gone", "--every", "1h", "--dir", str(work), "--prompt-file", str(prompt),
              "--command", "cat")  # fmt: skip
        work.rmdir()
        prompt.unlink()

        d.cli("loop", "edit", "gone", "--timeout", "1h")
        assert d.json("loop", "show", "gone")["timeout_s"] == 3600
        report = json.loads(d.cli("doctor", "--json", check=False).stdout)
        found = [
            (f["check"], f["severity"], f["message"], f["fix"]) for f in report["findings"] if f["check"] == "loop"
        ]
        assert found == [
            ("loop", "error", f"loop gone: directory not found: {work} (each run fails)",
             "fleetd loop edit gone --dir DIR"),
            ("loop", "error", f"loop gone: prompt file not found: {prompt} (each run fails)",
             "fleetd loop edit gone --prompt-file FILE"),
        ]  # fmt: skip
        assert "loop" in report["checked"]

        d.cli("loop", "edit", "gone", "--paused")  # a paused loop's: warnings
        report = json.loads(d.cli("doctor", "--json").stdout)
        assert {f["severity"] for f in report["findings"] if f["check"] == "loop"} == {"warning"}

        # What an edit names is still looked for.
        refused = d.cli("loop", "edit", "gone", "--dir", str(short_home / "nowhere"), check=False)
        assert refused.returncode == 2 and refused.stderr == f"fleetd: directory not found: {short_home}/nowhere\n"
        work.mkdir()
        d.cli("loop", "edit", "gone", "--dir", str(work))
        messages = [f["message"] for f in json.loads(d.cli("doctor", "--json").stdout)["findings"]]
        assert [m for m in messages if m.startswith("loop gone")] == [
            f"loop gone: prompt file not found: {prompt} (each run fails)"
        ]
        # `loop run` refuses it in the same words (a scheduled run's failure says them too: tests/loops).
        refused = d.cli("loop", "run", "gone", check=False)
        assert refused.returncode == 1
        assert refused.stderr == (f"fleetd: loop gone cannot run: prompt file not found: {prompt} "
                                  "(`fleetd loop edit gone --prompt-file FILE`)\n")  # fmt: skip
    finally:
        d.stop()
