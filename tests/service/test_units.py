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
@pytest.mark.parametrize(
    ("home", "user_path"), [(None, None), ("/srv/fleet home/50%", "/home/u/my bin:/x%h/bin:/usr/bin")]
)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, home: str | None, user_path: str | None) -> None:
    # A real executable whose path needs quoting (space) and escaping (`%h` would expand to $HOME).
    exe = tmp_path / "my tools" / "x%hy" / "fleetd"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir(mode=0o700)
    unit = tmp_path / "units" / "fleetd.service"
    unit.parent.mkdir()
    text = units.render_systemd_unit(str(exe), home, units.service_environment(None, user_path, "file"))
    unit.write_text(text)

    result = systemd_verify(unit, runtime_dir)
    complaints = [line for line in result.stderr.splitlines() if "fleetd.service" in line]
    assert result.returncode == 0 and not complaints, result.stderr

    # The check has teeth: the same unit with the program path left unquoted fails.
    broken = text.replace(f'"{exe}"'.replace("%", "%%"), str(exe).replace("%", "%%"))
    assert broken != text
    unit.write_text(broken)
    assert systemd_verify(unit, runtime_dir).returncode != 0


# -- the environment the unit records -------------------------------------------------------------

USER_PATH = "/home/u/.local/bin:relative/bin::/home/u/.nvm/versions/node/v20/bin:~/bin:/usr/bin:/home/u/.local/bin"
RECORDED = "/home/u/.local/bin:/home/u/.nvm/versions/node/v20/bin:/usr/bin"


