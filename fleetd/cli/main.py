"""`fleetd …` commands. Heavy or daemon-side modules are imported inside the commands that need
them, so `fleetd loop list` stays a ~50 ms round trip."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from fleetd import __version__
from fleetd.cli.client import Client, CliError, segment
from fleetd.cli.format import emit_json, local_time, schedule_text, short, table
from fleetd.paths import Paths, UnsafeDirectory, resolve
from fleetd.timefmt import format_duration


def _paths() -> Paths:
    return resolve()


def _client(timeout: float | None = 30.0) -> Client:
    return Client(_paths().socket, timeout=timeout)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetd")
def cli() -> None:
    """fleetd: run coding-agent loops unattended."""


# -- daemon ---------------------------------------------------------------------------------------


@cli.group()
def daemon() -> None:
    """Start, stop and inspect the daemon."""


def _daemon_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--near-limit", default="90%", show_default=True,
                     help="A profile is near_limit from this share of any window.")(f)  # fmt: skip
    f = click.option("--heartbeat-interval", default="30s", show_default=True,
                     help="How often usage is re-read and profiles re-judged.")(f)  # fmt: skip
    f = click.option("--stop-grace", default="30s", show_default=True,
                     help="How long in-flight runs may finish on stop.")(f)  # fmt: skip
    f = click.option("--kill-grace", default="5s", show_default=True,
                     help="Between SIGTERM and SIGKILL of a run's processes.")(f)  # fmt: skip
    f = click.option("--backoff-base", default="2s", show_default=True,
                     help="First retry delay after a transient failure (doubles, jittered, cap 60s).")(f)  # fmt: skip
    f = click.option("--circuit-cooldown", default="60s", show_default=True,
                     help="How long an open circuit stays open before one probe (doubles, cap 30m).")(f)  # fmt: skip
    f = click.option("--retain", default="90d", show_default=True,
                     help="Prune runs, attempts, events and run logs older than this (0/off: never).")(f)  # fmt: skip
    f = click.option("--prune-interval", default="1h", show_default=True,
                     help="How often the daemon prunes by --retain.")(f)  # fmt: skip
    return f


_DAEMON_FLAGS = ("stop_grace", "kill_grace", "heartbeat_interval", "near_limit", "backoff_base", "circuit_cooldown",
                 "retain", "prune_interval")  # fmt: skip


def _seconds(value: str, flag: str) -> float:
    from fleetd.timefmt import DurationError, parse_duration

    try:
        return parse_duration(value)
    except DurationError as e:
        raise CliError(f"invalid {flag}: {e}", exit_code=2) from None


def _positive_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A click callback for plain-seconds options: finite, above zero, within fleetd's longest duration."""
    from fleetd.timefmt import MAX_DURATION_S, MAX_DURATION_YEARS

    if not (math.isfinite(value) and 0 < value <= MAX_DURATION_S):
        raise click.BadParameter(
            f"{value:g}: give seconds above 0, at most {MAX_DURATION_YEARS} years", ctx=ctx, param=param
        )
    return value


def _ensure_home(paths: Paths) -> None:
    """Creates fleetd's directories, or says in one line why it cannot (e.g. FLEETD_HOME=/proc/x)."""
    try:
        paths.ensure()
    except UnsafeDirectory as e:
        raise CliError(str(e)) from None
    except OSError as e:
        where = e.filename or paths.home
        raise CliError(f"cannot create fleetd's directory {where}: {e.strerror or e}") from None


def _fraction(value: str) -> float:
    try:
        fraction = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
    except ValueError:
        raise CliError(f"invalid --near-limit {value!r}: use e.g. 90% or 0.9", exit_code=2) from None
    if not 0 < fraction <= 1:
        raise CliError(f"invalid --near-limit {value!r}: between 0 and 100%", exit_code=2)
    return fraction


@daemon.command("run")
@_daemon_options
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), hidden=True,
              help="Write the daemon's log here, rotating it (`daemon start` sets it), not to stderr.")  # fmt: skip
def daemon_run(near_limit: str, retain: str, log_file: Path | None, **durations: str) -> None:
    """Run the daemon in the foreground (what the service unit runs)."""
    from fleetd.daemon.main import DaemonOptions, run_daemon
    from fleetd.timefmt import DurationError, parse_retention

    seconds = {name: _seconds(value, "--" + name.replace("_", "-")) for name, value in durations.items()}
    try:
        retain_s = parse_retention(retain)
    except DurationError as e:
        raise CliError(f"invalid --retain: {e} (or 0 / off to keep everything)", exit_code=2) from None
    options = DaemonOptions(near_limit=_fraction(near_limit), retain=retain_s, log_file=log_file, **seconds)
    paths = _paths()
    _ensure_home(paths)
    raise SystemExit(run_daemon(paths, options))


