"""The doctor's pure checks, table-driven: facts in, findings (severity, message, fix) out."""

from __future__ import annotations

import stat

import pytest

from fleetd.doctor import checks
from fleetd.doctor.checks import (
    CliFact,
    DatabaseFact,
    DiskFact,
    OutFact,
    ProfileFact,
    SecretStoreFact,
    ServiceFact,
    SocketFact,
    UnitCli,
)

GB = 1024**3
DIR = stat.S_IFDIR


def brief(findings: list[checks.Finding]) -> list[tuple[str, str]]:
    return [(f.check, f.severity) for f in findings]


# -- CLIs on the daemon's PATH --------------------------------------------------------------------

CLI = CliFact("claude_code", "claude", "/usr/bin:/bin", found=None, needed_by=("loop nightly",), scheduled=True)


@pytest.mark.parametrize(
    ("fact", "expected", "in_message", "in_fix"),
    [
        (CliFact("claude_code", "claude", "/usr/bin", found="/usr/bin/claude", scheduled=True), [], None, None),
        (CLI, [("cli", "error")], "claude not on the daemon's PATH (/usr/bin:/bin); needed by loop nightly", "install"),
        # Only a paused loop or a profile needs it: the next fire would not fail.
        (
            CliFact("codex", "codex", "/usr/bin", found=None, needed_by=("profile c",)),
            [("cli", "warning")],
            "codex",
            "",
        ),
        # Installed where the shell looks but not the daemon: re-record the PATH, per how the daemon runs.
        (
            CliFact(**{**CLI.__dict__, "user_found": "/home/u/.local/bin/claude", "manager": "systemd"}),
            [("cli", "error")],
            "your shell finds it at /home/u/.local/bin/claude",
            "fleetd service install && systemctl --user daemon-reload && systemctl --user restart fleetd",
        ),
        (
            CliFact(**{**CLI.__dict__, "user_found": "/opt/bin/claude", "manager": "launchd"}),
            [("cli", "error")],
            "/opt/bin/claude",
            "launchctl bootstrap",
        ),
        (
            CliFact(**{**CLI.__dict__, "user_found": "/opt/bin/claude", "manager": None}),
            [("cli", "error")],
            "/opt/bin/claude",
            "fleetd daemon restart",
        ),
    ],
)
def test_check_clis(fact: CliFact, expected: list[tuple[str, str]], in_message: str | None, in_fix: str | None) -> None:
    found = checks.check_clis([fact])
    assert brief(found) == expected
    if found:
        assert in_message in found[0].message
        assert in_fix in found[0].fix
        assert found[0].subject == fact.backend


# -- profiles -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fact", "expected", "fix"),
    [
        (ProfileFact("ok", "claude_code", None, can_log_in=True, has_key=False, scheduled=True), [], None),
        (
            ProfileFact("w", "claude_code", "never logged in", can_log_in=True, has_key=False, scheduled=True),
            [("login", "error")],
            "fleetd profile login w",
        ),
        (
            ProfileFact("idle", "codex", "never logged in", can_log_in=True, has_key=False, scheduled=False),
            [("login", "warning")],
            "fleetd profile login idle",
        ),
        # A backend without a login of its own is never sent to one.
        (
            ProfileFact("k", "aider", "no key", can_log_in=False, has_key=False, scheduled=True),
            [("login", "error")],
            "fleetd profile set-key k --api-key-stdin",
        ),
        (
            ProfileFact("gone", "aider", None, can_log_in=False, has_key=True, key_missing=True, scheduled=True),
            [("key", "error")],
            "fleetd profile set-key gone --api-key-stdin",
        ),
        (
            ProfileFact("kept", "aider", None, can_log_in=False, has_key=True, key_missing=False, scheduled=True),
            [],
            None,
        ),
    ],
)
def test_check_profiles(fact: ProfileFact, expected: list[tuple[str, str]], fix: str | None) -> None:
    found = checks.check_profiles([fact])
    assert brief(found) == expected
    if found:
        assert fix in found[0].fix
        assert fact.name in found[0].message


