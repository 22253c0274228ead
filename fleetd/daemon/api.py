"""The HTTP/JSON API served on the Unix socket. Handlers translate; the rules live in loops/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetd import __version__
from fleetd.daemon.listing import LoopListing
from fleetd.daemon.logview import readable
from fleetd.daemon.options import flags
from fleetd.daemon.views import (
    RUN_JSON_SQL,
    circuit_json,
    hook_json,
    loop_json,
    profile_json,
    pruned_json,
    result_json,
    run_json,
    stats_json,
    usage_json,
)
from fleetd.doctor.service import DoctorService, checked_user_path, loop_warnings
from fleetd.edits import known_fields
from fleetd.errors import Conflict, FleetdError, InvalidArgument, NotFound, shown
from fleetd.heartbeat.service import Heartbeat
from fleetd.hooks.model import validate_hook_name
from fleetd.hooks.service import HookService
from fleetd.loops.executor import Executor
from fleetd.loops.model import validate_name
from fleetd.loops.retention import Pruner
from fleetd.loops.runlog import RunLog
from fleetd.loops.scheduler import Scheduler
from fleetd.loops.scrub import Scrubber
from fleetd.loops.service import LoopService
from fleetd.paths import Paths
from fleetd.profiles.model import validate_profile_name
from fleetd.profiles.service import ProfileService
from fleetd.records.hook import Hook
from fleetd.records.loop import Loop
from fleetd.records.profile import Profile
from fleetd.records.run import FINAL_STATUSES, STATUSES, Run, accepted_attempt
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import StoreUnavailable
from fleetd.store.events import EventLog
from fleetd.store.loops import LoopStore
from fleetd.store.runs import RunStore
from fleetd.store.stats import DEFAULT_SINCE, StatsStore, parse_by
from fleetd.timefmt import DurationError, parse_duration, to_iso

if TYPE_CHECKING:
    from fleetd.gateway.service import GatewayService

log = logging.getLogger("fleetd.api")
MAX_LIMIT = 10_000
MAX_ID = 2**63 - 1  # SQLite's largest INTEGER: no row id (run, event) can be past it
MAX_KEEP = 2**31 - 1  # `runs prune --keep-per-loop`: more than any history holds
FOLLOW_START_WAIT = 5.0  # for a just-fired run's log to open
FOLLOW_RECORD_WAIT = 30.0  # for a followed run's end to be written once its log closed
MAX_BODY_DEPTH = 32  # no request body nests more than 3 levels; the rest is refused before any validator recurses


@dataclass
class DaemonContext:
    paths: Paths
    loops: LoopStore
    runs: RunStore
    attempts: AttemptStore
    profiles: ProfileService
    heartbeat: Heartbeat
    events: EventLog
    stats: StatsStore
    scheduler: Scheduler
    loop_service: LoopService
    executor: Executor
    hooks: HookService
    clock: Callable[[], datetime]
    started_at: datetime
    default_tz: str
    request_stop: Callable[[], None]
    # "recovering" while a crash's leftovers are cleaned up at start, "starting" while the heartbeat's first beat and
    # the gateway start, "stopping" at the end.
    phase: str = "ok"
    pruner: Pruner | None = None
    retain: float | None = None  # the daemon's --retain in seconds: what `runs prune` without options prunes
    flags: dict[str, Any] | None = None  # its options as flag texts (`daemon restart` keeps them)
    gateway: GatewayService | None = None
    store_problem: Callable[[], str | None] = lambda: None  # what is wrong with the database now, if anything


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except RecursionError:
        raise InvalidArgument(f"request body is nested deeper than {MAX_BODY_DEPTH} levels") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, and an integer past Python's 4,300 digits
        raise InvalidArgument("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    _check_storable(body)
    return body


async def _fields(request: Request, *known: str) -> dict[str, Any]:
    """The body of an action that takes `known` fields (or none): one it does not take is refused, as in an
    add or an edit, not ignored (`{"kil": true}` stopped gracefully what was meant to be killed)."""
    body = await _body(request)
    for key in body:
        if key not in known:
            takes = f"its fields: {', '.join(known)}" if known else "it takes none"
            raise InvalidArgument(f"unknown field {shown(key)} for {request.method} {request.url.path} ({takes})")
    return body


def _check_storable(body: Any) -> None:
    """Refuses what no field can hold, before any validator sees it: nesting past MAX_BODY_DEPTH,
    and text with a lone surrogate (JSON allows "\\ud800"; UTF-8, hence SQLite and our own
    answers, cannot encode it)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_BODY_DEPTH:
            raise InvalidArgument(f"request body is nested deeper than {MAX_BODY_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise InvalidArgument("request body holds text that is not valid Unicode") from None


def _int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:  # also a number past Python's 4,300-digit limit
        raise InvalidArgument(f"invalid --{key} {shown(raw)}: not a number") from None
    if not low <= value <= high:
        raise InvalidArgument(f"--{key} must be between {low} and {high}")
    return value


def _since(text: str, now: datetime) -> datetime:
    """`--since 24h` → the time that long before now."""
    try:
        return now - timedelta(seconds=parse_duration(text))
    except DurationError as e:
        raise InvalidArgument(f"invalid --since: {e}") from None


def _options_in_force(ctx: DaemonContext) -> dict[str, Any]:
    """The daemon's flags as they still hold (what a bare `daemon restart` keeps): a `--gateway` that a `gateway
    enable` or `disable` has since overruled says nothing any more, or the restart would put it back."""
    options = dict(ctx.flags or {})
    if ctx.gateway is not None and ctx.gateway.forced is None and options.get("gateway"):
        options.update({f.name: f.default_text for f in flags() if f.name in ("gateway", "gateway_public")})
    return options


def create_app(ctx: DaemonContext) -> Starlette:
    async def health(request: Request) -> Response:
        # Health answers even when the store does not: "store" says what is wrong with it.
        store = ctx.store_problem()
        try:
            loops: int | None = await ctx.loops.count()
        except StoreUnavailable as e:
            loops, store = None, store or e.problem
        return JSONResponse(
            {
                "status": ctx.phase,
                "version": __version__,
                "pid": os.getpid(),
                "home": str(ctx.paths.home),
                "socket": str(ctx.paths.socket),
                "started_at": to_iso(ctx.started_at),
                "uptime_s": round((ctx.clock() - ctx.started_at).total_seconds(), 3),
                "loops": loops,
                "running_runs": ctx.executor.running_runs(),
                "store": store or "ok",
                "options": _options_in_force(ctx),
            }
        )

    listing: LoopListing | None = None  # made at the first request: create_app reads nothing of ctx

    async def list_loops(request: Request) -> Response:
        nonlocal listing
        # ?indent=2: laid out as `fleetd loop list --json` prints it, which then prints it as it comes.
        indent = _int_param(request, "indent", 0, 0, 8)
        if listing is None:
            listing = LoopListing(ctx.loops.db, ctx.loops, ctx.runs, _running)
        headers = {"X-Fleetd-Indent": str(indent)} if indent else None
        return Response(await listing.body(indent), media_type="application/json", headers=headers)

    def _running_id(loop: Loop) -> int | None:
        return _running(loop)[0]

    def _running(loop: Loop) -> tuple[int | None, datetime | None]:
        """The loop's run in progress (of this instance of it: `Loop.instance`), and the reset it waits for."""
        slot = ctx.executor.running(loop)
        return (slot.run_id, slot.wait_until) if slot else (None, None)

    async def _loop_view(name: str) -> JSONResponse:
        return JSONResponse(await _loop_dict(await ctx.loops.get(validate_name(name))))

    async def _loop_dict(loop: Loop) -> dict[str, Any]:
        # Only this loop's own runs: not those of an earlier loop of the same name (`Loop.instance`).
        last = await ctx.runs.list(loop=loop.name, since=loop.created_at, limit=1)
        return loop_json(loop, last[0] if last else None, *_running(loop))

    async def add_loop(request: Request) -> Response:
        body = await _body(request)
        saved = await ctx.loop_service.add(body)
        # Saved all the same: the CLI may be installed later; the answer says what would fail now.
        return JSONResponse({**await _shown(saved.name), "warnings": loop_warnings(saved)}, status_code=201)

    async def edit_loop(request: Request) -> Response:
        name = validate_name(request.path_params["name"])
        body = await _body(request)
        saved = await ctx.loop_service.edit(name, body)
        return JSONResponse({**await _shown(name), "warnings": loop_warnings(saved)})

    async def show_loop(request: Request) -> Response:
        return JSONResponse(await _shown(validate_name(request.path_params["name"])))

    async def _shown(name: str) -> dict[str, Any]:
        """The loop as `loop show` has it, read back as stored: `loop add` and `loop edit` answer the same
        (they answered the input's numbers, 90 where show has 90.0, and edit without `not_firing`)."""
        loop = await ctx.loops.get(name)
        body = await _loop_dict(loop)
        resolved, not_firing = await ctx.loop_service.explain(loop)
        body["resolved"] = None  # a command loop: no chain
        if resolved is not None:
            body["resolved"] = [
                {
                    "step": index + 1,
                    "step_text": step.describe(),
                    "candidates": [c.profile for c in usable],
                    "passed": [{"profile": p.profile, "why": p.why} for p in passed],
                }
                for index, (step, usable, passed) in enumerate(resolved)
            ]
        body["not_firing"] = not_firing.to_json() if not_firing else None
        return body

    async def remove_loop(request: Request) -> Response:
        name = validate_name(request.path_params["name"])
        stopped = await ctx.scheduler.remove(name, force=_flag(request, "force", False))
        return JSONResponse({"removed": name, "stopped_run": stopped})

    async def stop_loop(request: Request) -> Response:
        name = validate_name(request.path_params["name"])
        kill = _kill_flag(await _fields(request, "kill"))
        loop = await ctx.loops.get(name)
        running = _running_id(loop)
        if running is None:
            starting = ctx.executor.running(loop) is not None
            raise Conflict(
                f"loop {name}'s run is starting: try again" if starting else f"loop {name} has no running run"
            )
        return await _stop(running, kill, "stopped by `fleetd loop stop`")

    async def stop_run(request: Request) -> Response:
        run_id = _run_id(request)
        kill = _kill_flag(await _fields(request, "kill"))
        return await _stop(
            run_id, kill, "killed by `fleetd runs stop --kill`" if kill else "stopped by `fleetd runs stop`"
        )

    async def _stop(run_id: int, kill: bool, reason: str) -> Response:
        run = await ctx.runs.get(run_id)
        if run.status in FINAL_STATUSES:
            raise Conflict(_ended(run))
        if not await ctx.executor.stop(run_id, kill=kill, reason=reason):
            run = await ctx.runs.get(run_id)
            raise Conflict(
                _ended(run)
                if run.status in FINAL_STATUSES
                else f"run {run_id} already ended (its record is being written)"
            )
        return JSONResponse(run_json(await ctx.runs.get(run_id)))

    async def pause_loop(request: Request) -> Response:
        await _fields(request)
        await ctx.scheduler.pause(validate_name(request.path_params["name"]))
        return await _loop_view(request.path_params["name"])

    async def resume_loop(request: Request) -> Response:
        await _fields(request)
        await ctx.scheduler.resume(validate_name(request.path_params["name"]))
        return await _loop_view(request.path_params["name"])

    async def run_loop(request: Request) -> Response:
        await _fields(request)
        run = await ctx.scheduler.run_now(validate_name(request.path_params["name"]))
        return JSONResponse(run_json(run), status_code=201)

    async def list_runs(request: Request) -> Response:
        q = request.query_params
        status = q.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidArgument(f"invalid status {shown(status)} (one of: {', '.join(STATUSES)})")
        since = _since(q["since"], ctx.clock()) if q.get("since") else None
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        loop = q.get("loop")
        if loop is not None:
            validate_name(loop)  # as `stats --loop` does: a name no loop can have is a mistake, not "no runs"
        body = await ctx.runs.list_array(RUN_JSON_SQL, loop=loop, status=status, since=since, limit=limit)
        if loop is not None and body == b"[]":
            await _known_loop(loop)
        return Response(body, media_type="application/json")

    async def _known_loop(name: str) -> None:
        """An empty answer for a loop nothing knows is a typo's: said so (`LoopStore.known`)."""
        if not await ctx.loops.known(name):
            raise NotFound(f"no loop named {name!r}, and no runs of one on record")

    async def prune_runs(request: Request) -> Response:
        body = await _body(request)
        known_fields(body, ("older_than", "keep_per_loop"), "prune")
        older_than, keep = body.get("older_than"), body.get("keep_per_loop")
        seconds: float | None = None
        if older_than is not None:
            if not isinstance(older_than, str):
                raise InvalidArgument("invalid --older-than: give a duration, e.g. 30d")
            try:
                seconds = parse_duration(older_than)
            except DurationError as e:
                raise InvalidArgument(f"invalid --older-than: {e}") from None
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= MAX_KEEP):
            raise InvalidArgument(f"invalid --keep-per-loop {shown(str(keep))}: a number from 1 to {MAX_KEEP}")
        if seconds is None and keep is None:
            if ctx.retain is None:
                raise InvalidArgument("nothing to prune by: give --older-than or --keep-per-loop (--retain is off)")
            seconds = ctx.retain
        assert ctx.pruner is not None
        freed = await ctx.pruner.prune(older_than=seconds, keep_per_loop=keep)
        return JSONResponse(pruned_json(freed, older_than_s=seconds, keep_per_loop=keep))

    def _run_id(request: Request) -> int:
        raw = request.path_params["run_id"]
        try:
            run_id = int(raw)
        except ValueError:
            raise InvalidArgument(f"invalid run id {shown(raw)}: run ids are numbers") from None
        if not 0 <= run_id <= MAX_ID:
            raise NotFound(f"no run with id {run_id}")  # the query could not even be asked
        return run_id

    async def show_run(request: Request) -> Response:
        run = await ctx.runs.get(_run_id(request))
        route = ctx.executor.live_route(run.id)  # stored once the run ends
        if route is None:
            route = await ctx.runs.route(run.id)
        return JSONResponse(run_json(run, await ctx.attempts.for_run(run.id), route))

    async def run_log(request: Request) -> Response:
        run = await ctx.runs.get(_run_id(request))
        follow = _flag(request, "follow", False)
        stream = _stream_log(ctx, run, follow)
        if not _flag(request, "raw", True):  # raw by default: the API keeps the CLI's own bytes unless asked
            stream = await _readable_log(ctx, run, stream)
        return StreamingResponse(stream, media_type="text/plain")

    async def run_result(request: Request) -> Response:
        run = await ctx.runs.get(_run_id(request))
        accepted = accepted_attempt(run, await ctx.attempts.for_run(run.id))
        if accepted is None:
            if run.status in FINAL_STATUSES:
                why = f": {run.error}" if run.error else ""
                raise NotFound(f"run {run.id} has no accepted result: it ended {run.status}{why}")
            raise NotFound(f"run {run.id} has no result yet: it is {run.status}")
        if accepted.result_text is None:
            raise NotFound(
                f"run {run.id}'s accepted attempt {accepted.number} ({accepted.backend}) left no final message"
            )
        return JSONResponse(result_json(run, accepted))

    async def stats(request: Request) -> Response:
        q = request.query_params
        now = ctx.clock()
        since = _since(q.get("since", DEFAULT_SINCE), now)
        source = q.get("source") or "loops"
        if source not in ("loops", "gateway"):
            raise InvalidArgument(f"invalid --source {shown(source)} (loops or gateway)")
        if source == "gateway":
            from fleetd.gateway.service import parse_gateway_by

            if q.get("loop") is not None:
                raise InvalidArgument("--loop is for --source loops; gateway calls belong to routes")
            by = parse_gateway_by(q.get("by"))
            figures = await _gateway().stats(since=since, by=by)
            return JSONResponse({"since": to_iso(since), "until": to_iso(now), **figures})
        loop = q.get("loop")
        if loop is not None:
            validate_name(loop)
        figures = await ctx.stats.stats(since=since, by=parse_by(q.get("by")), loop=loop)
        if loop is not None and not figures.groups:
            await _known_loop(loop)
        return JSONResponse(stats_json(figures, now))

    async def list_profiles(request: Request) -> Response:
        return JSONResponse([await _profile(p) for p in await ctx.profiles.list()])

    async def _profile(profile: Profile) -> dict[str, Any]:
        missing = ctx.profiles.secrets.description if await ctx.profiles.has_key_missing(profile) else None
        shown = profile_json(profile, missing, await ctx.profiles.logged_in(profile))
        # Enabled by its setting, yet set aside by the heartbeat (an auth failure) until enabled again by hand.
        status = ctx.heartbeat.status(profile.name)
        aside = status.reason if profile.enabled and status.state == "disabled" else None
        return {**shown, "disabled_reason": aside, "circuit": circuit_json(ctx.heartbeat.circuit(profile.name))}

    def profiles_changed() -> None:
        """A profile changed by hand: runs waiting on profiles look again, and the gateway's next call does not route
        by a world read before it (a disabled profile was called for a quarter of a second more)."""
        ctx.executor.look_again()
        if ctx.gateway is not None:
            ctx.gateway.profiles_changed()

    async def add_profile(request: Request) -> Response:
        profile = await ctx.profiles.add(await _body(request))
        profiles_changed()  # a run waiting for any profile of its backend may use this one
        return JSONResponse(await _profile(profile), status_code=201)

    async def edit_profile(request: Request) -> Response:
        body = await _body(request)
        profile = await ctx.profiles.edit(request.path_params["name"], body)
        profiles_changed()  # its limits may have room now for a run that waits
        return JSONResponse(await _profile(profile))

    async def set_profile_key(request: Request) -> Response:
        body = await _body(request)
        return JSONResponse(await _profile(await ctx.profiles.set_key(request.path_params["name"], body)))

    async def show_profile(request: Request) -> Response:
        name = validate_profile_name(request.path_params["name"])
        return JSONResponse(await _profile(await ctx.profiles.get(name)))

    async def remove_profile(request: Request) -> Response:
        name = validate_profile_name(request.path_params["name"])
        await ctx.profiles.remove(name)
        profiles_changed()
        return JSONResponse({"removed": name})

    async def enable_profile(request: Request) -> Response:
        await _fields(request)
        name = validate_profile_name(request.path_params["name"])
        profile = await ctx.profiles.set_enabled(name, True)
        profiles_changed()
        return JSONResponse(await _profile(profile))

    async def disable_profile(request: Request) -> Response:
        await _fields(request)
        name = validate_profile_name(request.path_params["name"])
        profile = await ctx.profiles.set_enabled(name, False)
        profiles_changed()
        return JSONResponse(await _profile(profile))

    async def reset_circuit(request: Request) -> Response:
        await _fields(request)
        profile = await ctx.profiles.reset_circuit(validate_profile_name(request.path_params["name"]))
        profiles_changed()
        return JSONResponse({"profile": profile.name, "circuit": circuit_json(ctx.heartbeat.circuit(profile.name))})

    async def profile_env(request: Request) -> Response:
        name = validate_profile_name(request.path_params["name"])
        return JSONResponse(await ctx.profiles.environment(name))

    async def usage(request: Request) -> Response:
        return JSONResponse([usage_json(row) for row in await ctx.profiles.usage()])

    async def switch_profile(request: Request) -> Response:
        await _fields(request)
        profile = await ctx.profiles.pin(validate_profile_name(request.path_params["name"]))
        return JSONResponse({"backend": profile.backend, "active": profile.name, "pinned": True})

    async def auto_backend(request: Request) -> Response:
        await _fields(request)
        backend = request.path_params["backend"]
        active = await ctx.profiles.auto(backend)
        return JSONResponse({"backend": backend, "active": active, "pinned": False})

    async def events(request: Request) -> Response:
        q = request.query_params
        after = _int_param(request, "after", -1, -1, MAX_ID)
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        follow = q.get("follow") in ("1", "true", "yes")
        first = await (ctx.events.latest(limit) if after < 0 else ctx.events.after(after, limit))
        if not follow:
            return JSONResponse([e.to_json() for e in first])
        return StreamingResponse(_follow_events(ctx, first), media_type="application/x-ndjson")

    def _hook(hook: Hook) -> dict[str, Any]:
        return hook_json(hook, *ctx.hooks.status(hook.name))

    async def list_hooks(request: Request) -> Response:
        return JSONResponse([_hook(h) for h in await ctx.hooks.list()])

    async def add_hook(request: Request) -> Response:
        return JSONResponse(_hook(await ctx.hooks.add(await _body(request))), status_code=201)

    async def remove_hook(request: Request) -> Response:
        name = validate_hook_name(request.path_params["name"])
        await ctx.hooks.remove(name)
        return JSONResponse({"removed": name})

    async def test_hook(request: Request) -> Response:
        await _fields(request)
        name = validate_hook_name(request.path_params["name"])
        delivery = await ctx.hooks.test(name)
        return JSONResponse({"hook": name, **delivery.to_json()})

    async def doctor_report(request: Request) -> Response:
        user_path = checked_user_path(request.query_params.get("path"))
        doctor = DoctorService(ctx.paths, ctx.loops, ctx.profiles, store_problem=ctx.store_problem)
        return JSONResponse((await doctor.report(user_path)).to_json())

    # -- the gateway's management side (its own traffic is on its TCP listener: fleetd/gateway/app.py) --

    def _gateway() -> GatewayService:
        if ctx.gateway is None:
            raise NotFound("this daemon has no gateway")
        return ctx.gateway

    async def gateway_status(request: Request) -> Response:
        return JSONResponse(_gateway().status())

    async def gateway_enable(request: Request) -> Response:
        return JSONResponse(await _gateway().enable(await _body(request)))

    async def gateway_disable(request: Request) -> Response:
        await _fields(request)
        return JSONResponse(await _gateway().disable())

    async def list_routes(request: Request) -> Response:
        from fleetd.gateway.views import route_json

        return JSONResponse([route_json(r) for r in _gateway().routes_now()])

    async def add_route(request: Request) -> Response:
        from fleetd.gateway.views import route_json

        route, warnings = await _gateway().add_route(await _body(request))
        return JSONResponse({**route_json(route), "warnings": warnings}, status_code=201)

    async def show_route(request: Request) -> Response:
        from fleetd.gateway.views import route_json

        return JSONResponse(route_json(_gateway().get_route(request.path_params["name"])))

    async def remove_route(request: Request) -> Response:
        name = request.path_params["name"]
        await _gateway().remove_route(name)
        return JSONResponse({"removed": name})

    async def list_keys(request: Request) -> Response:
        from fleetd.gateway.views import key_json

        gateway = _gateway()
        # To the billionth of a dollar, as caps are judged (a sum of costs read 0.007533000000000001).
        return JSONResponse([key_json(k, spent=round(await gateway.spent(k), 9)) for k in gateway.keys_now()])

    async def add_key(request: Request) -> Response:
        from fleetd.gateway.views import key_json

        key, plain = await _gateway().add_key(await _body(request))
        return JSONResponse(key_json(key, plain), status_code=201)

    async def remove_key(request: Request) -> Response:
        name = request.path_params["name"]
        await _gateway().remove_key(name)
        return JSONResponse({"removed": name})

    async def gateway_calls(request: Request) -> Response:
        from fleetd.gateway.views import call_json

        q = request.query_params
        since = _since(q["since"], ctx.clock()) if q.get("since") else None
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        route = q.get("route")
        calls = await _gateway().calls(route=route, since=since, limit=limit)
        if route is not None and not calls and not await _gateway().route_known(route):
            raise NotFound(f"no route named {route!r}, and no calls of one on record")  # a typo's empty answer
        return JSONResponse([call_json(c) for c in calls])

    async def shutdown(request: Request) -> Response:
        await _fields(request)
        ctx.request_stop()
        return JSONResponse({"stopping": True, "pid": os.getpid()}, status_code=202)

    routes = [
        Route("/v1/health", health),
        Route("/v1/loops", list_loops, methods=["GET"]),
        Route("/v1/loops", add_loop, methods=["POST"]),
        Route("/v1/loops/{name}", show_loop, methods=["GET"]),
        Route("/v1/loops/{name}", edit_loop, methods=["PATCH"]),
        Route("/v1/loops/{name}", remove_loop, methods=["DELETE"]),
        Route("/v1/loops/{name}/pause", pause_loop, methods=["POST"]),
        Route("/v1/loops/{name}/resume", resume_loop, methods=["POST"]),
        Route("/v1/loops/{name}/run", run_loop, methods=["POST"]),
        Route("/v1/loops/{name}/stop", stop_loop, methods=["POST"]),
        Route("/v1/runs", list_runs),
        Route("/v1/runs/prune", prune_runs, methods=["POST"]),
        Route("/v1/runs/{run_id}", show_run),
        Route("/v1/runs/{run_id}/log", run_log),
        Route("/v1/runs/{run_id}/stop", stop_run, methods=["POST"]),
        Route("/v1/runs/{run_id}/result", run_result),
        Route("/v1/stats", stats),
        Route("/v1/profiles", list_profiles, methods=["GET"]),
        Route("/v1/profiles", add_profile, methods=["POST"]),
        Route("/v1/profiles/{name}", show_profile, methods=["GET"]),
        Route("/v1/profiles/{name}", edit_profile, methods=["PATCH"]),
        Route("/v1/profiles/{name}", remove_profile, methods=["DELETE"]),
        Route("/v1/profiles/{name}/key", set_profile_key, methods=["PUT"]),
        Route("/v1/profiles/{name}/env", profile_env, methods=["GET"]),
        Route("/v1/profiles/{name}/switch", switch_profile, methods=["POST"]),
        Route("/v1/profiles/{name}/enable", enable_profile, methods=["POST"]),
        Route("/v1/profiles/{name}/disable", disable_profile, methods=["POST"]),
        Route("/v1/profiles/{name}/reset-circuit", reset_circuit, methods=["POST"]),
        Route("/v1/backends/{backend}/auto", auto_backend, methods=["POST"]),
        Route("/v1/usage", usage),
        Route("/v1/events", events),
        Route("/v1/hooks", list_hooks, methods=["GET"]),
        Route("/v1/hooks", add_hook, methods=["POST"]),
        Route("/v1/hooks/{name}", remove_hook, methods=["DELETE"]),
        Route("/v1/hooks/{name}/test", test_hook, methods=["POST"]),
        Route("/v1/doctor", doctor_report),
        Route("/v1/gateway", gateway_status, methods=["GET"]),
        Route("/v1/gateway/enable", gateway_enable, methods=["POST"]),
        Route("/v1/gateway/disable", gateway_disable, methods=["POST"]),
        Route("/v1/gateway/keys", list_keys, methods=["GET"]),
        Route("/v1/gateway/keys", add_key, methods=["POST"]),
        Route("/v1/gateway/keys/{name}", remove_key, methods=["DELETE"]),
        Route("/v1/gateway/calls", gateway_calls, methods=["GET"]),
        Route("/v1/routes", list_routes, methods=["GET"]),
        Route("/v1/routes", add_route, methods=["POST"]),
        Route("/v1/routes/{name}", show_route, methods=["GET"]),
        Route("/v1/routes/{name}", remove_route, methods=["DELETE"]),
        Route("/v1/shutdown", shutdown, methods=["POST"]),
    ]

    async def on_fleetd_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FleetdError)
        return error_response(exc.status, exc.code, exc.message)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")

    app = Starlette(
        routes=routes,
        middleware=[Middleware(_InternalErrors)],
        exception_handlers={FleetdError: on_fleetd_error, HTTPException: on_http_error},
    )
    # `/v1/loops/` (an empty name) would be a 307 with no body, which no client here follows and the
    # CLI would read as an empty answer: a JSON 404 instead.
    app.router.redirect_slashes = False
    return app


