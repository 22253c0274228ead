"""The daemon's lifecycle: lock, recover, schedule, serve, and stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import logging
import logging.handlers
import os
import shutil
import signal
import sys
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from fleetd.daemon.api import DaemonContext, create_app
from fleetd.daemon.lock import AlreadyRunning, InstanceLock
from fleetd.daemon.notify import sd_notify
from fleetd.daemon.options import DaemonOptions
from fleetd.daemon.server import bind_unix_socket, make_server
from fleetd.daemon.startup import StartupError, open_store, prepare_home
from fleetd.errors import FleetdError
from fleetd.heartbeat.service import Heartbeat
from fleetd.hooks.service import HookService, secret_names
from fleetd.loops import cgroups, proctree
from fleetd.loops.executor import Executor, watch_children_by_pidfd
from fleetd.loops.retention import Pruner
from fleetd.loops.scheduler import Scheduler
from fleetd.loops.service import LoopService
from fleetd.paths import Paths
from fleetd.profiles.secrets import open_secret_store
from fleetd.profiles.service import KnownSecrets, ProfileService
from fleetd.records.run import Run
from fleetd.routing.circuit import BreakerPolicy
from fleetd.store.attempts import AttemptStore
from fleetd.store.circuits import CircuitStore
from fleetd.store.db import Database, StoreUnavailable
from fleetd.store.events import EventLog
from fleetd.store.gateway import GatewayStore
from fleetd.store.hooks import HookStore
from fleetd.store.loops import LoopStore
from fleetd.store.profiles import ProfileStore
from fleetd.store.retention import RetentionStore
from fleetd.store.runs import RunStore
from fleetd.store.stats import StatsStore
from fleetd.store.usage import UsageStore
from fleetd.timefmt import DAEMON_LOG_FORMAT, format_duration, local_text, now_utc

log = logging.getLogger("fleetd.daemon")
HOOK_STOP_GRACE = 5.0  # how long pending hook deliveries may finish on stop


def _freeze_start_up() -> None:
    """Move what start-up made (modules, the API app, every loop's definition and timer) out of the cyclic
    collector's sight: those objects live as long as the daemon, yet each full collection walked them all,
    a pause of tens of ms (60-110 ms measured under load at 200 loops every second) that every fire due meanwhile
    waited out: the fire-to-process p99. What the daemon makes from here on is collected as before."""
    gc.collect()
    gc.freeze()


def run_daemon(paths: Paths, options: DaemonOptions) -> int:
    """Exit status 0 after a clean stop; 1 with one line on stderr when the daemon cannot start or fails."""
    _setup_logging(options)
    lock = InstanceLock(paths.lock)
    try:
        prepare_home(paths)
        lock.acquire()
    except AlreadyRunning as e:
        print(
            f"fleetd: a daemon is already running for {paths.home} (pid {e.pid}, socket {paths.socket})",
            file=sys.stderr,
        )
        return 1
    except (StartupError, OSError) as e:
        print(f"fleetd: {_one_line(e)}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(Daemon(paths, options)))
    except StartupError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        log.debug("the daemon failed", exc_info=True)
        print(f"fleetd: the daemon failed: {_one_line(e)} (FLEETD_LOG_LEVEL=debug logs the traceback)", file=sys.stderr)
        return 1
    finally:
        lock.release()


async def _serve(daemon: Daemon) -> int:
    try:
        return await daemon.serve()
    finally:
        # However serve() ended: an open connection's thread would keep the process (and the lock) alive.
        if daemon.db is not None:
            with contextlib.suppress(Exception):  # already closed on a clean stop; never mask the real error
                await daemon.db.close()


def _one_line(e: BaseException) -> str:
    text = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__
    if isinstance(e, OSError) and e.filename:
        text = f"{e.filename}: {text}"
    return " ".join(text.split())


def log_formatter() -> logging.Formatter:
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", DAEMON_LOG_FORMAT)


def _setup_logging(options: DaemonOptions) -> None:
    handler: logging.Handler
    if options.log_file is not None:
        handler = OwnedLogFile(options.log_file, max_bytes=options.log_max_bytes, backups=options.log_backups)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter())
    handler.addFilter(_drop_reported_store_failures)
    logging.basicConfig(level=os.environ.get("FLEETD_LOG_LEVEL", "INFO").upper(), handlers=[handler], force=True)
    # httpx logs every request's URL at INFO: a webhook's URL can carry its token in its path (Slack's do).
    logging.getLogger("httpx").setLevel(logging.WARNING)


class OwnedLogFile(logging.handlers.RotatingFileHandler):
    """The daemon's log when the daemon owns the file (`daemon start`): size-capped, `backups` older files
    (daemon.log.1 … .N). Invariant: the process's stdout and stderr are the current file, re-pointed at each
    rotation, so what bypasses logging (a warning, a crash's traceback, a child's inherited stderr) is in
    the file a user reads, never in a rotated or deleted one; the next record's size check counts it too."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        os.chmod(path, 0o600)  # it may quote prompts and errors
        self._point_std_streams()

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        # The stdlib's asks the filesystem twice per record whether its file is a regular one (it may be /dev/null):
        # two syscalls on the event loop for every run's line. This one is the daemon's own file: its offset is enough.
        if self.stream is None:
            self.stream = self._open()
        if self.maxBytes <= 0:
            return False
        at = self.stream.tell()
        return bool(at) and at + len(self.format(record)) + 1 >= self.maxBytes

    def doRollover(self) -> None:
        super().doRollover()
        if self.stream is not None:
            os.fchmod(self.stream.fileno(), 0o600)
        self._point_std_streams()

    def _point_std_streams(self) -> None:
        if self.stream is None:
            return
        for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            with contextlib.suppress(Exception):
                stream.flush()
            os.dup2(self.stream.fileno(), fd)


def _drop_reported_store_failures(record: logging.LogRecord) -> bool:
    """The store logs each change of its writability once (fleetd.store); the same failure seen again by
    a retrying caller (a fire every second, each with a traceback) is dropped, not logged 90 times a second."""
    exc = record.exc_info[1] if record.exc_info else None
    for _ in range(8):  # a chain, not a cycle: bounded anyway
        if exc is None:
            break
        if isinstance(exc, StoreUnavailable):
            return False
        exc = exc.__cause__ or exc.__context__
    return True


def instance_tag(paths: Paths) -> str:
    """Distinguishes this home's run tags from other instances' (run ids repeat across homes)."""
    return hashlib.sha256(str(paths.home).encode()).hexdigest()[:12]


class Daemon:
    def __init__(self, paths: Paths, options: DaemonOptions) -> None:
        self.paths = paths
        self.options = options
        self.stop_event = asyncio.Event()
        self.hurry = asyncio.Event()  # a second Ctrl-C (or SIGTERM): no more grace for anything
        self._left: list[asyncio.Future[object]] = []  # work a hurry left running, awaited before exit
        self.db: Database | None = None

    def request_stop(self) -> None:
        self.stop_event.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop_event.is_set():
            self.stop_event.set()
            if sig == signal.SIGINT:
                log.warning("Ctrl-C: stopping gracefully (press Ctrl-C again to kill the runs and stop now)")
        elif not self.hurry.is_set():
            log.warning("%s again: killing the runs' process trees and stopping now", sig.name)
            self.hurry.set()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        watch_children_by_pidfd()
        # When a dead daemon was last alive, before this one stamps the file itself.
        last_alive = await asyncio.to_thread(_mtime, self.paths.alive)
        db = self.db = await open_store(self.paths)
        events = EventLog(db)
        # The run store writes each run's lifecycle events in the run's own transactions.
        loops, runs, attempts = LoopStore(db), RunStore(db, events, clock=now_utc), AttemptStore(db)
        zone_name = _local_zone()
        profile_store = ProfileStore(db)
        secret_store = open_secret_store(self.paths.home)
        hook_store = HookStore(db)
        # One cache of every secret to scrub (profile keys and webhook secrets): the heartbeat's and the executor's.
        known_secrets = KnownSecrets(secret_store, profile_store, more=functools.partial(secret_names, hook_store))
        hooks = HookService(hook_store, events, secret_store, known_secrets, clock=now_utc, cwd=self.paths.home)
        heartbeat = Heartbeat(
            profile_store,
            UsageStore(db),
            events,
            clock=now_utc,
            interval=self.options.heartbeat_interval,
            near_limit=self.options.near_limit,
            known_secrets=known_secrets.values,
            circuits=CircuitStore(db),
            breaker_policy=BreakerPolicy(cooldown_s=self.options.circuit_cooldown),
        )
        gateway_store = GatewayStore(db)
        profiles = ProfileService(
            profile_store,
            loops,
            secret_store,
            heartbeat,
            profiles_dir=self.paths.profiles,
            clock=now_utc,
            known=known_secrets,
            attempts=attempts,
            routes=gateway_store,
        )
        executor = Executor(
            runs,
            attempts,
            profiles,
            log_path=self.paths.run_log,
            tmp_root=self.paths.tmp,
            tag_prefix=instance_tag(self.paths),
            clock=now_utc,
            local_tz=ZoneInfo(zone_name),
            kill_grace=self.options.kill_grace,
            events=events,
            backoff_base=self.options.backoff_base,
            work_dir=self.paths.loop_work,
        )
        heartbeat.room_freed = executor.room_freed
        leftovers = await runs.running()  # read before anything can start a run
        executor.ready.clear()  # a `loop run` that comes in while recovering waits for it (one kill grace)
        scheduler = Scheduler(
            loops, executor, clock=now_utc, misfire_grace=timedelta(seconds=self.options.misfire_grace)
        )
        pruner = Pruner(RetentionStore(db), run_logs=self.paths.run_logs, clock=now_utc)
        from fleetd.gateway.service import GatewayService  # the gateway's stack (httpx, protocols) only here
        from fleetd.records.gateway import GatewaySetting

        forced = GatewaySetting(self.options.gateway, self.options.gateway_public) if self.options.gateway else None
        gateway = GatewayService(gateway_store, profiles, clock=now_utc, forced=forced)
        ctx = DaemonContext(
            paths=self.paths,
            loops=loops,
            runs=runs,
            attempts=attempts,
            profiles=profiles,
            heartbeat=heartbeat,
            events=events,
            stats=StatsStore(db),
            scheduler=scheduler,
            loop_service=LoopService(loops, scheduler, profile_store, default_tz=zone_name, world=profiles.world),
            executor=executor,
            hooks=hooks,
            clock=now_utc,
            started_at=now_utc(),
            default_tz=zone_name,
            request_stop=self.request_stop,
            phase="recovering",
            pruner=pruner,
            retain=self.options.retain,
            flags=self.options.flag_texts(),
            gateway=gateway,
            store_problem=lambda: db.problem,
        )
        sock = bind_unix_socket(self.paths.socket)
        server = make_server(create_app(ctx))
        server_task = asyncio.create_task(server.serve(sockets=[sock]))
        pruning: asyncio.Task[None] | None = None
        gateway_stopping: asyncio.Task[None] | None = None
        stamping: asyncio.Task[None] | None = None
        try:
            while not server.started:
                if server_task.done():
                    await server_task
                    raise RuntimeError("API server exited during start-up")
                await asyncio.sleep(0.01)
            # The socket answers (status "recovering") while a crash's leftovers are cleaned up.
            await self._recover(leftovers, runs, attempts, executor, last_alive)
            stamping = asyncio.create_task(_stamp_alive(self.paths.alive), name="alive-stamp")
            await gateway.recover(self.paths.gateway_journal)
            executor.ready.set()
            ctx.phase = "starting"
            await hooks.start()  # delivers from its cursor: events written at start are not missed
            await heartbeat.start()
            try:
                await gateway.start()
            except FleetdError as e:  # the --gateway flag's address cannot be used: nothing half-started
                raise StartupError(f"the gateway cannot start: {e.message}") from None
            # Only now: `daemon start` returns on "ok", and a script that asks for the gateway's URL next found none.
            ctx.phase = "ok"
            # A stop must not wait for the start: with hundreds of loops that missed fires while the
            # daemon was down, their catch-up fires take a while. Cancelling it is safe: a fire's
            # write runs to its end (store.db.finish_first).
            starting = asyncio.create_task(scheduler.start(), name="scheduler-start")
            await asyncio.wait({starting, asyncio.ensure_future(self.stop_event.wait())},
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if starting.done():
                starting.result()
                if self.options.retain is not None:
                    pruning = asyncio.create_task(
                        pruner.run(retain=self.options.retain, interval=self.options.prune_interval)
                    )
                _freeze_start_up()
                log.info(
                    "fleetd daemon ready (pid %s, socket %s, keys in the %s)",
                    os.getpid(), self.paths.socket, secret_store.description,
                )  # fmt: skip
                sd_notify("READY=1")
            await self.stop_event.wait()
            ctx.phase = "stopping"  # `daemon status` says so while the runs get their grace
            sd_notify("STOPPING=1")
            # Beside the runs, with the same grace: no new call, and a call still under way then is cut (it was waited
            # for to its end, however long: a stop took as long as the slowest stream).
            gateway_stopping = asyncio.create_task(gateway.stop(grace=self.options.stop_grace), name="gateway-stop")
            if pruning is not None:
                pruning.cancel()  # a batch in flight rolls back whole; the next start prunes again
            listening = gateway.address is not None
            log.info(
                "stopping: no new fires%s; waiting up to %s for %s%s under way",
                " or gateway calls" if listening else "", format_duration(self.options.stop_grace),
                _counted(executor.running_runs(), "run"),
                f" and {_counted(gateway.calls_under_way, 'gateway call')}" if listening else "",
            )  # fmt: skip
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            scheduler.stop()
            executor.accepting = False
            executor.interrupt_waiting("daemon stopped while the run waited for headroom")
            if not await self._unless_hurried(executor.wait_idle(self.options.stop_grace)):
                await self._interrupt(executor)
            await executor.flush_unrecorded()
            # The runs' last events are written: deliver them if that is quick; the rest waits for the next start.
            hook_grace = min(HOOK_STOP_GRACE, self.options.stop_grace)
            # Bounded whatever the dispatcher does: its follower once missed its cancellation and held the stop forever.
            if not await _within(hooks.stop(grace=hook_grace), hook_grace + HOOK_STOP_GRACE):
                log.warning("hooks: still stopping %ss after the stop; abandoned", hook_grace + HOOK_STOP_GRACE)
            await heartbeat.stop()
        finally:
            for task in (pruning, stamping):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if gateway_stopping is not None:
                await asyncio.gather(gateway_stopping, return_exceptions=True)
            await gateway.stop()  # again (idempotent): closes its proxy when the stop above failed or never began
            events.close()  # open `events --follow` answers end before the server stops
            server.should_exit = True
            await asyncio.gather(server_task, return_exceptions=True)
            await db.close()
            sock.close()
            if self.paths.socket.exists():
                self.paths.socket.unlink()
        log.info("fleetd daemon stopped")
        return 0

    async def _unless_hurried(self, step: Awaitable[bool | None], cancel: bool = True) -> bool:
        """`step`'s result, or False as soon as a second signal asks to stop now (`step` is cancelled,
        unless `cancel` is False: then it goes on, and is awaited after the caller's hurried kill)."""
        work = asyncio.ensure_future(step)
        hurried = asyncio.ensure_future(self.hurry.wait())
        await asyncio.wait({work, hurried}, return_when=asyncio.FIRST_COMPLETED)
        hurried.cancel()
        if work.done():
            return work.result() is not False
        if cancel:
            work.cancel()
        else:
            self._left.append(work)
        return False

    async def _interrupt(self, executor: Executor) -> None:
        """The stop grace is over (or a second signal came): kill every run's tree, with the kill grace
        unless a (further) signal says now; each run ends `interrupted`."""
        if not self.hurry.is_set():
            gentle = executor.interrupt_all("daemon stopped before the run finished")
            if await self._unless_hurried(gentle, cancel=False):
                return
        await executor.interrupt_all("daemon stopped at once (signalled twice) before the run finished", grace=0)
        await asyncio.gather(*self._left, return_exceptions=True)

    async def _recover(
        self, leftovers: list[Run], runs: RunStore, attempts: AttemptStore, executor: Executor,
        last_alive: datetime | None = None,
    ) -> None:  # fmt: skip
        """Runs a dead daemon left `running` or `waiting` become `interrupted`, their unfinished
        attempts are closed (each counted as a request of its profile: its CLI may well have made it, and a
        `1d=1req` profile ran twice across a crash), their processes killed and their private temp directories
        removed. All trees die concurrently, so recovery takes one kill grace however many runs there were."""
        run_cgroups = await asyncio.to_thread(lambda: [cgroups.run_path(executor.tag_prefix, r.id) for r in leftovers])
        # Whose own process still ran: those ran until now (a process of theirs left behind, a server an agent started
        # in the background, says nothing of when the run's own ended).
        roots = await asyncio.to_thread(lambda: [proctree.running(r.pid, r.pid_create_time) for r in leftovers])
        kills = await asyncio.gather(
            *(
                proctree.kill_tree(
                    run.pid,
                    create_time=run.pid_create_time,
                    tag=executor.run_tag(run.id),
                    grace=self.options.kill_grace,
                    cgroup=cgroup,
                )
                for run, cgroup in zip(leftovers, run_cgroups, strict=True)
            ),
            return_exceptions=True,
        )
        # Run cgroups no `running` row accounts for (the daemon died between finishing a run and
        # removing its cgroup, or before recording it): kill what is in them, remove them.
        if reaped := await proctree.reap_cgroups(executor.tag_prefix, grace=self.options.kill_grace):
            log.warning("killed %s leftover process(es) in the run cgroups of a previous daemon", reaped)
        now = now_utc()
        for run, root_ran, killed in zip(leftovers, roots, kills, strict=True):
            died = "the daemon died (a crash, kill -9 or power loss)"
            left = f"; killed {killed} leftover process(es) at the next start" if killed else ""
            ended = now
            if isinstance(killed, BaseException):
                log.error("run %s: cannot kill its leftover processes: %s", run.id, killed)
                reason = f"{died} while this run was running; its leftover processes could not be killed: {killed}"
            elif run.status == "waiting":  # no process: it waited as long as the daemon lived (it counted the downtime)
                ended = await asyncio.to_thread(_last_sign_of_life, run, now, last_alive)
                reason = f"{died} while this run waited for headroom" + (
                    f" (until {local_text(run.wait_until)})" if run.wait_until else ""
                )
            elif root_ran:  # it ran until now
                reason = f"{died} while this run was running{left}"
            else:
                # Its own process ended unseen while the daemon was down: its last output is the last that is known of
                # it (its end taken at the restart counted the downtime as run time, in `runs list` and `stats`). With
                # no process of its own (an HTTP call), it lasted as long as the daemon did.
                alive = last_alive if run.pid is None else None
                ended = await asyncio.to_thread(_last_sign_of_life, run, now, alive)
                unseen = ", its process ending unseen (at its last output or later)" if run.pid is not None else ""
                reason = f"{died} while this run was running{unseen}{left}"
            await asyncio.to_thread(_note_in_log, run, reason)
            # Its route ends saying so, as a stop's does (it ended at its last `try` or `wait`, as if under way).
            with contextlib.suppress(Exception):  # a record, not a reason to leave the run `running`
                route = await runs.route(run.id)
                await runs.set_route(run.id, [*route, {"at": ended.isoformat(), "kind": "stop", "detail": reason}])
            await attempts.interrupt_open(run.id, finished_at=ended, error="the daemon died during this attempt")
            await runs.finish(run.id, status="interrupted", finished_at=ended, error=reason)
            log.warning("run %s of loop %s was interrupted by a daemon crash", run.id, run.loop)
        _remove_attempt_dirs(self.paths.tmp)


def _last_sign_of_life(run: Run, now: datetime, daemon_alive: datetime | None = None) -> datetime:
    """When a run a dead daemon left was last known to be under way: its log's last write, or when the daemon was last
    alive (`daemon_alive`: for a run that lived as long as the daemon did), not before it started nor after `now`."""
    started = run.started_at or now
    written = _mtime(Path(run.log_path)) if run.log_path else None
    return min(max(written or started, daemon_alive or started, started), now)


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
    except OSError:
        return None


ALIVE_STAMP_S = 1.0  # a crashed daemon's in-flight calls and waits end within this of its death


async def _stamp_alive(path: Path) -> None:
    """Touch `path` every ALIVE_STAMP_S: a syscall a second (`Paths.alive`)."""
    while True:
        try:
            path.touch()
        except OSError as e:  # a record for crash recovery, not a reason to stop the daemon
            log.debug("cannot stamp %s: %s", path, e)
        await asyncio.sleep(ALIVE_STAMP_S)


def _note_in_log(run: Run, text: str) -> None:
    """Why the run ended, at the end of its log, as fleetd's own notes are (`RunLog.note`): a crash left none."""
    if not run.log_path:
        return
    with contextlib.suppress(OSError), open(run.log_path, "ab") as f:
        if f.tell() and not _ends_a_line(run.log_path):
            f.write(b"\n")
        f.write(f"[fleetd] {text}\n".encode())


def _ends_a_line(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


async def _within(step: Awaitable[None], seconds: float) -> bool:
    """`step` run for at most `seconds` (then cancelled: False). Not wait_for, which in 3.11 waits for the
    cancelled step to end, however long that takes."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        return False
    task.result()
    return True


def _remove_attempt_dirs(tmp_root: Path) -> None:
    """At start no attempt is running, so every private TMPDIR left in `tmp_root` is a dead one's."""
    try:
        entries = list(tmp_root.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith("run") and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _local_zone() -> str:
    """The zone loops added without --tz are in: TZ's where it names one, else the host's, by its IANA name."""
    tz = os.environ.get("TZ")
    key = (tz or "").removeprefix(":")  # ":Europe/Paris" is "Europe/Paris" (POSIX)
    if key:
        with contextlib.suppress(Exception):
            ZoneInfo(key)
            return key
    try:
        import tzlocal

        name = tzlocal.get_localzone_name() or "UTC"
        ZoneInfo(name)
    except Exception:
        name = "UTC"
    if key and not key.startswith("/"):  # a path is a zone's file, which tzlocal reads
        # A POSIX rule (TZ="CET-1CEST,M3.5.0,M10.5.0/3") sets the clock on the wall but names no zone: loops would
        # fire by another clock than the daemon's log shows, unsaid.
        log.warning("TZ=%s names no time zone; loops added without --tz use %s (give TZ as e.g. Europe/Paris)",
                    tz, name)  # fmt: skip
    return name