# -- profiles out of rotation ---------------------------------------------------------------------


def test_check_rotation() -> None:
    parked = OutFact("b", "parked: out of quota: credit balance too low", False, ("loop nightly", "route fast"))
    by_hand = OutFact("c", "disabled by hand", True, ("loop nightly",))
    unused = OutFact("d", "disabled: auth failure: invalid key", False)
    findings = checks.check_rotation([parked, by_hand, unused], {"loop weekly": ["b"], "route fast": ["b"]})
    assert brief(findings) == [("rotation", "error"), ("rotation", "error"), ("rotation", "warning")]
    stranded, route, warning = findings
    assert stranded.message == "loop weekly: every profile it may use is out of rotation (b)"
    assert stranded.subject == "weekly" and stranded.fix.startswith("fleetd profile enable b")
    assert "loop edit weekly" in stranded.fix and "edit" not in route.fix
    assert route.message == "route fast: every profile it may use is out of rotation (b)"
    # A failure took it out while loops or routes may use it; one disabled by hand, or one nothing uses, is no finding.
    assert warning.message == (
        "profile b is parked: out of quota: credit balance too low; loop nightly, route fast pass it over"
    )
    assert warning.subject == "b"
    assert checks.check_rotation([by_hand, unused], {}) == []
    lone = checks.check_rotation([OutFact("e", "parked: out of quota", False, ("loop w1",))], {})
    assert lone[0].message == "profile e is parked: out of quota; loop w1 passes it over"  # said "pass"


# -- secret store ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fact", "expected", "fix"),
    [
        (SecretStoreFact("keyring", "OS keyring", None), [], None),
        (
            SecretStoreFact("keyring", "OS keyring", "no usable backend"),
            [("secret_store", "warning")],
            "FLEETD_SECRET_STORE=file",
        ),
        (
            SecretStoreFact("keyring", "OS keyring", "no usable backend", keys_in_use=2),
            [("secret_store", "error")],
            "set-key",
        ),
        (
            SecretStoreFact("file", "file /h/secrets.json", "can be read by others", 1, "/h/secrets.json"),
            [("secret_store", "error")],
            "chmod 600 /h/secrets.json",
        ),
        (
            SecretStoreFact("vault", "the secret store", "must be 'keyring' or 'file'"),
            [("secret_store", "warning")],
            "FLEETD_SECRET_STORE=file",
        ),
    ],
)
def test_check_secret_store(fact: SecretStoreFact, expected: list[tuple[str, str]], fix: str | None) -> None:
    found = checks.check_secret_store(fact)
    assert brief(found) == expected
    if found:
        assert fix in found[0].fix


# -- socket ---------------------------------------------------------------------------------------

OK_SOCKET = SocketFact("/h/run/fleetd.sock", "/h/run", DIR | 0o700, 1000, 1000, daemon_answers=True, socket_exists=True)


@pytest.mark.parametrize(
    ("changes", "expected", "fix"),
    [
        ({}, [], None),
        ({"dir_mode": DIR | 0o777}, [("socket", "error")], "chmod 700 /h/run"),
        ({"dir_owner": 0}, [("socket", "error")], "a directory of your own"),
        ({"dir_mode": None, "dir_owner": None, "socket_exists": False}, [], None),  # not made yet: fine
        ({"socket_path": "/" + "x" * 120 + "/fleetd.sock"}, [("socket", "error")], "shorter FLEETD_HOME"),
        ({"daemon_answers": False}, [("socket", "warning")], "fleetd daemon start"),
    ],
)
def test_check_socket(changes: dict[str, object], expected: list[tuple[str, str]], fix: str | None) -> None:
    found = checks.check_socket(SocketFact(**{**OK_SOCKET.__dict__, **changes}))  # type: ignore[arg-type]
    assert brief(found) == expected
    if found:
        assert fix in found[0].fix