class _InternalErrors:
    """A bug's last stop: one JSON 500 and one traceback in the log. (Starlette's own handler for
    `Exception` re-raises after answering, so uvicorn logged every traceback a second time.) Bad
    input never gets here: it is a FleetdError, answered 4xx without a log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if not started:  # a stream cut short mid-answer can only be closed
                response = error_response(500, "internal", f"internal error ({type(exc).__name__}); see the daemon log")
                await response(scope, receive, send)


def _stream_log(ctx: DaemonContext, run: Run, follow: bool) -> AsyncIterator[bytes]:
    """The run's output. A finished run whose log file is gone is a 404 here, before any byte is sent,
    rather than an empty 200 that looks like a run that printed nothing."""
    live = ctx.executor.live_logs.get(run.id)
    if live is not None:
        return _follow_live(ctx, run.id, live, follow)
    if follow and ctx.executor.in_flight(run.id):
        return _follow_pending(ctx, run)
    if run.log_path is None:
        return _empty()  # skipped: it never had output
    path = run.log_path
    try:
        f = open(path, "rb")  # noqa: SIM115 - handed to the generator, which closes it
    except FileNotFoundError:
        if run.status not in FINAL_STATUSES:
            return _empty()  # starting: its writer has not made the file yet
        raise NotFound(f"run {run.id}'s log file {path} is missing (deleted?): its output is lost") from None
    except OSError as e:
        raise NotFound(f"run {run.id}'s log file {path} cannot be read: {e.strerror or e}") from None
    return _read_file(f)


def _kill_flag(body: dict[str, Any]) -> bool:
    kill = body.get("kill", False)
    if not isinstance(kill, bool):
        raise InvalidArgument(f"invalid kill {shown(kill)}: true or false")
    return kill


def _ended(run: Run) -> str:
    """`run 7 already ended: failed (exit code 3)`: a stop that came after the run's own end."""
    why = f" ({run.error})" if run.error else ""
    return f"run {run.id} already ended: {run.status}{why}"


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise InvalidArgument(f"invalid {name}={shown(value)} (1 or 0)")


