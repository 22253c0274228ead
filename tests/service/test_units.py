from __future__ import annotations

import os
import plistlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.service import units

EXE = "/opt/my tools/bin/fleetd"
HOME = "/srv/fleet home"
LOG_DIR = "/Users/someone/Library/Application Support/fleetd/logs"
DAEMON_STOP_GRACE = 30 + 5  # DaemonOptions.stop_grace + kill_grace


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]} (systemd allows repeated keys)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, _, value = line.partition("=")
        sections[current].append((key, value))
    return sections


def settings(text: str, section: str) -> dict[str, str]:
    return dict(parse_unit(text)[section])


# -- templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [units.SYSTEMD_TEMPLATE, units.LAUNCHD_TEMPLATE])
def test_template_text_finds_the_templates(name: str) -> None:
    text = units.template_text(name)
    assert "{fleetd}" in text
    assert "{environment}" in text


@pytest.mark.parametrize("name", ["", "../pyproject.toml", "nope.service"])
def test_template_text_rejects_unknown_names(name: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError)):
        units.template_text(name)


# -- systemd --------------------------------------------------------------------------------------


def test_systemd_unit_with_spaces_and_home() -> None:
    text = units.render_systemd_unit(EXE, HOME)
    lines = text.splitlines()
    assert 'ExecStart="/opt/my tools/bin/fleetd" daemon run' in lines
    assert 'Environment="FLEETD_HOME=/srv/fleet home"' in lines
    assert "{" not in text and "}" not in text

    unit, service, install = settings(text, "Unit"), settings(text, "Service"), settings(text, "Install")
    assert {"StartLimitIntervalSec", "StartLimitBurst"} <= unit.keys()
    assert not any(k.startswith("StartLimit") for k in service)
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"
    assert service["Delegate"] == "yes"  # each run's processes in a cgroup of its own
    assert service["RuntimeDirectory"] == "fleetd"
    assert service["RuntimeDirectoryMode"] == "0700"
    assert int(service["TimeoutStopSec"]) == 45 > DAEMON_STOP_GRACE
    assert "StateDirectory" not in service
    assert install["WantedBy"] == "default.target"


def test_systemd_unit_without_home_has_no_environment() -> None:
    text = units.render_systemd_unit("/usr/local/bin/fleetd", None)
    service = parse_unit(text)["Service"]
    assert ("ExecStart", "/usr/local/bin/fleetd daemon run") in service
    assert not any(key == "Environment" for key, _ in service)
    assert "\n\n\n" not in text  # the placeholder line went away with its value


def test_systemd_escapes_specifiers_quotes_and_backslashes() -> None:
    text = units.render_systemd_unit("/opt/100%/a$b/fleetd", '/srv/q"x\\y 50%')
    lines = text.splitlines()
    # `$` is literal in a program path and in Environment=; `%` starts a specifier everywhere.
    assert "ExecStart=/opt/100%%/a$b/fleetd daemon run" in lines
    assert 'Environment="FLEETD_HOME=/srv/q\\"x\\\\y 50%%"' in lines