# -- disk, database -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free", "total", "expected"),
    [
        (50 * GB, 100 * GB, []),
        (2 * GB, 100 * GB, [("disk", "warning")]),  # under 5 %
        (int(0.9 * GB), 4 * GB, [("disk", "warning")]),  # under 1 GB
        (10 * 1024**2, 100 * GB, [("disk", "error")]),
        (0, 0, [("disk", "error")]),
    ],
)
def test_check_disk(free: int, total: int, expected: list[tuple[str, str]]) -> None:
    assert brief(checks.check_disk(DiskFact("/h", free, total))) == expected


@pytest.mark.parametrize(
    ("problem", "expected", "fix"),
    [
        (None, [], None),
        ("disk full", [("database", "error")], "free space"),
        ("read-only (attempt to write a readonly database)", [("database", "error")], "chmod u+w"),
        ("write failed: disk I/O error", [("database", "error")], "daemon status"),
    ],
)
def test_check_database(problem: str | None, expected: list[tuple[str, str]], fix: str | None) -> None:
    found = checks.check_database(DatabaseFact("/h/fleetd.db", problem))
    assert brief(found) == expected
    if found:
        assert fix in found[0].fix


# -- the service unit -----------------------------------------------------------------------------

UNIT = "/home/u/.config/systemd/user/fleetd.service"


@pytest.mark.parametrize(
    ("fact", "expected", "in_message"),
    [
        (ServiceFact("systemd", UNIT, installed=False), [], None),
        (
            ServiceFact(
                "systemd",
                UNIT,
                True,
                "/usr/bin:/home/u/.local/bin",
                clis=(UnitCli("claude", "/home/u/.local/bin/claude", True),),
            ),
            [],
            None,
        ),
        (
            ServiceFact(
                "systemd", UNIT, True, "/usr/bin:/bin", clis=(UnitCli("claude", "/home/u/.local/bin/claude", False),)
            ),
            [("service", "warning")],
            "sets PATH /usr/bin:/bin, which does not find claude (/home/u/.local/bin/claude)",
        ),
        (
            ServiceFact("systemd", UNIT, True, None, clis=(UnitCli("codex", "/home/u/.nvm/bin/codex", False),)),
            [("service", "warning")],
            "sets no PATH",
        ),
        (
            ServiceFact("systemd", UNIT, True, "/usr/bin", unit_home=None, home="/srv/fleet"),
            [("service", "warning")],
            "FLEETD_HOME none (the default home), not /srv/fleet",
        ),
        (ServiceFact("systemd", UNIT, True, "/usr/bin", unit_home="/srv/fleet", home="/srv/fleet"), [], None),
        (ServiceFact("launchd", UNIT, True, readable=False), [("service", "warning")], "cannot read"),
    ],
)
def test_check_service(fact: ServiceFact, expected: list[tuple[str, str]], in_message: str | None) -> None:
    found = checks.check_service(fact)
    assert brief(found) == expected
    if found:
        assert in_message in found[0].message


# -- the report -----------------------------------------------------------------------------------


def test_report_orders_errors_first_and_counts() -> None:
    report = checks.Report(
        daemon={"running": True},
        findings=[
            checks.Finding("disk", "warning", "low", "free some"),
            checks.Finding("socket", "error", "bad dir", "chmod"),
            checks.Finding("cli", "error", "missing", "install"),
        ],
        checked=["cli", "socket", "disk"],
        skipped=[("service", "no unit")],
    )
    out = report.to_json()
    assert list(out) == ["ok", "errors", "warnings", "daemon", "findings", "checked", "skipped"]
    assert (out["ok"], out["errors"], out["warnings"]) == (False, 2, 1)
    assert [f["check"] for f in out["findings"]] == ["cli", "socket", "disk"]
    assert set(out["findings"][0]) == {"check", "severity", "subject", "message", "fix"}
    assert out["skipped"] == [{"check": "service", "why": "no unit"}]
    assert checks.Report(daemon={}).to_json()["ok"] is True
