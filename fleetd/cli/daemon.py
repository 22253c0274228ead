"""`fleetd daemon …`: run it in the foreground, start it in the background, stop it, ask how it is."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from fleetd.cli.client import Client, CliError
from fleetd.cli.common import client, ensure_home, json_flag, paths, positive_seconds, render
from fleetd.daemon.options import DaemonOptions, OptionError, flags
from fleetd.paths import Paths
from fleetd.timefmt import format_duration


@click.group()
def daemon() -> None:
    """Start, stop and inspect the daemon."""


def daemon_options(f: Any) -> Any:
    """Every daemon setting as a flag, from its one declaration (fleetd/daemon/options.py)."""
    for flag in reversed(flags()):
        f = click.option(flag.option, flag.name, default=flag.default_text, show_default=True, help=flag.help)(f)
    return f


def _options(texts: dict[str, str]) -> DaemonOptions:
    try:
        return DaemonOptions.from_flags(texts)
    except OptionError as e:
        raise CliError(str(e), exit_code=2) from None


@daemon.command("run")
@daemon_options
def daemon_run(**texts: str) -> None:
    """Run the daemon in the foreground (what the service unit runs)."""
    options = _options(texts)
    from fleetd.daemon.main import run_daemon

    where = paths()
    ensure_home(where)
    raise SystemExit(run_daemon(where, options))


@daemon.command("start")
@daemon_options
@click.option("--wait", "wait_s", default=15.0, show_default=True, callback=positive_seconds,
              help="Seconds to wait for the socket.")  # fmt: skip
def daemon_start(wait_s: float, **texts: str) -> None:
    """Start the daemon in the background; returns once its socket answers."""
    _options(texts)  # bad flags fail here, not in the background
    where = paths()
    probe = Client(where.socket, timeout=2.0)
    health = probe.ping()
    if health:
        click.echo(f"fleetd daemon already running (pid {health['pid']}, socket {where.socket})")
        return
    import subprocess

    ensure_home(where)
    argv = [sys.executable, "-m", "fleetd", "daemon", "run"]
    for flag in flags():
        argv += [flag.option, texts[flag.name]]
    try:
        with open(where.daemon_log, "ab") as logf:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, close_fds=True
            )
    except OSError as e:
        raise CliError(f"cannot start the fleetd daemon: {e.strerror or e} ({e.filename or sys.executable})") from None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        health = probe.ping()
        # It answers while it cleans up after a crash (bounded by one kill grace): wait that out too.
        if health and (health.get("status") != "recovering" or time.monotonic() + 0.1 >= deadline):
            recovering = " (still recovering runs a crash left)" if health.get("status") == "recovering" else ""
            click.echo(f"fleetd daemon started (pid {health['pid']}, socket {where.socket}){recovering}")
            return
        if proc.poll() is not None:
            raise CliError(f"fleetd daemon exited with status {proc.returncode}: {_last_line(where)}")
        time.sleep(0.05)
    raise CliError(f"fleetd daemon did not answer within {wait_s:g}s; see {where.daemon_log}")


def _last_line(where: Paths) -> str:
    try:
        lines = where.daemon_log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(no log)"


@daemon.command("stop")
@click.option("--wait", "wait_s", default=60.0, show_default=True, callback=positive_seconds,
              help="Seconds to wait for it to exit.")  # fmt: skip
def daemon_stop(wait_s: float) -> None:
    """Stop the daemon: no new fires, in-flight runs get the stop grace, then are interrupted."""
    where = paths()
    probe = Client(where.socket, timeout=5.0)
    if probe.ping() is None:
        raise CliError(f"fleetd daemon is not running (socket {where.socket})")
    answer = probe.call("POST", "/v1/shutdown")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not _pid_alive(answer["pid"]):
            click.echo(f"fleetd daemon stopped (pid {answer['pid']})")
            return
        time.sleep(0.05)
    raise CliError(f"fleetd daemon (pid {answer['pid']}) still running after {wait_s:g}s")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


@daemon.command("status")
@json_flag
def daemon_status(as_json: bool) -> None:
    """Is the daemon running, and what is it doing. Exits 1 when its database cannot be written."""
    health = client(timeout=5.0).call("GET", "/v1/health")
    render(health, as_json, _status_text)
    if health.get("store", "ok") != "ok":
        raise SystemExit(1)


def _status_text(health: dict[str, Any]) -> str:
    store = health.get("store", "ok")
    loops = "?" if health["loops"] is None else health["loops"]
    state = "recovering runs a crash left" if health["status"] == "recovering" else "running"
    store_line = "ok" if store == "ok" else f"unusable: {store} (changes and fires fail until it is fixed)"
    return (
        f"fleetd {health['version']} {state}: pid {health['pid']}, up {format_duration(health['uptime_s'])}, "
        f"{loops} loop(s), {health['running_runs']} run(s) in progress\n"
        f"home {health['home']}\nsocket {health['socket']}\nstore {store_line}"
    )
