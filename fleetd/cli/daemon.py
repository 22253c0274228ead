"""`fleetd daemon …`: run it in the foreground, start it in the background, stop it, ask how it is."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from fleetd.cli.client import Client, CliError, DaemonNotRunning
from fleetd.cli.common import client, ensure_home, json_flag, paths, positive_seconds, render
from fleetd.daemon.options import DaemonOptions, OptionError, flags
from fleetd.paths import Paths
from fleetd.timefmt import format_duration

# How long `daemon start` waits for a daemon in its stop to exit: `daemon stop --wait`'s default, past the
# default stop grace (30 s) and kill grace.
STOPPING_WAIT_S = 60.0


@click.group()
def daemon() -> None:
    """Start, stop and inspect the daemon."""


def daemon_options(f: Any) -> Any:
    """Every daemon setting as a flag, from its one declaration (fleetd/daemon/options.py)."""
    for flag in reversed(flags()):
        if flag.kind == "switch":
            f = click.option(flag.option, flag.name, is_flag=True, help=flag.help)(f)
        elif flag.kind == "text":
            f = click.option(flag.option, flag.name, default="", metavar="HOST:PORT", help=flag.help)(f)
        else:
            f = click.option(flag.option, flag.name, default=flag.default_text, show_default=True, help=flag.help)(f)
    return f


def _options(texts: dict[str, Any]) -> DaemonOptions:
    try:
        return DaemonOptions.from_flags(texts)
    except OptionError as e:
        raise CliError(str(e), exit_code=2) from None


@daemon.command("run")
@daemon_options
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), hidden=True,
              help="Write the daemon's log here, rotating it (`daemon start` sets it), not to stderr.")  # fmt: skip
def daemon_run(log_file: Path | None, **texts: Any) -> None:
    """Run the daemon in the foreground (what the service unit runs)."""
    options = _options(texts)
    options.log_file = log_file
    from fleetd.daemon.main import run_daemon

    where = paths()
    ensure_home(where)
    raise SystemExit(run_daemon(where, options))


@daemon.command("start")
@daemon_options
@click.option("--wait", "wait_s", default="15s", show_default=True, callback=positive_seconds,
              help="How long to wait for the socket (90s, 2m; a bare number is seconds).")  # fmt: skip
def daemon_start(wait_s: float, **texts: Any) -> None:
    """Start the daemon in the background; returns once its socket answers."""
    _options(texts)  # bad flags fail here, not in the background
    where = paths()
    health = _health(where, wait_s)
    if health and health.get("status") == "stopping":  # it is about to go: "already running" would leave none
        click.echo(f"fleetd daemon (pid {health['pid']}) is stopping: waiting for it to exit", err=True)
        if not _exited(health["pid"], STOPPING_WAIT_S):
            raise CliError(f"fleetd daemon (pid {health['pid']}) still stopping after {STOPPING_WAIT_S:g}s; "
                           "start it once it has exited")  # fmt: skip
        health = None
    if health:
        click.echo(f"fleetd daemon already running (pid {health['pid']}, socket {where.socket})")
        source = click.get_current_context().get_parameter_source
        given = [f.option for f in flags() if source(f.name) == click.core.ParameterSource.COMMANDLINE]
        if given:  # they were dropped without a word
            click.echo(f"warning: {', '.join(given)} not applied: the running daemon keeps its options "
                       "(`fleetd daemon restart` with them applies them)", err=True)  # fmt: skip
        return
    _start(where, texts, wait_s)


def _start(where: Paths, texts: dict[str, str], wait_s: float, verb: str = "started", was: str = "") -> None:
    import subprocess

    probe = Client(where.socket, timeout=2.0)

    ensure_home(where)
    # -P: not the working directory first on the import path (a `fleetd/` or `json.py` there would run instead)
    argv = [sys.executable, "-P", "-m", "fleetd", "daemon", "run"]
    for flag in flags():
        argv += flag.argv(texts[flag.name])
    argv += ["--log-file", str(where.daemon_log)]  # it rotates the file it writes itself
    try:
        with open(where.daemon_log, "ab") as logf:
            logged = logf.tell()  # what is there is earlier daemons'
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, close_fds=True
            )
    except OSError as e:
        raise CliError(f"cannot start the fleetd daemon: {e.strerror or e} ({e.filename or sys.executable})") from None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        health = probe.ping()
        # It answers while it cleans up after a crash (bounded by one kill grace): wait that out too.
        if health and (health.get("status") not in ("recovering", "starting") or time.monotonic() + 0.1 >= deadline):
            recovering = {"recovering": " (still recovering runs a crash left)",
                          "starting": " (still starting)"}.get(health.get("status", ""), "")  # fmt: skip
            if health["pid"] != proc.pid:  # a start run at the same moment won: it is that one's daemon
                verb, was = "already running", ""
            click.echo(f"fleetd daemon {verb} (pid {health['pid']}{was}, socket {where.socket}){recovering}")
            return
        if proc.poll() is not None and _lock_holder(where) in (None, proc.pid):
            why = _last_line(where.daemon_log, logged)
            raise CliError(f"fleetd daemon exited with status {proc.returncode}: {why}")
        time.sleep(0.05)
    raise CliError(f"fleetd daemon did not answer within {wait_s:g}s; see {where.daemon_log}")


def _lock_holder(where: Paths) -> int | None:
    """The live process that holds (or last held) the home's instance lock: one that lost the race to it
    exits at once, and the winner is still starting."""
    try:
        pid = int(where.lock.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _last_line(log: Path, since: int) -> str:
    """The last line the daemon started here wrote to `log` (from byte `since`, its size before the start): an
    earlier daemon's line is not this one's reason."""
    try:
        with log.open("rb") as f:
            if f.seek(0, os.SEEK_END) >= since:  # else it rotated meanwhile: all of it is new
                f.seek(since)
            else:
                f.seek(0)
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    # The daemon's own one-line reason starts "fleetd: ", as the CLI's message about it does.
    return lines[-1].removeprefix("fleetd: ") if lines else "(it logged nothing)"


@daemon.command("stop")
@click.option("--wait", "wait_s", default="60s", show_default=True, callback=positive_seconds,
              help="How long to wait for it to exit (90s, 2m; a bare number is seconds).")  # fmt: skip
def daemon_stop(wait_s: float) -> None:
    """Stop the daemon: no new fires, in-flight runs get the stop grace, then are interrupted."""
    where = paths()
    health = _health(where, wait_s)
    if health is None:
        raise CliError(f"the daemon is not running (socket {where.socket})")
    click.echo(f"fleetd daemon stopped (pid {_stop(where, wait_s)})")


def _health(where: Paths, timeout: float) -> dict[str, Any] | None:
    """The daemon's health, or None when none is running. A daemon too busy to answer within `timeout`
    (hundreds of runs a second) is an error, never "not running": that would start a second one."""
    try:
        return Client(where.socket, timeout=timeout).call("GET", "/v1/health")  # type: ignore[no-any-return]
    except DaemonNotRunning:
        return None


def _stop(where: Paths, wait_s: float, then: str = "") -> int:
    """Ask the daemon to stop (no new fires, the stop grace, then runs interrupted); its pid once it exited.
    `then`: what the caller will not do, said when the wait runs out (the stop itself goes on)."""
    answer = Client(where.socket, timeout=wait_s).call("POST", "/v1/shutdown")
    if _exited(answer["pid"], wait_s):
        return int(answer["pid"])
    raise CliError(f"fleetd daemon (pid {answer['pid']}) is still stopping after {wait_s:g}s (its runs' stop grace): "
                   f"it exits by itself{then}")  # fmt: skip


def _exited(pid: int, wait_s: float) -> bool:
    """Whether process `pid` is gone within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@daemon.command("restart")
