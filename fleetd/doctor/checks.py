"""What would stop a run, decided from gathered facts: pure functions, no I/O, no clock.

Each check takes plain facts (`facts.py` and the daemon's `service.py` gather them) and returns
findings, each with the fix: a command to run or a file to change. A finding is an `error` when it
stops a run that is scheduled, a `warning` when it would stop one later (a paused loop, an unused
profile) or makes trouble likely (a disk filling up).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fleetd.paths import MAX_SOCKET_PATH_BYTES, socket_path_problem, unsafe_reason

Severity = Literal["error", "warning"]
CHECKS = ("daemon", "cli", "login", "key", "rotation", "loop", "secret_store", "socket", "disk", "database", "service")

DISK_WARN_BYTES = 1024**3
DISK_WARN_FRACTION = 0.05
DISK_ERROR_BYTES = 64 * 1024**2  # SQLite's WAL and the run logs fail soon below this


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    message: str
    fix: str
    subject: str | None = None  # the backend, profile or path it is about

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity,
            "subject": self.subject,
            "message": self.message,
            "fix": self.fix,
        }


def severity(needed: bool) -> Severity:
    return "error" if needed else "warning"


# -- the daemon's view of the agent CLIs ----------------------------------------------------------


@dataclass(frozen=True)
class CliFact:
    """One agent CLI that a loop or profile needs, as the daemon's PATH (and the user's) resolve it."""

    backend: str
    executable: str
    daemon_path: str
    found: str | None  # where the daemon's PATH finds it
    user_found: str | None = None  # where the user's PATH (the CLI's) finds it; None: not there, or not known
    needed_by: tuple[str, ...] = ()  # "loop nightly", "profile work"
    scheduled: bool = False  # an enabled loop needs it: its next fire would fail
    manager: str | None = None  # "systemd", "launchd": what runs the daemon; None: started by hand


def missing_cli_message(executable: str, daemon_path: str) -> str:
    """The one wording of a missing CLI: `loop add`'s warning and doctor's finding both use it."""
    return f"{executable} not on the daemon's PATH ({daemon_path})"


def check_clis(clis: list[CliFact]) -> list[Finding]:
    findings = []
    for cli in clis:
        if cli.found is not None:
            continue
        users = f"; needed by {', '.join(cli.needed_by)}" if cli.needed_by else ""
        message = missing_cli_message(cli.executable, cli.daemon_path) + users
        if cli.user_found:
            message += f"; your shell finds it at {cli.user_found}"
        findings.append(Finding("cli", severity(cli.scheduled), message, _cli_fix(cli), subject=cli.backend))
    return findings


def _cli_fix(cli: CliFact) -> str:
    if cli.user_found is None:
        return (
            f"install {cli.executable} (the {cli.backend} CLI) in a directory on the daemon's PATH; or put its "
            f"directory on PATH and run `fleetd service install` again (the unit records the PATH it is run with)"
        )
    # The CLI is installed, but where the daemon's environment does not look (~/.local/bin, nvm, npm-global).
    if cli.manager == "systemd":
        return (
            "from this shell: fleetd service install && systemctl --user daemon-reload && "
            "systemctl --user restart fleetd   # the unit then records this shell's PATH"
        )
    if cli.manager == "launchd":
        return (
            "from this shell: fleetd service install && launchctl bootout gui/$UID/dev.fleetd && "
            "launchctl bootstrap gui/$UID ~/Library/LaunchAgents/dev.fleetd.plist   # the plist records this PATH"
        )
    return (
        "restart the daemon from this shell: fleetd daemon restart   "
        "# under the service, run `fleetd service install` again instead, then restart it"
    )


# -- profiles -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileFact:
    name: str
    backend: str
    login_problem: str | None  # the adapter's answer: why its CLI would find no login here
    can_log_in: bool  # the backend has an interactive login (else it logs in by key only)
    has_key: bool  # a key was stored for it
    key_missing: bool = False  # ... and the secret store no longer has it
    key_store: str = ""  # where keys live, for the message
    scheduled: bool = False  # an enabled loop can use this (enabled) profile
    setup_problem: str | None = None  # the adapter's answer: why it cannot run here at all (its directory is gone)
    config_dir: str = ""


def check_profiles(profiles: list[ProfileFact]) -> list[Finding]:
    findings = []
    for p in profiles:
        if p.setup_problem:  # every run on it fails `unavailable`; a login there is moot until it is back
            fix = f"mkdir -p -m 700 {shlex.quote(p.config_dir)}" + (
                "" if p.has_key or not p.can_log_in else f"; fleetd profile login {p.name}"
            )
            findings.append(
                Finding("login", severity(p.scheduled), f"profile {p.name}: {p.setup_problem}", fix, subject=p.name)
            )
        if p.login_problem:
            fix = (
                f"fleetd profile login {p.name}"
                if p.can_log_in
                else f"fleetd profile set-key {p.name} --api-key-stdin < key.txt"
            )
            findings.append(
                Finding("login", severity(p.scheduled), f"profile {p.name}: {p.login_problem}", fix, subject=p.name)
            )
        if p.has_key and p.key_missing:
            findings.append(
                Finding(
                    "key",
                    severity(p.scheduled),
                    f"profile {p.name}'s API key is missing from the secret store ({p.key_store})",
                    f"fleetd profile set-key {p.name} --api-key-stdin < key.txt",
                    subject=p.name,
                )
            )
    return findings


# -- what a loop names on disk ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoopPathFact:
    """A loop's --dir or --prompt-file that its runs cannot use now (it was there when the loop was saved)."""

    loop: str
    scheduled: bool  # the loop is enabled
    option: str  # "--dir" or "--prompt-file"
    problem: str  # "directory not found: /x", "prompt file /p is 200,000 bytes; …"


