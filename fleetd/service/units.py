"""Render the systemd user unit / launchd agent from the templates and install them for this user.

Rendering is pure. `install` writes one file (or nothing with `print_only`) and never runs systemctl or
launchctl itself: it returns the commands for the user to run next.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import escape as xml_escape

SYSTEMD_TEMPLATE = "fleetd.service"
LAUNCHD_TEMPLATE = "dev.fleetd.plist"
LAUNCHD_LABEL = "dev.fleetd"
LAUNCHD_LOG_NAME = "daemon.log"  # the file `fleetd daemon start` also writes to

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


def render_systemd_unit(fleetd_exe: str, fleetd_home: str | None) -> str:
    exe = _checked_path("fleetd executable", fleetd_exe)
    if any(c in exe for c in "\"'\\"):
        # systemd refuses these in an executable's path, quoted or escaped.
        raise ValueError(f"systemd cannot run an executable whose path contains quotes or backslashes: {exe!r}")
    exe = _systemd_word(exe)
    environment = []
    if fleetd_home is not None:
        home = _checked_path("FLEETD_HOME", fleetd_home)
        environment.append(f"Environment={_systemd_word('FLEETD_HOME=' + home)}")
    return _fill(template_text(SYSTEMD_TEMPLATE), {"fleetd": exe, "environment": "\n".join(environment)})


def render_launchd_plist(fleetd_exe: str, fleetd_home: str | None, log_dir: str) -> str:
    exe = _checked_path("fleetd executable", fleetd_exe)
    log_file = str(PurePosixPath(_checked_path("log directory", log_dir)) / LAUNCHD_LOG_NAME)
    environment = ""
    if fleetd_home is not None:
        home = _checked_path("FLEETD_HOME", fleetd_home)
        environment = "\n".join(
            [
                "<key>EnvironmentVariables</key>",
                "<dict>",
                "\t<key>FLEETD_HOME</key>",
                f"\t<string>{xml_escape(home)}</string>",
                "</dict>",
            ]
        )
    values = {
        "fleetd": xml_escape(exe),
        "environment": environment,
        "stdout": xml_escape(log_file),
        "stderr": xml_escape(log_file),
    }
    return _fill(template_text(LAUNCHD_TEMPLATE), values)


def install(
    platform: str,
    fleetd_exe: str,
    fleetd_home: str | None,
    user_home: Path,
    log_dir: str,
    print_only: bool,
    xdg_config_home: str | None = None,
) -> InstallResult:
    """Render the service file for `platform` (a `sys.platform` value) and, unless `print_only`, write it.

    Linux: `$XDG_CONFIG_HOME/systemd/user/fleetd.service` (default `~/.config`);
    macOS: `~/Library/LaunchAgents/dev.fleetd.plist`.
    """
    if platform.startswith("linux"):
        config = Path(xdg_config_home) if xdg_config_home and os.path.isabs(xdg_config_home) else None
        path = (config or Path(user_home) / ".config") / "systemd" / "user" / SYSTEMD_TEMPLATE
        text = render_systemd_unit(fleetd_exe, fleetd_home)
        next_steps = [
            _STOP_MANUAL_DAEMON,
            "systemctl --user daemon-reload",
            "systemctl --user enable --now fleetd.service",
            "systemctl --user status fleetd.service",
            f"loginctl enable-linger {_user_name()}   # optional: keep fleetd running when you log out",
        ]
    elif platform == "darwin":
        path = Path(user_home) / "Library" / "LaunchAgents" / LAUNCHD_TEMPLATE
        text = render_launchd_plist(fleetd_exe, fleetd_home, log_dir)
        domain = f"gui/{os.getuid()}"
        next_steps = [
            _STOP_MANUAL_DAEMON,
            f"launchctl bootout {domain}/{LAUNCHD_LABEL}   # only if an older copy is loaded",
            f"launchctl bootstrap {domain} {shlex.quote(str(path))}",
            f"launchctl print {domain}/{LAUNCHD_LABEL}",
        ]
    else:
        raise ValueError(f"fleetd service install supports Linux (systemd) and macOS (launchd), not {platform!r}")
    if not print_only:
        if platform == "darwin":
            # launchd opens the log file but does not create its directory.
            Path(log_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomically(path, text)
    return InstallResult(path=path, text=text, next_steps=next_steps)


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