@daemon.command("start")
@_daemon_options
@click.option("--wait", "wait_s", default=15.0, show_default=True, callback=_positive_seconds,
              help="Seconds to wait for the socket.")  # fmt: skip
def daemon_start(wait_s: float, **options: str) -> None:
    """Start the daemon in the background; returns once its socket answers."""
    paths = _paths()
    client = Client(paths.socket, timeout=2.0)
    health = client.ping()
    if health:
        click.echo(f"fleetd daemon already running (pid {health['pid']}, socket {paths.socket})")
        return
    import subprocess

    _ensure_home(paths)
    argv = [sys.executable, "-m", "fleetd", "daemon", "run"]
    for name in _DAEMON_FLAGS:
        argv += ["--" + name.replace("_", "-"), options[name]]
    argv += ["--log-file", str(paths.daemon_log)]  # it rotates the file it writes itself
    try:
        with open(paths.daemon_log, "ab") as logf:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, close_fds=True
            )
    except OSError as e:
        raise CliError(f"cannot start the fleetd daemon: {e.strerror or e} ({e.filename or sys.executable})") from None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        health = client.ping()
        # It answers while it cleans up after a crash (bounded by one kill grace): wait that out too.
        if health and (health.get("status") != "recovering" or time.monotonic() + 0.1 >= deadline):
            recovering = " (still recovering runs a crash left)" if health.get("status") == "recovering" else ""
            click.echo(f"fleetd daemon started (pid {health['pid']}, socket {paths.socket}){recovering}")
            return
        if proc.poll() is not None:
            raise CliError(f"fleetd daemon exited with status {proc.returncode}: {_last_line(paths)}")
        time.sleep(0.05)
    raise CliError(f"fleetd daemon did not answer within {wait_s:g}s; see {paths.daemon_log}")


def _last_line(paths: Paths) -> str:
    try:
        lines = paths.daemon_log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(no log)"


@daemon.command("stop")
@click.option("--wait", "wait_s", default=60.0, show_default=True, callback=_positive_seconds,
              help="Seconds to wait for it to exit.")  # fmt: skip
def daemon_stop(wait_s: float) -> None:
    """Stop the daemon: no new fires, in-flight runs get the stop grace, then are interrupted."""
    paths = _paths()
    client = Client(paths.socket, timeout=5.0)
    if client.ping() is None:
        raise CliError(f"fleetd daemon is not running (socket {paths.socket})")
    answer = client.call("POST", "/v1/shutdown")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def daemon_status(as_json: bool) -> None:
    """Is the daemon running, and what is it doing. Exits 1 when its database cannot be written."""
    health = _client(timeout=5.0).call("GET", "/v1/health")
    store = health.get("store", "ok")
    if as_json:
        emit_json(health)
    else:
        loops = "?" if health["loops"] is None else health["loops"]
        state = "recovering runs a crash left" if health["status"] == "recovering" else "running"
        store_line = "ok" if store == "ok" else f"unusable: {store} (changes and fires fail until it is fixed)"
        click.echo(
            f"fleetd {health['version']} {state}: pid {health['pid']}, up {format_duration(health['uptime_s'])}, "
            f"{loops} loop(s), {health['running_runs']} run(s) in progress\n"
            f"home {health['home']}\nsocket {health['socket']}\nstore {store_line}"
        )
    if store != "ok":
        raise SystemExit(1)


# -- loops ----------------------------------------------------------------------------------------


@cli.group()
def loop() -> None:
    """Define and control loops."""


def _parse_size(text: str) -> int:
    units = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}
    raw = text.strip().lower()
    number = raw.rstrip("kmgb")
    unit = raw[len(number) :]
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError, OverflowError):  # OverflowError: inf; nan is a ValueError
        raise CliError(f"invalid --output-cap {text!r} (use e.g. 512k, 10MB)", exit_code=2) from None


@loop.command("add")
@click.argument("name")
@click.option("--cron", help='Cron expression, e.g. "0 2 * * *".')
@click.option("--every", help="Interval, e.g. 10m, 1h30m.")
@click.option("--at", help="One-shot time, ISO 8601, e.g. 2026-12-01T09:00.")
@click.option("--tz", "timezone", help="Time zone of the schedule (default: the daemon's local zone).")
@click.option("--dir", "workdir", type=click.Path(file_okay=False), help="Working directory.")
@click.option("--backend", default="command", show_default=True,
              help="command, claude_code, codex, gemini, aider or openai_compat.")  # fmt: skip