@pytest.mark.parametrize(
    ("exe", "home", "message"),
    [
        ("fleetd", None, "absolute"),
        ("~/bin/fleetd", None, "absolute"),
        ("/opt/it's/fleetd", None, "quotes"),
        ("/opt/back\\slash/fleetd", None, "quotes or backslashes"),
        ("/opt/new\nline/fleetd", None, "control character"),
        ("/usr/bin/fleetd", "relative/home", "absolute"),
        ("/usr/bin/fleetd", "/srv/tab\there", "control character"),
        ("/usr/bin/\udcff/fleetd", None, "UTF-8"),
    ],
)
def test_systemd_refuses_unusable_paths(exe: str, home: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        units.render_systemd_unit(exe, home)


# -- launchd --------------------------------------------------------------------------------------


def test_launchd_plist_with_spaces_and_home() -> None:
    exe = "/Applications/My Tools & <Co>/bin/fleetd"
    text = units.render_launchd_plist(exe, HOME, LOG_DIR)
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "dev.fleetd"
    assert plist["ProgramArguments"] == [exe, "daemon", "run"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["EnvironmentVariables"] == {"FLEETD_HOME": HOME}
    assert plist["StandardOutPath"] == f"{LOG_DIR}/daemon.log"
    assert plist["StandardErrorPath"] == f"{LOG_DIR}/daemon.log"
    assert plist["ExitTimeOut"] > DAEMON_STOP_GRACE
    assert "~" not in text and "$HOME" not in text
    assert "&amp;" in text and "&lt;Co&gt;" in text


def test_launchd_plist_without_home() -> None:
    plist = plistlib.loads(units.render_launchd_plist("/usr/local/bin/fleetd", None, LOG_DIR).encode())
    assert "EnvironmentVariables" not in plist
    assert plist["ProgramArguments"] == ["/usr/local/bin/fleetd", "daemon", "run"]


@pytest.mark.parametrize(
    ("exe", "home", "log_dir"),
    [
        ("~/bin/fleetd", None, LOG_DIR),
        ("/usr/bin/fleetd", "$HOME/fleet", LOG_DIR),
        ("/usr/bin/fleetd", None, "~/Library/Logs/fleetd"),
        ("/usr/bin/fleetd", None, "/logs/\x01"),
    ],
)
def test_launchd_refuses_relative_or_unusable_paths(exe: str, home: str | None, log_dir: str) -> None:
    with pytest.raises(ValueError):
        units.render_launchd_plist(exe, home, log_dir)


# -- install --------------------------------------------------------------------------------------


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


def test_install_linux_print_only_writes_nothing(tmp_path: Path) -> None:
    result = units.install("linux", EXE, HOME, tmp_path, "/var/log/fleetd", print_only=True)
    assert result.path == tmp_path / ".config" / "systemd" / "user" / "fleetd.service"
    assert result.text == units.render_systemd_unit(EXE, HOME)
    assert files_under(tmp_path) == []


def test_install_linux_writes_the_unit(tmp_path: Path) -> None:
    target = tmp_path / ".config" / "systemd" / "user" / "fleetd.service"
    target.parent.mkdir(parents=True)
    target.write_text("an older unit\n")
    result = units.install("linux", EXE, None, tmp_path, "/var/log/fleetd", print_only=False)
    assert result.path == target
    assert target.read_text(encoding="utf-8") == result.text == units.render_systemd_unit(EXE, None)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["fleetd.service"]  # no temp file left
    steps = "\n".join(result.next_steps)
    assert "systemctl --user daemon-reload" in steps
    assert "systemctl --user enable --now fleetd.service" in steps
    assert "loginctl enable-linger" in steps
    assert "launchctl" not in steps


def test_install_linux_honours_xdg_config_home(tmp_path: Path) -> None:
    config = tmp_path / "xdg config"
    result = units.install("linux", EXE, None, tmp_path / "home", "/l", print_only=False, xdg_config_home=str(config))
    assert result.path == config / "systemd" / "user" / "fleetd.service"
    assert result.path.is_file()
    # The XDG spec says a relative XDG_CONFIG_HOME is to be ignored.
    relative = units.install("linux", EXE, None, tmp_path / "home", "/l", print_only=True, xdg_config_home="cfg")
    assert relative.path == tmp_path / "home" / ".config" / "systemd" / "user" / "fleetd.service"


def test_install_darwin_print_only_writes_nothing(tmp_path: Path) -> None:
    log_dir = str(tmp_path / "logs")
    result = units.install("darwin", EXE, HOME, tmp_path, log_dir, print_only=True)
    assert result.path == tmp_path / "Library" / "LaunchAgents" / "dev.fleetd.plist"
    assert result.text == units.render_launchd_plist(EXE, HOME, log_dir)
    assert files_under(tmp_path) == []


def test_install_darwin_writes_the_plist(tmp_path: Path) -> None:
    log_dir = tmp_path / "fleet data" / "logs"
    result = units.install("darwin", EXE, HOME, tmp_path, str(log_dir), print_only=False)
    target = tmp_path / "Library" / "LaunchAgents" / "dev.fleetd.plist"
    assert result.path == target
    assert plistlib.loads(target.read_bytes())["ProgramArguments"] == [EXE, "daemon", "run"]
    assert log_dir.is_dir()  # launchd does not create the log file's directory
    steps = "\n".join(result.next_steps)
    assert f"launchctl bootstrap gui/{os.getuid()} {target}" in steps
    assert "systemctl" not in steps


def test_install_refuses_other_platforms(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Linux \(systemd\) and macOS \(launchd\), not 'win32'"):
        units.install("win32", EXE, None, tmp_path, "/l", print_only=False)
    assert files_under(tmp_path) == []


# -- finding the executable -----------------------------------------------------------------------


def test_find_fleetd_executable_prefers_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(units.shutil, "which", lambda name: f"{tmp_path}/bin/{name}")
    assert units.find_fleetd_executable() == f"{tmp_path}/bin/fleetd"


def test_find_fleetd_executable_next_to_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "fleetd"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(units.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    assert units.find_fleetd_executable() == str(script)


def test_find_fleetd_executable_explains_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(units.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    with pytest.raises(RuntimeError, match="cannot find the installed `fleetd` executable"):
        units.find_fleetd_executable()


# -- systemd-analyze ------------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def systemd_verify(unit: Path, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    # `--user` needs a runtime directory even to verify; give it a private one.
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}
    return subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--user", "--man=no", str(unit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine")
@pytest.mark.parametrize("home", [None, "/srv/fleet home/50%"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, home: str | None) -> None:
    # A real executable whose path needs quoting (space) and escaping (`%h` would expand to $HOME).
    exe = tmp_path / "my tools" / "x%hy" / "fleetd"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir(mode=0o700)
    unit = tmp_path / "units" / "fleetd.service"
    unit.parent.mkdir()
    text = units.render_systemd_unit(str(exe), home)
    unit.write_text(text)

    result = systemd_verify(unit, runtime_dir)
    complaints = [line for line in result.stderr.splitlines() if "fleetd.service" in line]
    assert result.returncode == 0 and not complaints, result.stderr

    # The check has teeth: the same unit with the program path left unquoted fails.
    broken = text.replace(f'"{exe}"'.replace("%", "%%"), str(exe).replace("%", "%%"))
    assert broken != text
    unit.write_text(broken)
    assert systemd_verify(unit, runtime_dir).returncode != 0