def check_loop_paths(facts: list[LoopPathFact]) -> list[Finding]:
    findings = []
    for f in facts:
        fix = f"fleetd loop edit {shlex.quote(f.loop)} {f.option} {'DIR' if f.option == '--dir' else 'FILE'}"
        message = f"loop {f.loop}: {f.problem} (each run fails)"
        findings.append(Finding("loop", severity(f.scheduled), message, fix, subject=f.loop))
    return findings


# -- profiles out of rotation ---------------------------------------------------------------------


@dataclass(frozen=True)
class OutFact:
    """A profile that nothing runs on until someone acts: disabled (by hand, or after an auth failure) or parked
    (out of quota). An exhausted one comes back by itself at its reset: not one of these."""

    name: str
    why: str  # "disabled by hand", "disabled: auth failure: …", "parked: out of quota: …"
    by_hand: bool  # disabled by the user: their choice, not a problem in itself
    loops: tuple[str, ...] = ()  # what may use it: "loop nightly" (enabled loops), "route fast" (gateway routes)


def check_rotation(out: list[OutFact], stranded: dict[str, list[str]]) -> list[Finding]:
    """`stranded`: each enabled loop ("loop NAME") or gateway route ("route NAME") every profile of which is out,
    with them. Such a loop's every fire fails ("no usable candidate"), such a route answers every call with an
    error; a profile taken out by a failure, which loops or routes may use, is worth knowing too."""
    findings = []
    for user, names in stranded.items():
        kind, _, name = user.partition(" ")
        findings.append(
            Finding(
                "rotation",
                "error",
                f"{user}: every profile it may use is out of rotation ({', '.join(names)})",
                f"fleetd profile enable {names[0]}   # once what took it out is fixed; or fleetd {kind} edit {name}"
                if kind == "loop"
                else f"fleetd profile enable {names[0]}   # once what took it out is fixed",
                subject=name,
            )
        )
    for p in out:
        if p.by_hand or not p.loops:
            continue
        findings.append(
            Finding(
                "rotation",
                "warning",
                f"profile {p.name} is {p.why}; {', '.join(p.loops)} {'pass' if len(p.loops) > 1 else 'passes'} it over",
                f"fleetd profile enable {p.name}   # once what took it out is fixed",
                subject=p.name,
            )
        )
    return findings


# -- the secret store -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretStoreFact:
    choice: str  # FLEETD_SECRET_STORE as set ("keyring" when unset)
    description: str
    problem: str | None  # why it cannot be used, or None
    keys_in_use: int = 0  # profiles that keep a key there
    file_path: str | None = None  # the opt-in file store's path


def check_secret_store(fact: SecretStoreFact) -> list[Finding]:
    if fact.problem is None:
        return []
    if fact.choice == "keyring":
        fix = (
            "use the file store (0600, for headless hosts): FLEETD_SECRET_STORE=file fleetd service install "
            "(or export it before `fleetd daemon start`), then restart the daemon"
        )
        if fact.keys_in_use:
            fix += "; add each key again with `fleetd profile set-key NAME --api-key-stdin`"
    elif fact.choice == "file":
        fix = f"chmod 600 {fact.file_path}"
    else:
        fix = "set FLEETD_SECRET_STORE=file (or keyring) in the daemon's environment, e.g. via `fleetd service install`"
    needed = fact.keys_in_use > 0
    using = f"; {fact.keys_in_use} profile(s) keep their key there" if needed else ""
    return [Finding("secret_store", severity(needed), f"{fact.description}: {fact.problem}{using}", fix)]


# -- the socket -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SocketFact:
    socket_path: str
    run_dir: str
    dir_mode: int | None  # None: the directory does not exist (yet)
    dir_owner: int | None
    uid: int
    daemon_answers: bool
    socket_exists: bool