@click.option(
    "--profile", "profiles", help="Profile pool, comma-separated, tried in order (default: all of the backend)."
)
@click.option("--model", help="Model for the agent (default: the profile's).")
@click.option(
    "--chain", help="Escalation chain, tried left to right: BACKEND[@MODEL] or PROFILE[@MODEL], comma-separated."
)
@click.option("--tiers", help="Tiers a backend step may use (default local,subscription; add metered to allow keys).")
@click.option("--max-cost", help="USD a run may spend, every attempt included.")
@click.option("--max-tokens", help="Tokens a run may use, e.g. 2M.")
@click.option("--daily-cost", help="USD the loop may spend per rolling 24 h; a fire over it is skipped.")
@click.option("--on-exhausted", type=click.Choice(["escalate", "wait"]),
              help="When a step has no headroom: go up the chain (default) or wait for its reset.")  # fmt: skip
@click.option(
    "--verify", help="Acceptance gate: a shell command run in --dir after each successful attempt; exit 0 accepts."
)
@click.option("--verify-timeout", help="How long --verify may take (default 10m).")
@click.option(
    "--review", help="A cheap reviewer agent that must accept the work too: BACKEND[@MODEL] or PROFILE[@MODEL]."
)
@click.option("--repair", type=int, help="Rejected work gets this many repair rounds on the same worker (default 0).")
@click.option("--agent-arg", "agent_args", multiple=True, help="Extra argument passed to the agent CLI (repeatable).")
@click.option("--command", "command", help="Shell command (command backend).")
@click.option("--prompt", help="Prompt text (stdin and FLEETD_PROMPT for the command backend).")
@click.option("--prompt-file", type=click.Path(dir_okay=False), help="File read for the prompt at each run.")
@click.option("--env", "env", multiple=True, metavar="K=V", help="Environment variable (repeatable).")
@click.option("--timeout", help="Kill the run after this long, e.g. 30m.")
@click.option("--catch-up", type=click.Choice(["once", "skip"]), default="once", show_default=True,
              help="A fire missed while the daemon was down: run once, or skip.")  # fmt: skip
@click.option("--output-cap", default="10MB", show_default=True, help="Keep at most this much output (tail).")
@click.option("--paused", is_flag=True, help="Add it paused.")
@click.option("--json", "as_json", is_flag=True, help="Print the loop as JSON.")
def loop_add(name: str, workdir: str | None, prompt_file: str | None, env: tuple[str, ...], agent_args: tuple[str, ...],
             output_cap: str, paused: bool, as_json: bool, **fields: Any) -> None:  # fmt: skip
    """Add a loop NAME with exactly one of --cron, --every, --at."""
    body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    body.update(name=name, env=list(env), agent_args=list(agent_args), output_cap=_parse_size(output_cap),
                enabled=not paused)  # fmt: skip
    if workdir is not None:
        body["dir"] = os.path.abspath(os.path.expanduser(workdir))
    if prompt_file is not None:
        body["prompt_file"] = os.path.abspath(os.path.expanduser(prompt_file))
    created = _client().call("POST", "/v1/loops", body)
    if as_json:
        emit_json(created)
    else:
        click.echo(f"added loop {created['name']}; next run {local_time(created['next_fire_at'])}")


@loop.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def loop_list(as_json: bool) -> None:
    """All loops."""
    loops = _client().call("GET", "/v1/loops")
    if as_json:
        emit_json(loops)
        return
    rows = [
        [
            lp["name"],
            schedule_text(lp["schedule"]),
            lp["backend"],
            "yes" if lp["enabled"] else "paused",
            local_time(lp["next_fire_at"]),
            local_time(lp["last_fire_at"]),
            "running" if lp["running_run_id"] else (lp["last_run"] or {}).get("status", "-"),
        ]
        for lp in loops
    ]
    click.echo(table(["NAME", "SCHEDULE", "BACKEND", "ENABLED", "NEXT", "LAST FIRE", "LAST RUN"], rows))