async def _readable_log(ctx: DaemonContext, run: Run, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The log through each attempt's backend renderer (daemon/logview.py)."""
    known: dict[int, str] = {}

    async def backend_of(number: int) -> str | None:
        if number not in known:  # a live run's new attempt: read them again
            known.update({a.number: a.backend for a in await ctx.attempts.for_run(run.id)})
        return known.get(number)

    scrubber = Scrubber(await ctx.profiles.known_secrets())
    return readable(stream, backend=run.backend, backend_of=backend_of, scrubber=scrubber)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


async def _read_file(f: BinaryIO) -> AsyncIterator[bytes]:
    with f:
        while chunk := f.read(64 * 1024):
            yield chunk


async def _follow_live(ctx: DaemonContext, run_id: int, live: RunLog, follow: bool) -> AsyncIterator[bytes]:
    pos, mid_line = 0, False
    while True:
        data, pos = live.read_from(pos, mid_line)
        if data:
            mid_line = not data.endswith(b"\n")
            yield data
            continue
        if live.closed or not follow:
            break
        await live.wait_for_more(pos, timeout=1.0)
        await asyncio.sleep(0)
    if follow:
        # The stream ends once the run's end is written, so a follower that asks for the run next
        # (`runs logs --follow` does, for its footer and exit status) reads its final status.
        await ctx.executor.wait_recorded(run_id, FOLLOW_RECORD_WAIT)


async def _follow_pending(ctx: DaemonContext, run: Run) -> AsyncIterator[bytes]:
    """A run in flight without a live log: just fired (its task has not opened the log yet), or just
    ended (its end is being written). Follow the log once it opens, else print the file; either way
    end once the run's end is written."""
    deadline = asyncio.get_running_loop().time() + FOLLOW_START_WAIT
    while ctx.executor.in_flight(run.id) and asyncio.get_running_loop().time() < deadline:
        live = ctx.executor.live_logs.get(run.id)
        if live is not None:
            async for chunk in _follow_live(ctx, run.id, live, True):
                yield chunk
            return
        await asyncio.sleep(0.02)
    if run.log_path is not None:
        with contextlib.suppress(OSError):
            async for chunk in _read_file(open(run.log_path, "rb")):  # noqa: SIM115 - closed by _read_file
                yield chunk
    await ctx.executor.wait_recorded(run.id, FOLLOW_RECORD_WAIT)


async def _follow_events(ctx: DaemonContext, first: list) -> AsyncIterator[bytes]:  # type: ignore[type-arg]
    last = 0
    for event in first:
        last = event.id
        yield (json.dumps(event.to_json()) + "\n").encode()
    if not first:
        latest = await ctx.events.latest(1)
        last = latest[-1].id if latest else 0
    seen = -1  # the first pass reads at once: what was written since `first` was read is not left to a later one
    while True:
        await ctx.events.wait_past(seen, timeout=15)
        if ctx.events.closed:
            return  # the daemon is stopping: the client reads a complete answer and says so
        seen = ctx.events.written  # before the read: an event written during it wakes the next wait
        batch = await ctx.events.after(last)
        for event in batch:
            last = event.id
            yield (json.dumps(event.to_json()) + "\n").encode()
        if not batch:
            yield b"\n"  # keeps a dead client from going unnoticed