@daemon_options
@click.option("--wait", "wait_s", default="15s", show_default=True, callback=positive_seconds,
              help="How long to wait for the new daemon's socket.")  # fmt: skip
@click.option("--stop-wait", "stop_wait_s", default="60s", show_default=True, callback=positive_seconds,
              help="How long to wait for the old daemon to exit.")  # fmt: skip
def daemon_restart(wait_s: float, stop_wait_s: float, **texts: str) -> None:
    """Stop the daemon gracefully (as `daemon stop`), then start it (as `daemon start`) with the flags given here
    and, for the others, the options the running daemon has (not the defaults)."""
    _options(texts)  # bad flags fail before anything is stopped
    where = paths()
    health = _health(where, stop_wait_s)
    if health is None:
        click.echo(f"fleetd daemon was not running (socket {where.socket}); starting it")
        _start(where, texts, wait_s)
        return
    _refuse_if_supervised(health["pid"], "restart")
    # A bare restart put every option back to its default: a `--retain off` became 90-day pruning.
    source = click.get_current_context().get_parameter_source
    given = {name for name in texts if source(name) == click.core.ParameterSource.COMMANDLINE}
    if "gateway" in given:
        given.add("gateway_public")  # a switch has no "off" form: a new --gateway says it again, or not
    running = health.get("options")
    if running is None:  # a daemon from before this answer: its options are not known
        click.echo("fleetd: warning: the running daemon does not say its options: the new one gets the flags given "
                   "here and the defaults", err=True)  # fmt: skip
    kept = {name: running[name] for name in texts if name not in given and name in (running or {})}
    texts = {**texts, **kept}
    _options(texts)  # what the old daemon ran with may no longer do beside a flag given now
    old = _stop(where, stop_wait_s, then="; not restarted: `fleetd daemon start` waits for it and starts one")
    _start(where, texts, wait_s, verb="restarted", was=f", was {old}")


