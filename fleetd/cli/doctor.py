"""`fleetd doctor`: what would stop a run, each finding with its fix; exit 1 when any is an error."""

from __future__ import annotations

import os
from typing import Any

import click

from fleetd.cli.client import DaemonNotRunning
from fleetd.cli.common import client, json_flag, paths, render
from fleetd.paths import socket_path, socket_path_problem


@click.command()
@json_flag
def doctor(as_json: bool) -> None:
    """What would stop a run: missing CLIs on the daemon's PATH, profiles never logged in, the keyring,
    the socket, the disk, the database, the service unit's PATH. Each finding says its fix.
    Exits 1 when any finding is an error (warnings exit 0)."""
    try:
        if socket_path_problem(socket_path()):  # no daemon can listen there: the socket check says why
            raise DaemonNotRunning(socket_path())
        # This shell's PATH goes along: a CLI it finds but the daemon's PATH does not is told apart.
        report = client().call("GET", "/v1/doctor", query={"path": os.environ.get("PATH", "")})
    except DaemonNotRunning:
        from fleetd.doctor.report import local_report

        report = local_report(paths(), dict(os.environ)).to_json()
    render(report, as_json, _text)
    if report["errors"]:
        raise SystemExit(1)


def _text(report: dict[str, Any]) -> str:
    daemon = report["daemon"]
    if daemon["running"]:
        via = f" under {daemon['manager']}" if daemon["manager"] else ""
        lines = [f"daemon pid {daemon['pid']}{via}, home {daemon['home']}, PATH {daemon['path']}"]
    else:
        lines = [f"no daemon answers for home {daemon['home']}"]
    for f in report["findings"]:
        lines.append(f"{f['severity']:<8} {f['check']:<12} {f['message']}")
        lines.append(f"{'':<8} {'':<12} fix: {f['fix']}")
    for skipped in report["skipped"]:
        lines.append(f"{'skipped':<8} {skipped['check']:<12} {skipped['why']}")
    if report["findings"]:
        lines.append(f"{report['errors']} error(s), {report['warnings']} warning(s)")
    else:
        lines.append(f"no problems found ({', '.join(report['checked'])} checked)")
    return "\n".join(lines)
