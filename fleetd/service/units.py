"""Render the systemd user unit / launchd agent from the templates and install them for this user.

Rendering is pure. `install` writes one file (or nothing with `print_only`) and never runs systemctl or
launchctl itself: it returns the commands for the user to run next.
"""

from __future__ import annotations

import getpass
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import escape as xml_escape

SYSTEMD_TEMPLATE = "fleetd.service"
LAUNCHD_TEMPLATE = "dev.fleetd.plist"
LAUNCHD_LABEL = "dev.fleetd"
LAUNCHD_LOG_NAME = "daemon.log"  # the file `fleetd daemon start` also writes to
SECRET_STORES = ("keyring", "file")  # FLEETD_SECRET_STORE's values (fleetd/profiles/secrets.py)

# A placeholder alone on its line (expands to zero or more lines, indented like the placeholder) or inline.
_PLACEHOLDER = re.compile(r"^([ \t]*)\{(\w+)\}[ \t]*\n|\{(\w+)\}", re.MULTILINE)
_SYSTEMD_NEEDS_QUOTES = re.compile(r"[\s\"'\\;]")
# A daemon started by hand holds the instance lock: the service's copy would fail and be restarted.
_STOP_MANUAL_DAEMON = "fleetd daemon stop   # only if you started one by hand"


@dataclass(frozen=True)
class InstallResult:
    path: Path
    text: str
    next_steps: list[str] = field(default_factory=list)