@loop.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def loop_show(name: str, as_json: bool) -> None:
    """One loop in full."""
    lp = _client().call("GET", f"/v1/loops/{segment(name)}")
    if as_json:
        emit_json(lp)
        return
    _print_fields(
        [
            ("name", lp["name"]),
            ("schedule", f"{schedule_text(lp['schedule'])} ({lp['schedule']['timezone']})"),
            ("backend", lp["backend"]),
            ("command", lp["command"]),
            ("prompt", short(lp["prompt"], 200) if lp["prompt"] else None),
            ("prompt file", lp["prompt_file"]),
            ("dir", lp["dir"]),
            ("env", " ".join(f"{k}={v}" for k, v in lp["env"].items()) or None),
            ("profiles", ",".join(lp["profiles"]) or (ALL_OF_BACKEND if lp["routed"] and not lp["chain"] else None)),
            ("model", lp["model"]),
            ("chain", ",".join(lp["chain"]) or None),
            ("tiers", ",".join(lp["tiers"]) if lp["routed"] else None),
            ("max cost", f"${lp['max_cost']:.2f} per run" if lp["max_cost"] else None),
            ("max tokens", f"{lp['max_tokens']} per run" if lp["max_tokens"] else None),
            ("daily cost", f"${lp['daily_cost']:.2f} per 24 h" if lp["daily_cost"] else None),
            ("on exhausted", lp["on_exhausted"] if lp["routed"] else None),
            ("verify", f"{lp['verify']} (timeout {format_duration(lp['verify_timeout_s'])})" if lp["verify"] else None),
            ("review", lp["review"]),
            ("repair", f"{lp['repair']} round(s)" if lp["repair"] else None),
            ("agent args", " ".join(lp["agent_args"]) or None),
            ("timeout", format_duration(lp["timeout_s"]) if lp["timeout_s"] else "none"),
            ("catch-up", lp["catch_up"]),
            ("enabled", "yes" if lp["enabled"] else "paused"),
            ("next fire", local_time(lp["next_fire_at"])),
            ("last fire", local_time(lp["last_fire_at"])),
            ("last run", _run_brief(lp["last_run"])),
            ("running", f"run {lp['running_run_id']}" if lp["running_run_id"] else "no"),
        ]
    )
    for step in lp.get("resolved") or []:
        click.echo(f"step {step['step']}: {step['step_text']}")
        for name in step["candidates"]:
            click.echo(f"    {name}")
        for out in step["passed"]:
            click.echo(f"    {out['profile']}: passed over: {out['why']}")
        if not step["candidates"] and not step["passed"]:
            click.echo("    (no profile of this backend)")


ALL_OF_BACKEND = "(all of the backend)"