def _service_unit(pid: int) -> str | None:
    """The systemd unit the daemon runs in (`fleetd.service`), or None: read from its cgroup."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return None
    for part in text.replace("\n", "/").split("/"):
        if part.endswith(".service") and "fleetd" in part:
            return part
    return None


def _refuse_if_supervised(pid: int, verb: str) -> None:
    """A daemon systemd runs is systemd's to stop: stopped from here, `Restart=on-failure` would not bring
    it back (it exits 0) and a restart from here would run outside the unit."""
    unit = _service_unit(pid)
    if unit is not None:
        raise CliError(f"fleetd daemon (pid {pid}) runs under systemd as {unit}: use `systemctl --user {verb} {unit}`")


@daemon.command("logs")
@click.option("--follow", "-f", is_flag=True, help="Keep printing what the daemon logs until Ctrl-C.")
@click.option("--since", help="Only lines logged within this long, e.g. 1h.")
def daemon_logs(follow: bool, since: str | None) -> None:
    """The daemon's own log: logs/daemon.log under the fleetd home when started with `daemon start`; the
    journal (`journalctl --user -u fleetd`) when systemd runs it. (`daemon run` logs to its stderr.)"""
    from fleetd.cli.common import seconds
    from fleetd.cli.daemonlog import show_file, show_journal

    window = seconds(since, "--since") if since is not None else None
    where = paths()
    health = Client(where.socket, timeout=2.0).ping()
    unit = _service_unit(health["pid"]) if health else None
    if unit is None and not health and not where.daemon_log.exists():
        unit = _installed_unit()
    if unit is not None:
        show_journal(unit, follow=follow, since_s=window)
        return
    if not where.daemon_log.exists():
        raise CliError(
            f"no daemon log at {where.daemon_log}: the daemon writes it when started with `fleetd daemon start` "
            "(`fleetd daemon run` logs to its own stderr)"
        )
    show_file(where.daemon_log, follow=follow, since_s=window)


def _installed_unit() -> str | None:
    """`fleetd.service` when a user unit is installed (the daemon is not running, and left no log file)."""
    from pathlib import Path

    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return "fleetd.service" if (Path(config) / "systemd" / "user" / "fleetd.service").exists() else None


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
    state = {
        "recovering": "recovering runs a crash left",
        "starting": "starting (its first heartbeat, the gateway)",
        "stopping": "stopping (no new fires; its runs get the stop grace)",
    }.get(health["status"], "running")
    store_line = "ok" if store == "ok" else f"unusable: {store} (changes and fires fail until it is fixed)"
    return (
        f"fleetd {health['version']} {state}: pid {health['pid']}, up {format_duration(health['uptime_s'])}, "
        f"{loops} loop(s), {health['running_runs']} run(s) in progress\n"
        f"home {health['home']}\nsocket {health['socket']}\nstore {store_line}"
    )