def check_socket(fact: SocketFact) -> list[Finding]:
    findings = []
    if socket_path_problem(fact.socket_path):
        findings.append(
            Finding(
                "socket",
                "error",
                f"the socket path {fact.socket_path} is longer than a Unix socket allows "
                f"({MAX_SOCKET_PATH_BYTES} bytes)",
                "use a shorter FLEETD_HOME (the socket is FLEETD_HOME/run/fleetd.sock)",
                subject=fact.socket_path,
            )
        )
    if fact.dir_mode is not None and fact.dir_owner is not None:
        reason = unsafe_reason(Path(fact.run_dir), fact.dir_mode, fact.dir_owner, fact.uid)
        if reason:
            fix = f"chmod 700 {fact.run_dir}" if "mode" in reason else f"use a directory of your own for {fact.run_dir}"
            findings.append(
                Finding(
                    "socket",
                    "error",
                    f"the socket's directory {fact.run_dir} is not private: {reason}",
                    fix,
                    subject=fact.run_dir,
                )
            )
    if fact.socket_exists and not fact.daemon_answers:
        findings.append(
            Finding(
                "socket",
                "warning",
                f"{fact.socket_path} exists but no daemon answers on it (left by a daemon that died)",
                "fleetd daemon start   # replaces it",
                subject=fact.socket_path,
            )
        )
    return findings


# -- disk -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskFact:
    path: str
    free: int
    total: int


def check_disk(fact: DiskFact) -> list[Finding]:
    fraction = fact.free / fact.total if fact.total else 1.0
    if fact.free >= DISK_WARN_BYTES and fraction >= DISK_WARN_FRACTION:
        return []
    level: Severity = "error" if fact.free < DISK_ERROR_BYTES else "warning"
    return [
        Finding(
            "disk",
            level,
            f"only {_size(fact.free)} free ({fraction:.0%}) on the disk of {fact.path}",
            "free space there (`fleetd runs prune` removes old runs and logs), or move FLEETD_HOME to a larger disk",
            subject=fact.path,
        )
    ]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


# -- the database (the daemon's view) ------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseFact:
    path: str
    problem: str | None  # the daemon's last write failure, cleared by the next write that succeeds


def check_database(fact: DatabaseFact) -> list[Finding]:
    # quick_check ran when the daemon opened the file; a daemon that answers passed it.
    if fact.problem is None:
        return []
    if "disk full" in fact.problem:
        fix = f"free space on the disk of {fact.path}"
    elif "read-only" in fact.problem:
        fix = f"make {fact.path} and its directory writable by you (chmod u+w), then `fleetd daemon status`"
    else:
        fix = f"see the daemon's log; `fleetd daemon status` shows when writes work again ({fact.path})"
    return [Finding("database", "error", f"the database cannot be written: {fact.problem}", fix, subject=fact.path)]


# -- the service unit -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitCli:
    """An agent CLI the user's PATH finds, and whether the service unit's PATH finds it too."""

    executable: str
    user_found: str
    unit_finds: bool


@dataclass(frozen=True)
class ServiceFact:
    kind: str  # "systemd" or "launchd"
    path: str
    installed: bool
    unit_path: str | None = None  # the PATH the unit sets; None: it sets none (the manager's default)
    unit_home: str | None = None  # FLEETD_HOME in the unit
    home: str | None = None  # the home this doctor looks at
    clis: tuple[UnitCli, ...] = ()
    readable: bool = True


def check_service(fact: ServiceFact) -> list[Finding]:
    if not fact.installed:
        return []
    reinstall = "from a shell whose PATH finds them: fleetd service install, then restart the service"
    if not fact.readable:
        return [Finding("service", "warning", f"cannot read {fact.path}", f"ls -l {fact.path}", subject=fact.path)]
    findings = []
    missing = [c for c in fact.clis if not c.unit_finds]
    if missing:
        where = ", ".join(f"{c.executable} ({c.user_found})" for c in missing)
        path = f"PATH {fact.unit_path}" if fact.unit_path else "no PATH (the service manager's default)"
        findings.append(
            Finding(
                "service",
                "warning",
                f"the service unit {fact.path} sets {path}, which does not find {where}",
                reinstall,
                subject=fact.path,
            )
        )
    if fact.home is not None and (fact.unit_home or None) != fact.home:
        shown = fact.unit_home or "none (the default home)"
        findings.append(
            Finding(
                "service",
                "warning",
                f"the service unit runs FLEETD_HOME {shown}, not {fact.home} (the home checked here)",
                "run `fleetd service install` with the FLEETD_HOME you mean, or unset FLEETD_HOME here",
                subject=fact.path,
            )
        )
    return findings


# -- the report ----------------------------------------------------------------------------------


@dataclass
class Report:
    daemon: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (check, why it could not run)

    def to_json(self) -> dict[str, Any]:
        order = {"error": 0, "warning": 1}
        findings = sorted(self.findings, key=lambda f: (order[f.severity], CHECKS.index(f.check)))
        errors = sum(1 for f in findings if f.severity == "error")
        return {
            "ok": errors == 0,
            "errors": errors,
            "warnings": len(findings) - errors,
            "daemon": self.daemon,
            "findings": [f.to_json() for f in findings],
            "checked": self.checked,
            "skipped": [{"check": check, "why": why} for check, why in self.skipped],
        }