def _run_brief(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    return f"{run['id']} {run['status']} at {local_time(run['started_at'])}"


def _print_fields(fields: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        if value not in (None, ""):
            click.echo(f"{key.ljust(width)}  {value}")


def _loop_action(action: str, verb: str) -> Any:
    @click.argument("name")
    def command(name: str) -> None:
        _client().call("POST", f"/v1/loops/{segment(name)}/{action}")
        click.echo(f"{verb} loop {name}")

    command.__doc__ = f"{verb.capitalize()} loop NAME."
    return command


loop.command("pause")(_loop_action("pause", "paused"))
loop.command("resume")(_loop_action("resume", "resumed"))


@loop.command("rm")
@click.argument("name")
def loop_rm(name: str) -> None:
    """Remove loop NAME (its run history stays)."""
    _client().call("DELETE", f"/v1/loops/{segment(name)}")
    click.echo(f"removed loop {name}")


@loop.command("run")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def loop_run(name: str, as_json: bool) -> None:
    """Fire loop NAME now."""
    run = _client().call("POST", f"/v1/loops/{segment(name)}/run")
    if as_json:
        emit_json(run)
    elif run["status"] == "skipped":
        raise CliError(f"run {run['id']} skipped: {run['error']}")
    else:
        click.echo(f"started run {run['id']} of loop {name}; follow: fleetd runs logs {run['id']} -f")


# -- runs -----------------------------------------------------------------------------------------


@cli.group()
def runs() -> None:
    """Run history and output."""


@runs.command("list")
@click.option("--loop", "loop_name", help="Only this loop's runs.")
@click.option("--status", help="running, succeeded, failed, timed_out, interrupted or skipped.")
@click.option("--since", help="Only runs started within this long, e.g. 24h.")
@click.option("--limit", default=50, show_default=True, type=int, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def runs_list(loop_name: str | None, status: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Runs, newest first."""
    items = _client().call(
        "GET", "/v1/runs", query={"loop": loop_name, "status": status, "since": since, "limit": limit}
    )
    if as_json:
        emit_json(items)
        return
    rows = [
        [
            str(r["id"]),
            r["loop"],
            r["trigger"],
            r["status"],
            "" if r["exit_code"] is None else str(r["exit_code"]),
            local_time(r["started_at"]),
            format_duration(r["duration_s"]),
            short(r["error"], 50),
        ]
        for r in items
    ]
    click.echo(table(["ID", "LOOP", "TRIGGER", "STATUS", "EXIT", "STARTED", "TOOK", "ERROR"], rows))


@runs.command("prune")
@click.option("--older-than", help="Prune runs (their attempts and logs) and events older than this, e.g. 30d. "
              "Without options: the daemon's --retain.")  # fmt: skip
@click.option("--keep-per-loop", type=click.IntRange(min=1), help="Prune each loop's runs past its newest N.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def runs_prune(older_than: str | None, keep_per_loop: int | None, as_json: bool) -> None:
    """Delete old history now: running runs and each loop's last run are always kept; stats keep their figures."""
    if older_than is not None:
        _seconds(older_than, "--older-than")  # a typo is exit 2 before anything is deleted
    body = {k: v for k, v in (("older_than", older_than), ("keep_per_loop", keep_per_loop)) if v is not None}
    freed = _client(timeout=None).call("POST", "/v1/runs/prune", body)
    if as_json:
        emit_json(freed)
        return
    click.echo(
        f"pruned {freed['runs']} run(s), {freed['attempts']} attempt(s), {freed['events']} event(s), "
        f"{freed['log_files']} log file(s) ({_size(freed['log_bytes'])})"
    )


def _size(n: float) -> str:
    unit = "bytes"
    for bigger in ("KB", "MB", "GB"):
        if n < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"


def _run_id(value: str) -> str:
    if not value.isdigit():
        raise CliError(f"invalid run id {value!r}: run ids are numbers", exit_code=2)
    return value


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def runs_show(run_id: str, as_json: bool) -> None:
    """One run in full."""
    r = _client().call("GET", f"/v1/runs/{_run_id(run_id)}")
    if as_json:
        emit_json(r)
        return
    _print_fields(
        [
            ("id", r["id"]),
            ("loop", r["loop"]),
            ("trigger", r["trigger"]),
            ("status", r["status"]),
            ("exit code", r["exit_code"]),
            ("error", r["error"]),
            ("scheduled", local_time(r["scheduled_at"])),
            ("started", local_time(r["started_at"])),
            ("finished", local_time(r["finished_at"])),
            ("took", format_duration(r["duration_s"]) if r["duration_s"] is not None else None),
            ("backend", r["backend"]),
            ("profile", r["profile"]),
            ("attempts", r["attempts"]),
            ("log", r["log_path"]),
        ]
    )
    for a in r.get("attempt_list", []):
        t = a["tokens"]
        cost = f" ${a['cost_usd']:.4f}" if a["cost_usd"] is not None else ""
        what = a["outcome"] if not a["error_class"] else f"{a['outcome']} ({a['error_class']})"
        role = " (review)" if a.get("role") == "review" else ""
        click.echo(
            f"  attempt {a['number']}{role}: {a['backend']}/{a['profile'] or '-'} {a['model'] or ''} {what}, "
            f"tokens in {t['input']} out {t['output']} cache r/w {t['cache_read']}/{t['cache_write']}{cost}"
            + (f", resets {local_time(a['reset_at'])}" if a["reset_at"] else "")
        )
        if a["error"]:
            click.echo(f"    {short(a['error'], 150)}")
        if a.get("result_text"):
            click.echo(f"    said: {short(a['result_text'], 150)}")
        if a.get("verify_exit") is not None:
            took = format_duration(a["verify_ms"] / 1000) if a.get("verify_ms") is not None else "-"
            click.echo(f"    verify: exit {a['verify_exit']} after {took}")
        if a.get("accepted") is not None:
            verdict = "accepted" if a["accepted"] else f"rejected: {short(a.get('findings') or '', 150)}"
            click.echo(f"    gate: {verdict}")
    route = r.get("route") or []
    if route:
        click.echo("route:")
        for entry in route:
            who = "review " if entry.get("role") == "review" else ""
            click.echo(f"  {local_time(entry['at'])}  {who}{entry['kind']:<7}  {short(entry['detail'], 300)}")


@runs.command("result")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def runs_result(run_id: str, as_json: bool) -> None:
    """The final message of the attempt the run accepted: what the agent said it did."""
    r = _client().call("GET", f"/v1/runs/{_run_id(run_id)}/result")
    if as_json:
        emit_json(r)
        return
    click.echo(r["result_text"])


@runs.command("logs")
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Stream a live run's output until it ends.")
@click.option("--raw", is_flag=True, help="The CLI's own output as it printed it (e.g. its JSON), not rendered.")
def runs_logs(run_id: str, follow: bool, raw: bool) -> None:
    """Print a run's captured output: agents' messages and tool calls as text (a command's output as is)."""
    path = f"/v1/runs/{_run_id(run_id)}/log?raw={int(raw)}" + ("&follow=1" if follow else "")
    out = sys.stdout.buffer
    for chunk in _client(timeout=None).stream(path):
        out.write(chunk)
        out.flush()


# -- profiles -------------------------------------------------------------------------------------


@cli.group()
def profile() -> None:
    """Auth profiles: one login or API key each."""


@profile.command("add")
@click.argument("name")
@click.option("--backend", required=True, help="claude_code, codex, gemini, aider or openai_compat.")
@click.option("--tier", type=click.Choice(["local", "subscription", "metered"]),
              help="Default: metered with an API key, local for a loopback --base-url, else subscription.")  # fmt: skip
@click.option("--api-key-stdin", is_flag=True, help="Read the API key from stdin (kept in the OS keyring).")
@click.option("--base-url", help="API base URL (openai_compat; or a gateway for the others).")
@click.option("--model", help="Default model for this profile.")
@click.option("--config-dir", type=click.Path(file_okay=False), help="The CLI's config directory for this login.")
@click.option("--limit", "limits", multiple=True, metavar="WINDOW=AMOUNT",
              help="A usage limit, e.g. 5h=4000000tok, 24h=500req, 30d=50usd (repeatable).")  # fmt: skip
@click.option("--price-input", type=float, help="USD per million input tokens (metered).")
@click.option("--price-output", type=float, help="USD per million output tokens.")
@click.option("--price-cache-read", type=float, help="USD per million cache-read tokens.")
@click.option("--price-cache-write", type=float, help="USD per million cache-write tokens.")
@click.option("--default-reset", help="How long a rate limit that names no reset lasts (default 60s).")
@click.option("--daily-cost", help="USD this profile may spend per rolling 24 h (then it is passed over).")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def profile_add(
    name: str, api_key_stdin: bool, config_dir: str | None, limits: tuple[str, ...], as_json: bool, **fields: Any
) -> None:
    """Add profile NAME. The key never appears on a command line: pipe it in with --api-key-stdin."""
    body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    body.update(name=name, limits=list(limits))
    if config_dir is not None:
        body["config_dir"] = os.path.abspath(os.path.expanduser(config_dir))
    if api_key_stdin:
        if sys.stdin.isatty():
            raise CliError("--api-key-stdin: pipe the key in, e.g. `fleetd profile add … --api-key-stdin < key.txt`", 2)
        body["api_key"] = sys.stdin.read().strip()
    created = _client().call("POST", "/v1/profiles", body)
    if as_json:
        emit_json(created)
        return
    hint = "" if created["has_api_key"] else f"; log in with `fleetd profile login {name}`"
    click.echo(f"added profile {name} ({created['backend']}, {created['tier']}){hint}")


@profile.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def profile_list(as_json: bool) -> None:
    """All profiles."""
    items = _client().call("GET", "/v1/profiles")
    if as_json:
        emit_json(items)
        return
    rows = [
        [p["name"], p["backend"], p["tier"], "key" if p["has_api_key"] else "login", p["model"] or "-",
         "yes" if p["enabled"] else "no", p["config_dir"]]
        for p in items
    ]  # fmt: skip
    click.echo(table(["NAME", "BACKEND", "TIER", "AUTH", "MODEL", "ENABLED", "CONFIG DIR"], rows))


@profile.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def profile_show(name: str, as_json: bool) -> None:
    """One profile (never its key)."""
    p = _client().call("GET", f"/v1/profiles/{segment(name)}")
    if as_json:
        emit_json(p)
        return
    prices = ", ".join(f"{k} ${v}/Mtok" for k, v in p["prices_per_mtok"].items() if v is not None)
    _print_fields(
        [
            ("name", p["name"]),
            ("backend", p["backend"]),
            ("tier", p["tier"]),
            ("auth", "API key (in the keyring)" if p["has_api_key"] else "login in the config dir"),
            ("config dir", p["config_dir"]),
            ("base url", p["base_url"]),
            ("model", p["model"]),
            ("prices", prices or None),
            ("limits", " ".join(p["limits"]) or None),
            ("default reset", format_duration(p["default_reset_s"]) if p.get("default_reset_s") else None),
            ("daily cost", f"${p['daily_cost']:.2f} per 24 h" if p.get("daily_cost") else None),
            ("enabled", "yes" if p["enabled"] else "no"),
            ("circuit", _circuit_text(p.get("circuit"))),
        ]
    )


@profile.command("reset-circuit")
@click.argument("name")
def profile_reset_circuit(name: str) -> None:
    """Close profile NAME's circuit breaker by hand."""
    _client().call("POST", f"/v1/profiles/{segment(name)}/reset-circuit")
    click.echo(f"closed the circuit of profile {name}")


@profile.command("rm")
@click.argument("name")
def profile_rm(name: str) -> None:
    """Remove profile NAME and its stored key."""
    _client().call("DELETE", f"/v1/profiles/{segment(name)}")
    click.echo(f"removed profile {name}")


@profile.command("env")
@click.argument("name")
def profile_env(name: str) -> None:
    """Print shell lines that use this profile by hand: eval "$(fleetd profile env NAME)"."""
    import shlex

    env = _client().call("GET", f"/v1/profiles/{segment(name)}/env")
    for var in env["unset"]:
        click.echo(f"unset {var}")
    for var, value in env["set"].items():
        click.echo(f"export {var}={shlex.quote(value)}")


@profile.command("login")
@click.argument("name")
def profile_login(name: str) -> None:
    """Run the backend's own login in the foreground, with this profile's config directory."""
    env = _client().call("GET", f"/v1/profiles/{segment(name)}/env")
    argv = env["login_argv"]
    if not argv:
        raise CliError(f"profile {name} ({env['backend']}) logs in by API key: add it with --api-key-stdin")
    child_env = {k: v for k, v in os.environ.items() if k not in env["unset"]}
    child_env.update(env["set"])
    click.echo(f"running `{' '.join(argv)}` for profile {name}", err=True)
    try:
        os.execvpe(argv[0], argv, child_env)
    except FileNotFoundError:
        raise CliError(f"{argv[0]} not found on PATH") from None


@profile.command("disable")
@click.argument("name")
def profile_disable(name: str) -> None:
    """Take profile NAME out of rotation until `fleetd profile enable NAME`."""
    _client().call("POST", f"/v1/profiles/{segment(name)}/disable")
    click.echo(f"disabled profile {name}")


@profile.command("enable")
@click.argument("name")
def profile_enable(name: str) -> None:
    """Put profile NAME back in rotation (also after an auth failure, once its login is fixed)."""
    _client().call("POST", f"/v1/profiles/{segment(name)}/enable")
    click.echo(f"enabled profile {name}")


@profile.command("switch")
@click.argument("target")
@click.option("--auto", is_flag=True, help="TARGET is a backend: hand the choice back to the heartbeat.")
def profile_switch(target: str, auto: bool) -> None:
    """Pin profile TARGET as its backend's active profile (until exhausted), or with --auto unpin BACKEND."""
    if auto:
        answer = _client().call("POST", f"/v1/backends/{segment(target)}/auto")
        click.echo(f"{answer['backend']}: automatic (active: {answer['active'] or '-'})")
    else:
        answer = _client().call("POST", f"/v1/profiles/{segment(target)}/switch")
        click.echo(f"{answer['backend']}: {answer['active']} pinned")


# -- usage and events -----------------------------------------------------------------------------


def _usage_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        windows = " ".join(
            f"{w['window']} {_amount(w['used'], w['unit'])}/{_amount(w['limit'], w['unit'])} ({w['percent']:g}%)"
            for w in r["windows"]
        )
        reported = " ".join(
            f"{_minutes(w['window_minutes'])} {w['used_percent']:g}%*" for w in r["reported_windows"]
            if w["used_percent"] is not None
        )  # fmt: skip
        state = r["state"] + (" (unconfirmed)" if r["unconfirmed"] else "")
        resets = format_duration(r["resets_in_s"]) if r["resets_in_s"] is not None else "-"
        marker = "*" if r["active"] else ""
        marker += " pinned" if r["pinned"] else ""
        shown = " ".join(x for x in (windows, reported) if x) or "-"
        circuit = _circuit_text(r["circuit"])
        lines.append([r["profile"], r["backend"], r["tier"], state, shown, resets, marker.strip(), circuit])
    return table(["PROFILE", "BACKEND", "TIER", "STATE", "WINDOWS", "RESETS IN", "ACTIVE", "CIRCUIT"], lines)


def _circuit_text(circuit: dict[str, Any] | None) -> str:
    if not circuit:
        return "-"
    if circuit["state"] == "open":
        return f"open until {local_time(circuit['open_until'])}"
    return circuit["state"].replace("_", "-")


def _amount(value: float, unit: str) -> str:
    if unit == "usd":
        return f"${value:.2f}"
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}{unit}"
    return f"{value:g}{unit}"


def _minutes(value: int | None) -> str:
    if not value:
        return "window"
    return format_duration(value * 60)


@cli.command("usage")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, callback=_positive_seconds,
              help="Seconds between refreshes with --watch.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def usage(watch: bool, interval: float, as_json: bool) -> None:
    """Per profile: state, each window's use, when it resets, the active marker (*)."""
    client = _client()
    if as_json:
        emit_json(client.call("GET", "/v1/usage"))
        return
    if not watch:
        click.echo(_usage_table(client.call("GET", "/v1/usage")))
        return
    try:
        while True:
            text = _usage_table(client.call("GET", "/v1/usage"))
            click.echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S") + "  fleetd usage (Ctrl-C to stop)\n" + text)
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@cli.command("events")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--limit", default=50, show_default=True, help="How many recent events first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(follow: bool, limit: int, as_json: bool) -> None:
    """profile.exhausted, profile.switched, profile.recovered, run.waiting, …"""
    import json

    def show(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event))
        else:
            click.echo(f"{local_time(event['at'])}  {event['type']:<18} {event['message']}")

    client = _client(timeout=None if follow else 30.0)
    if not follow:
        items = client.call("GET", "/v1/events", query={"limit": limit})
        if as_json and not items:
            return
        for event in items:
            show(event)
        return
    buffer = b""
    try:
        for chunk in client.stream(f"/v1/events?follow=1&limit={limit}"):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    show(json.loads(line))
                    sys.stdout.flush()
    except KeyboardInterrupt:
        return


# -- stats ----------------------------------------------------------------------------------------


@cli.command("stats")
@click.option("--since", help="Work started within this long, e.g. 24h, 30d (default 7d).")
@click.option("--by", help="backend, profile, model, loop, step or role; or two joined, e.g. loop,step "
              "(default backend).")  # fmt: skip
@click.option("--loop", "loop_name", help="Only this loop's runs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def stats(since: str | None, by: str | None, loop_name: str | None, as_json: bool) -> None:
    """Runs, attempts, success, fallback and escalation rates, attempt durations, tokens and cost per group.

    \b
    Finished work only. Attempt figures belong to the attempt's own group. A run counts twice, once
    in each of two groups: it starts in its first attempt's group (RUNS, FALLBACK, ESCALATION) and
    ends in its last work attempt's group (SUCCESS). So a run that fell back from backend A to B is
    a start in A and an end in B, and every column sums to the TOTAL row.
    \b
    FALLBACK: runs that needed more than their first candidate (chain step and profile; a retry on
    the same profile is not one). ESCALATION: runs that went past their first chain step.
    COST/SUCCESS: the group's whole cost, failed attempts included, per succeeded run.
    P50/P95: attempt durations, rounded to two significant digits.
    """
    answer = _client().call("GET", "/v1/stats", query={"since": since, "by": by, "loop": loop_name})
    if as_json:
        emit_json(answer)
        return
    click.echo(_stats_table(answer))


def _stats_table(answer: dict[str, Any]) -> str:
    by = answer["by"]

    def cells(row: dict[str, Any]) -> list[str]:
        t = row["tokens"]
        return [
            str(row["runs_started"]), str(row["attempts"]), _percent(row["success_rate"]),
            _percent(row["fallback_rate"]), _percent(row["escalation_rate"]),
            format_duration(row["p50_duration_s"]), format_duration(row["p95_duration_s"]),
            _tokens(t["input"]), _tokens(t["output"]), _tokens(t["cache_read"]), _tokens(t["cache_write"]),
            f"${row['cost_usd']:.4f}",
            "-" if row["cost_per_success_usd"] is None else f"${row['cost_per_success_usd']:.4f}",
        ]  # fmt: skip

    headers = [key.upper() for key in by]
    headers += ["RUNS", "ATTEMPTS", "SUCCESS", "FALLBACK", "ESCALATION", "P50", "P95",
                "IN", "OUT", "CACHE R", "CACHE W", "COST", "COST/SUCCESS"]  # fmt: skip
    rows = [[_group_value(row["group"][key]) for key in by] + cells(row) for row in answer["groups"]]
    rows.append(["TOTAL"] + [""] * (len(by) - 1) + cells(answer["total"]))
    scope = f" of loop {answer['loop']}" if answer["loop"] else ""
    return f"since {local_time(answer['since'])}{scope}\n" + table(headers, rows)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _tokens(n: int) -> str:
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def _group_value(value: Any) -> str:
    return "-" if value in (None, "") else str(value)


# -- service --------------------------------------------------------------------------------------


@cli.group()
def service() -> None:
    """The systemd user unit / launchd agent."""


@service.command("install")
@click.option("--print", "print_only", is_flag=True, help="Only print the unit; write nothing.")
def service_install(print_only: bool) -> None:
    """Install the service for this user (systemd on Linux, launchd on macOS)."""
    from fleetd.service import units

    home = os.environ.get("FLEETD_HOME")
    try:
        result = units.install(
            platform=sys.platform,
            fleetd_exe=units.find_fleetd_executable(),
            fleetd_home=str(Path(home).expanduser().resolve()) if home else None,
            user_home=Path.home(),
            log_dir=str(_paths().logs),
            print_only=print_only,
            xdg_config_home=os.environ.get("XDG_CONFIG_HOME"),
        )
    except (ValueError, RuntimeError, OSError) as e:
        raise CliError(str(e)) from None
    if print_only:
        click.echo(result.text, nl=False)
        return
    click.echo(f"wrote {result.path}")
    for step in result.next_steps:
        click.echo(f"  {step}")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        click.echo(f"fleetd: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"fleetd: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        sys.exit(130)
    except CliError as e:
        click.echo(f"fleetd: {e.message}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