def template_text(name: str) -> str:
    """A template's text: the copy shipped in the wheel, else the one in the source tree's systemd/."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"not a template name: {name!r}")
    candidates = (
        Path(__file__).parent / "templates" / name,
        Path(__file__).resolve().parents[2] / "systemd" / name,
    )
    for path in candidates:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"service template {name!r} not found (looked in: {tried})")


def service_environment(
    fleetd_home: str | None, path: str | None = None, secret_store: str | None = None
) -> dict[str, str]:
    """The variables the unit sets: FLEETD_HOME and FLEETD_SECRET_STORE when given, and PATH as the user had it,
    so that CLIs in ~/.local/bin, nvm or npm-global are found (a service manager's own PATH has none of them).

    PATH keeps only absolute entries, first occurrence: neither systemd nor launchd expands `~` or `$HOME`,
    and a relative entry would resolve against the daemon's working directory."""
    env: dict[str, str] = {}
    if fleetd_home is not None:
        env["FLEETD_HOME"] = _checked_path("FLEETD_HOME", fleetd_home)
    if secret_store is not None:
        if secret_store not in SECRET_STORES:
            raise ValueError(f"FLEETD_SECRET_STORE must be 'keyring' or 'file', not {secret_store!r}")
        env["FLEETD_SECRET_STORE"] = secret_store
    if path is not None:
        entries = [e for e in path.split(":") if PurePosixPath(e).is_absolute()]
        if entries:
            env["PATH"] = _checked_path("a PATH entry", ":".join(dict.fromkeys(entries)))
    return env


def render_systemd_unit(fleetd_exe: str, fleetd_home: str | None, env: Mapping[str, str] | None = None) -> str:
    """`env`: more variables for the unit (PATH, FLEETD_SECRET_STORE), as `service_environment` makes them."""
    exe = _checked_path("fleetd executable", fleetd_exe)
    if any(c in exe for c in "\"'\\"):
        # systemd refuses these in an executable's path, quoted or escaped.
        raise ValueError(f"systemd cannot run an executable whose path contains quotes or backslashes: {exe!r}")
    exe = _systemd_word(exe)
    variables = _variables(fleetd_home, env)
    environment = [f"Environment={_systemd_word(f'{k}={v}')}" for k, v in variables.items()]
    return _fill(template_text(SYSTEMD_TEMPLATE), {"fleetd": exe, "environment": "\n".join(environment)})


def render_launchd_plist(
    fleetd_exe: str, fleetd_home: str | None, log_dir: str, env: Mapping[str, str] | None = None
) -> str:
    exe = _checked_path("fleetd executable", fleetd_exe)
    log_file = str(PurePosixPath(_checked_path("log directory", log_dir)) / LAUNCHD_LOG_NAME)
    variables = _variables(fleetd_home, env)
    environment = ""
    if variables:
        lines = ["<key>EnvironmentVariables</key>", "<dict>"]
        for key, value in variables.items():
            lines += [f"\t<key>{xml_escape(key)}</key>", f"\t<string>{xml_escape(value)}</string>"]
        environment = "\n".join([*lines, "</dict>"])
    values = {
        "fleetd": xml_escape(exe),
        "environment": environment,
        "stdout": xml_escape(log_file),
        "stderr": xml_escape(log_file),
    }
    return _fill(template_text(LAUNCHD_TEMPLATE), values)


def _variables(fleetd_home: str | None, env: Mapping[str, str] | None) -> dict[str, str]:
    variables = service_environment(fleetd_home)
    for key, value in (env or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"not an environment variable name: {key!r}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError(f"{key} contains a control character: {value!r}")
        variables[key] = value
    return variables


def unit_path(platform: str, user_home: Path, xdg_config_home: str | None = None) -> Path:
    """Where `install` writes the service file. Linux: `$XDG_CONFIG_HOME/systemd/user/fleetd.service`
    (default `~/.config`; the XDG spec says to ignore a relative one);
    macOS: `~/Library/LaunchAgents/dev.fleetd.plist`."""
    if platform.startswith("linux"):
        config = Path(xdg_config_home) if xdg_config_home and os.path.isabs(xdg_config_home) else None
        return (config or Path(user_home) / ".config") / "systemd" / "user" / SYSTEMD_TEMPLATE
    if platform == "darwin":
        return Path(user_home) / "Library" / "LaunchAgents" / LAUNCHD_TEMPLATE
    raise ValueError(f"fleetd service supports Linux (systemd) and macOS (launchd), not {platform!r}")


def read_environment(path: Path) -> dict[str, str]:
    """The variables an installed unit or plist sets (the inverse of the rendering above). Raises OSError."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.name.endswith(".plist"):
        try:
            data = plistlib.loads(text.encode())
        except Exception:  # plistlib raises several kinds on a damaged file
            return {}
        env = data.get("EnvironmentVariables") if isinstance(data, dict) else None
        return {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}
    variables: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key != "Environment":
            continue
        try:
            words = shlex.split(value)  # systemd's double quotes and C escapes, as _systemd_word writes them
        except ValueError:
            continue
        for word in words:
            name, eq, val = word.partition("=")
            if eq:
                variables[name] = val.replace("%%", "%")
    return variables


def install(
    platform: str,
    fleetd_exe: str,
    fleetd_home: str | None,
    user_home: Path,
    log_dir: str,
    print_only: bool,
    xdg_config_home: str | None = None,
    user_path: str | None = None,
    secret_store: str | None = None,
) -> InstallResult:
    """Render the service file for `platform` (a `sys.platform` value) and, unless `print_only`, write it
    where `unit_path` says. `user_path` is the PATH to record; `secret_store` is FLEETD_SECRET_STORE, if set."""
    path = unit_path(platform, user_home, xdg_config_home)
    recorded = service_environment(None, path=user_path, secret_store=secret_store)
    if platform.startswith("linux"):
        text = render_systemd_unit(fleetd_exe, fleetd_home, recorded)
        next_steps = [
            _STOP_MANUAL_DAEMON,
            "systemctl --user daemon-reload",
            "systemctl --user enable --now fleetd.service",
            "systemctl --user status fleetd.service",
            f"loginctl enable-linger {_user_name()}   # optional: keep fleetd running when you log out",
        ]
    else:
        text = render_launchd_plist(fleetd_exe, fleetd_home, log_dir, recorded)
        domain = f"gui/{os.getuid()}"
        next_steps = [
            _STOP_MANUAL_DAEMON,
            f"launchctl bootout {domain}/{LAUNCHD_LABEL}   # only if an older copy is loaded",
            f"launchctl bootstrap {domain} {shlex.quote(str(path))}",
            f"launchctl print {domain}/{LAUNCHD_LABEL}",
        ]
    if not print_only:
        if platform == "darwin":
            # launchd opens the log file but does not create its directory.
            Path(log_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomically(path, text)
    return InstallResult(path=path, text=text, next_steps=next_steps)


# -- the installed service: status and uninstall -------------------------------------------------

# Runs a service manager's command: (argv) -> (exit status, stdout, stderr). Tests pass a fake.
Runner = Callable[[list[str]], tuple[int, str, str]]


def run_command(argv: list[str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, "", str(e)
    return done.returncode, done.stdout, done.stderr


@dataclass
class ServiceStatus:
    manager: str  # "systemd" or "launchd"
    path: Path
    installed: bool  # the file exists
    environment: dict[str, str] = field(default_factory=dict)  # what it sets (PATH, FLEETD_HOME, ...)
    reachable: bool = False  # the manager answered
    note: str | None = None  # why it did not, in plain words
    loaded: str | None = None  # systemd's LoadState; launchd: "loaded" / "not loaded"
    enabled: str | None = None  # systemd's UnitFileState (enabled, disabled, ...)
    active: str | None = None  # systemd's ActiveState (SubState); launchd's state
    pid: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "manager": self.manager,
            "path": str(self.path),
            "installed": self.installed,
            "environment": self.environment,
            "reachable": self.reachable,
            "note": self.note,
            "loaded": self.loaded,
            "enabled": self.enabled,
            "active": self.active,
            "pid": self.pid,
        }


def status(
    platform: str,
    user_home: Path,
    xdg_config_home: str | None = None,
    run: Runner = run_command,
    which: Callable[[str], str | None] = shutil.which,
) -> ServiceStatus:
    """Is the unit installed, enabled and running, as `systemctl --user show` / `launchctl print` say."""
    path = unit_path(platform, user_home, xdg_config_home)
    result = ServiceStatus("launchd" if platform == "darwin" else "systemd", path, path.is_file())
    if result.installed:
        try:
            result.environment = read_environment(path)
        except OSError as e:
            result.note = f"cannot read {path}: {e.strerror or e}"
    tool = "launchctl" if platform == "darwin" else "systemctl"
    if which(tool) is None:
        result.note = f"{tool} is not available on this host: the unit's state cannot be asked"
        return result
    if platform == "darwin":
        code, out, err = run(["launchctl", "print", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"])
        result.reachable = True
        result.loaded = "loaded" if code == 0 else "not loaded"
        if code == 0:
            found = dict(re.findall(r"^\s*(state|pid) = (\S+)", out, re.MULTILINE))
            result.active = found.get("state")
            result.pid = int(found["pid"]) if found.get("pid", "").isdigit() else None
        return result
    props = "LoadState,UnitFileState,ActiveState,SubState,MainPID"
    code, out, err = run(["systemctl", "--user", "show", SYSTEMD_TEMPLATE, "-p", props])
    if code != 0:
        reason = (err.strip().splitlines() or [f"exit status {code}"])[0]
        result.note = f"systemctl cannot reach your user service manager ({reason})"
        return result
    shown = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
    result.reachable = True
    result.loaded = shown.get("LoadState") or None
    result.enabled = shown.get("UnitFileState") or None
    active, sub = shown.get("ActiveState"), shown.get("SubState")
    result.active = f"{active} ({sub})" if active and sub else active or None
    pid = shown.get("MainPID", "")
    result.pid = int(pid) if pid.isdigit() and int(pid) > 0 else None
    return result


def uninstall(
    platform: str,
    user_home: Path,
    xdg_config_home: str | None = None,
    run: Runner = run_command,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """Stop and disable the service, remove its file, and say what was done, one line each. Running it
    again is harmless: what is already gone is said to be gone."""
    path = unit_path(platform, user_home, xdg_config_home)
    if not path.exists():
        return [f"no service file at {path}: nothing to stop, disable or remove"]
    done: list[str] = []
    if platform == "darwin":
        target = f"gui/{os.getuid()}/{LAUNCHD_LABEL}"
        if which("launchctl") is None:
            done.append("launchctl is not available on this host: nothing to unload")
        else:
            code, _, err = run(["launchctl", "bootout", target])
            done.append(f"unloaded {target}" if code == 0 else f"{target} was not loaded")
    elif which("systemctl") is None:
        done.append("systemctl is not available on this host: nothing to stop or disable")
    else:
        code, _, err = run(["systemctl", "--user", "disable", "--now", SYSTEMD_TEMPLATE])
        if code == 0:
            done.append(f"stopped and disabled {SYSTEMD_TEMPLATE}")
        else:
            reason = (err.strip().splitlines() or [f"exit status {code}"])[0]
            done.append(f"could not stop or disable {SYSTEMD_TEMPLATE} ({reason})")
    try:
        path.unlink()
        done.append(f"removed {path}")
    except FileNotFoundError:  # removed meanwhile
        done.append(f"no service file at {path}: nothing to remove")
    if platform != "darwin" and which("systemctl") is not None:
        code, _, _ = run(["systemctl", "--user", "daemon-reload"])
        if code == 0:
            done.append("reloaded systemd's user units")
    return done


def find_fleetd_executable() -> str:
    """The absolute path of the installed `fleetd` console script."""
    found = shutil.which("fleetd")
    if found:
        return os.path.abspath(found)
    beside = Path(sys.executable).parent / "fleetd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return os.path.abspath(beside)
    raise RuntimeError(
        f"cannot find the installed `fleetd` executable: it is not on PATH and not next to {sys.executable}; "
        "install fleetd (for example with pipx) and run this command again"
    )


# -- helpers --------------------------------------------------------------------------------------


def _checked_path(what: str, value: str) -> str:
    """Service managers need absolute paths; control characters and unencodable names are refused."""
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"{what} must be an absolute path, got {value!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what} contains a control character: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8: {value!r}") from None
    return value


def _systemd_word(value: str) -> str:
    """One word of a unit setting, read back by systemd as exactly `value`.

    `%` would start a specifier and becomes `%%`. `$` needs no escaping here: systemd expands no
    variables in an Exec line's program path nor in `Environment=`. A word with whitespace, quotes,
    backslashes or `;` is double-quoted with C escapes.
    """
    escaped = value.replace("%", "%%")
    if _SYSTEMD_NEEDS_QUOTES.search(value):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def _fill(template: str, values: dict[str, str]) -> str:
    """Substitute `{name}` placeholders in one pass, so a value is never scanned for placeholders itself."""

    def replace(match: re.Match[str]) -> str:
        indent, line_name, inline_name = match.groups()
        name = line_name or inline_name
        if name not in values:
            raise ValueError(f"template has an unknown placeholder {{{name}}}")
        value = values[name]
        if inline_name:
            return value
        return "".join(f"{indent}{line}\n" for line in value.splitlines())

    return _PLACEHOLDER.sub(replace, template)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _user_name() -> str:
    """This user's name, shell-quoted; `"$USER"` for the shell to fill in if it cannot be found."""
    try:
        return shlex.quote(getpass.getuser())
    except (KeyError, OSError, ImportError):
        return '"$USER"'