def test_service_environment_keeps_absolute_path_entries_once() -> None:
    env = units.service_environment(HOME, path=USER_PATH, secret_store="file")
    assert env == {"FLEETD_HOME": HOME, "FLEETD_SECRET_STORE": "file", "PATH": RECORDED}
    assert units.service_environment(None) == {}
    assert units.service_environment(None, path="relative:~/x") == {}  # nothing usable: the manager's default


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret_store": "vault"}, "'keyring' or 'file'"),
        ({"path": "/usr/bin:/bad\nline"}, "control character"),
    ],
)
def test_service_environment_refuses(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        units.service_environment(None, **kwargs)


def test_systemd_unit_records_path_and_secret_store_and_reads_back(tmp_path: Path) -> None:
    env = units.service_environment(None, path="/opt/50%/bin:/home/u/my bin:/usr/bin", secret_store="file")
    text = units.render_systemd_unit(EXE, HOME, env)
    lines = text.splitlines()
    assert 'Environment="FLEETD_HOME=/srv/fleet home"' in lines
    assert "Environment=FLEETD_SECRET_STORE=file" in lines
    assert 'Environment="PATH=/opt/50%%/bin:/home/u/my bin:/usr/bin"' in lines
    unit = tmp_path / "fleetd.service"
    unit.write_text(text)
    assert units.read_environment(unit) == {
        "FLEETD_HOME": HOME,
        "FLEETD_SECRET_STORE": "file",
        "PATH": "/opt/50%/bin:/home/u/my bin:/usr/bin",
    }


def test_launchd_plist_records_path_and_secret_store_and_reads_back(tmp_path: Path) -> None:
    env = units.service_environment(None, path="/Users/u/.local/bin:/usr/bin", secret_store="file")
    text = units.render_launchd_plist(EXE, None, LOG_DIR, env)
    plist = plistlib.loads(text.encode())
    assert plist["EnvironmentVariables"] == {"FLEETD_SECRET_STORE": "file", "PATH": "/Users/u/.local/bin:/usr/bin"}
    path = tmp_path / "dev.fleetd.plist"
    path.write_text(text)
    assert units.read_environment(path) == plist["EnvironmentVariables"]


def test_install_records_the_users_path(tmp_path: Path) -> None:
    result = units.install("linux", EXE, None, tmp_path, "/l", print_only=True, user_path=USER_PATH)
    assert f"Environment=PATH={RECORDED}" in result.text.splitlines()
    assert "FLEETD_SECRET_STORE" not in result.text  # only when set


# -- status and uninstall, with a fake service manager -------------------------------------------


class FakeManager:
    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        for key, answer in self.answers.items():
            if key in " ".join(argv):
                return answer
        return 0, "", ""


def no_tool(name: str) -> str | None:
    return None


def has_tool(name: str) -> str | None:
    return f"/usr/bin/{name}"


def installed_unit(tmp_path: Path) -> Path:
    result = units.install("linux", EXE, None, tmp_path, "/l", print_only=False, user_path="/usr/bin:/bin")
    return result.path


def test_status_without_systemctl_says_so_plainly(tmp_path: Path) -> None:
    installed_unit(tmp_path)
    state = units.status("linux", tmp_path, run=FakeManager({}), which=no_tool)
    assert state.installed and not state.reachable
    assert state.environment == {"PATH": "/usr/bin:/bin"}
    assert state.note == "systemctl is not available on this host: the unit's state cannot be asked"
    assert set(state.to_json()) == {
        "manager", "path", "installed", "environment", "reachable", "note", "loaded", "enabled", "active", "pid"
    }  # fmt: skip


def test_status_when_the_user_manager_cannot_be_reached(tmp_path: Path) -> None:
    fake = FakeManager({"show": (1, "", "Failed to connect to bus: No medium found\n")})
    state = units.status("linux", tmp_path, run=fake, which=has_tool)
    assert not state.installed and not state.reachable
    assert state.note == "systemctl cannot reach your user service manager (Failed to connect to bus: No medium found)"


def test_status_reads_systemctl_show(tmp_path: Path) -> None:
    installed_unit(tmp_path)
    shown = "LoadState=loaded\nUnitFileState=enabled\nActiveState=active\nSubState=running\nMainPID=4242\n"
    fake = FakeManager({"show": (0, shown, "")})
    state = units.status("linux", tmp_path, run=fake, which=has_tool)
    assert (state.loaded, state.enabled, state.active, state.pid) == ("loaded", "enabled", "active (running)", 4242)
    assert fake.calls == [
        ["systemctl", "--user", "show", "fleetd.service", "-p", "LoadState,UnitFileState,ActiveState,SubState,MainPID"]
    ]


def test_status_reads_launchctl_print(tmp_path: Path) -> None:
    fake = FakeManager({"print": (0, "gui/501/dev.fleetd = {\n\tstate = running\n\tpid = 77\n}\n", "")})
    state = units.status("darwin", tmp_path, run=fake, which=has_tool)
    assert (state.manager, state.loaded, state.active, state.pid) == ("launchd", "loaded", "running", 77)


def test_uninstall_without_systemctl_removes_the_file_and_is_idempotent(tmp_path: Path) -> None:
    path = installed_unit(tmp_path)
    done = units.uninstall("linux", tmp_path, run=FakeManager({}), which=no_tool)
    assert done == [
        "systemctl is not available on this host: nothing to stop or disable",
        f"removed {path}",
    ]
    assert not path.exists()
    again = units.uninstall("linux", tmp_path, run=FakeManager({}), which=no_tool)
    assert again == [f"no service file at {path}: nothing to stop, disable or remove"]


def test_uninstall_stops_disables_removes_and_reloads(tmp_path: Path) -> None:
    path = installed_unit(tmp_path)
    fake = FakeManager({})
    done = units.uninstall("linux", tmp_path, run=fake, which=has_tool)
    assert fake.calls == [
        ["systemctl", "--user", "disable", "--now", "fleetd.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert done == ["stopped and disabled fleetd.service", f"removed {path}", "reloaded systemd's user units"]


def test_uninstall_darwin_boots_out_and_removes(tmp_path: Path) -> None:
    path = units.install("darwin", EXE, None, tmp_path, str(tmp_path / "logs"), print_only=False).path
    fake = FakeManager({"bootout": (3, "", "Boot-out failed: 3: No such process")})
    done = units.uninstall("darwin", tmp_path, run=fake, which=has_tool)
    assert done == [f"gui/{os.getuid()}/dev.fleetd was not loaded", f"removed {path}"]
    assert not path.exists()
