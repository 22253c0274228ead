"""`fleetd doctor` when no daemon answers: that is the first finding, and the checks that need no daemon
run from the CLI's side (its environment standing in for the daemon's, which is what a daemon started
from this shell would get)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from fleetd.doctor import checks, facts
from fleetd.paths import Paths

NEEDS_DAEMON = "needs the daemon (it knows the loops, the profiles and its own PATH)"


def local_report(
    paths: Paths, env: Mapping[str, str], platform: str = sys.platform, user_home: Path | None = None
) -> checks.Report:
    user_home = Path.home() if user_home is None else user_home
    user_path = env.get("PATH") or os.defpath
    service = facts.service_fact(platform, user_home, env, paths.home, _agent_executables(), user_path)
    installed = service is not None and service.installed
    under_systemd = installed and service is not None and service.kind == "systemd"
    start = "systemctl --user start fleetd" if under_systemd else "fleetd daemon start"
    report = checks.Report(
        daemon={"running": False, "home": str(paths.home), "socket": str(paths.socket)},
        findings=[
            checks.Finding("daemon", "error", f"the daemon is not running (socket {paths.socket})", start),
        ],
        checked=["daemon", "secret_store", "socket", "disk"],
        skipped=[(check, NEEDS_DAEMON) for check in ("cli", "login", "key", "rotation", "database")],
    )
    report.findings += checks.check_secret_store(facts.secret_store_fact(paths.home, env, keys_in_use=0))
    report.findings += checks.check_socket(facts.socket_fact(paths, daemon_answers=False))
    disk = facts.disk_fact(paths.home)
    if disk is not None:
        report.findings += checks.check_disk(disk)
    if installed and service is not None:
        report.checked.append("service")
        report.findings += checks.check_service(service)
    else:
        report.skipped.append(("service", "no service unit is installed"))
    return report


def _agent_executables() -> list[str]:
    """Without the daemon no one knows which backends are in use: every CLI an adapter runs."""
    from fleetd.backends.registry import ADAPTERS

    return [a.executable for a in ADAPTERS.values() if a.executable]
