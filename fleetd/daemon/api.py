"""The HTTP/JSON API served on the Unix socket. Handlers translate; the rules live in loops/."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fleetd import __version__
from fleetd.daemon.views import loop_json, profile_json, run_json, stats_json, usage_json
from fleetd.errors import FleetdError, InvalidArgument, NotFound
from fleetd.heartbeat.service import Heartbeat
from fleetd.loops.executor import Executor
from fleetd.loops.model import validate_loop_input, validate_name
from fleetd.loops.scheduler import Scheduler
from fleetd.paths import Paths
from fleetd.profiles.model import validate_profile_name
from fleetd.profiles.service import ProfileService
from fleetd.routing.policy import check_pool
from fleetd.store.attempts import AttemptStore
from fleetd.store.events import EventLog
from fleetd.store.loops import LoopStore
from fleetd.store.runs import STATUSES, RunStore
from fleetd.store.stats import DEFAULT_SINCE, StatsStore, parse_by
from fleetd.timefmt import DurationError, parse_duration, to_iso

log = logging.getLogger("fleetd.api")
MAX_LIMIT = 10_000


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
    executor: Executor
    clock: Callable[[], datetime]
    started_at: datetime
    default_tz: str
    request_stop: Callable[[], None]
    phase: str = "ok"  # "recovering" while a crash's leftovers are cleaned up at start


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidArgument("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


def create_app(ctx: DaemonContext) -> Starlette:
    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": ctx.phase,
                "version": __version__,
                "pid": os.getpid(),
                "home": str(ctx.paths.home),
                "socket": str(ctx.paths.socket),
                "started_at": to_iso(ctx.started_at),
                "uptime_s": round((ctx.clock() - ctx.started_at).total_seconds(), 3),
                "loops": len(await ctx.loops.list()),
                "running_runs": len(ctx.executor.active),
            }
        )

    async def list_loops(request: Request) -> Response:
        loops = await ctx.loops.list()
        last = await ctx.runs.last_for_loops()
        return JSONResponse([loop_json(lp, last.get(lp.name), _running_id(lp.name)) for lp in loops])

    def _running_id(name: str) -> int | None:
        slot = ctx.executor.active.get(name)
        return slot.run_id if slot else None

    async def _loop_view(name: str) -> JSONResponse:
        loop = await ctx.loops.get(validate_name(name))
        last = await ctx.runs.list(loop=name, limit=1)
        return JSONResponse(loop_json(loop, last[0] if last else None, _running_id(name)))

    async def add_loop(request: Request) -> Response:
        loop = validate_loop_input(await _body(request), ctx.default_tz)
        check_pool(loop.profiles, await ctx.profiles.store.list(), loop.backend)
        saved = await ctx.scheduler.add(loop)
        return JSONResponse(loop_json(saved, None, _running_id(saved.name)), status_code=201)

    async def show_loop(request: Request) -> Response:
        return await _loop_view(request.path_params["name"])

    async def remove_loop(request: Request) -> Response:
        name = validate_name(request.path_params["name"])
        await ctx.scheduler.remove(name)
        return JSONResponse({"removed": name})

    async def pause_loop(request: Request) -> Response:
        await ctx.scheduler.pause(validate_name(request.path_params["name"]))
        return await _loop_view(request.path_params["name"])

    async def resume_loop(request: Request) -> Response:
        await ctx.scheduler.resume(validate_name(request.path_params["name"]))
        return await _loop_view(request.path_params["name"])

    async def run_loop(request: Request) -> Response:
        run = await ctx.scheduler.run_now(validate_name(request.path_params["name"]))
        return JSONResponse(run_json(run), status_code=201)

    async def list_runs(request: Request) -> Response:
        q = request.query_params
        status = q.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidArgument(f"invalid status {status!r} (one of: {', '.join(STATUSES)})")
        since = None
        if q.get("since"):
            try:
                since = ctx.clock() - timedelta(seconds=parse_duration(q["since"]))
            except DurationError as e:
                raise InvalidArgument(f"invalid --since: {e}") from None
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            raise InvalidArgument(f"invalid --limit {q.get('limit')!r}: not a number") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument(f"--limit must be between 1 and {MAX_LIMIT}")
        runs = await ctx.runs.list(loop=q.get("loop"), status=status, since=since, limit=limit)
        return JSONResponse([run_json(r) for r in runs])

    def _run_id(request: Request) -> int:
        raw = request.path_params["run_id"]
        try:
            return int(raw)
        except ValueError:
            raise InvalidArgument(f"invalid run id {raw!r}: run ids are numbers") from None

    async def show_run(request: Request) -> Response:
        run = await ctx.runs.get(_run_id(request))
        return JSONResponse(run_json(run, await ctx.attempts.for_run(run.id)))

    async def run_log(request: Request) -> Response:
        run = await ctx.runs.get(_run_id(request))
        follow = request.query_params.get("follow") in ("1", "true", "yes")
        return StreamingResponse(_stream_log(ctx, run.id, run.log_path, follow), media_type="text/plain")

    async def stats(request: Request) -> Response:
        q = request.query_params
        text = q.get("since", DEFAULT_SINCE)
        now = ctx.clock()
        try:
            since = now - timedelta(seconds=parse_duration(text))
        except DurationError as e:
            raise InvalidArgument(f"invalid --since: {e}") from None
        except OverflowError:
            raise InvalidArgument(f"invalid --since {text!r}: too far back") from None
        loop = q.get("loop")
        if loop is not None:
            validate_name(loop)
        figures = await ctx.stats.stats(since=since, by=parse_by(q.get("by")), loop=loop)
        return JSONResponse(stats_json(figures, now))

    async def list_profiles(request: Request) -> Response:
        return JSONResponse([profile_json(p) for p in await ctx.profiles.store.list()])

    async def add_profile(request: Request) -> Response:
        profile = await ctx.profiles.add(await _body(request))
        return JSONResponse(profile_json(profile), status_code=201)

    async def show_profile(request: Request) -> Response:
        name = validate_profile_name(request.path_params["name"])
        return JSONResponse(profile_json(await ctx.profiles.store.get(name)))

    async def remove_profile(request: Request) -> Response:
        name = validate_profile_name(request.path_params["name"])
        await ctx.profiles.remove(name)
        return JSONResponse({"removed": name})

    async def enable_profile(request: Request) -> Response:
        name = validate_profile_name(request.path_params["name"])
        return JSONResponse(profile_json(await ctx.profiles.set_enabled(name, True)))

    async def disable_profile(request: Request) -> Response:
        name = validate_profile_name(request.path_params["name"])
        return JSONResponse(profile_json(await ctx.profiles.set_enabled(name, False)))

    async def profile_env(request: Request) -> Response:
        name = validate_profile_name(request.path_params["name"])
        return JSONResponse(await ctx.profiles.environment(name))

    async def usage(request: Request) -> Response:
        profiles = await ctx.profiles.store.list()
        return JSONResponse([usage_json(row) for row in ctx.heartbeat.snapshot(profiles)])

    async def switch_profile(request: Request) -> Response:
        profile = await ctx.profiles.store.get(validate_profile_name(request.path_params["name"]))
        await ctx.heartbeat.pin(profile)
        return JSONResponse({"backend": profile.backend, "active": profile.name, "pinned": True})

    async def auto_backend(request: Request) -> Response:
        backend = request.path_params["backend"]
        if not any(p.backend == backend for p in await ctx.profiles.store.list()):
            raise NotFound(f"no profile for backend {backend!r}")
        await ctx.heartbeat.unpin(backend)
        active, _ = ctx.heartbeat.active.get(backend, (None, False))
        return JSONResponse({"backend": backend, "active": active, "pinned": False})

    async def events(request: Request) -> Response:
        q = request.query_params
        try:
            after = int(q.get("after", "-1"))
            limit = int(q.get("limit", "50"))
        except ValueError:
            raise InvalidArgument("after and limit must be numbers") from None
        follow = q.get("follow") in ("1", "true", "yes")
        first = await (ctx.events.latest(limit) if after < 0 else ctx.events.after(after, limit))
        if not follow:
            return JSONResponse([e.to_json() for e in first])
        return StreamingResponse(_follow_events(ctx, first), media_type="application/x-ndjson")

    async def shutdown(request: Request) -> Response:
        ctx.request_stop()
        return JSONResponse({"stopping": True, "pid": os.getpid()}, status_code=202)

    routes = [
        Route("/v1/health", health),
        Route("/v1/loops", list_loops, methods=["GET"]),
        Route("/v1/loops", add_loop, methods=["POST"]),
        Route("/v1/loops/{name}", show_loop, methods=["GET"]),
        Route("/v1/loops/{name}", remove_loop, methods=["DELETE"]),
        Route("/v1/loops/{name}/pause", pause_loop, methods=["POST"]),
        Route("/v1/loops/{name}/resume", resume_loop, methods=["POST"]),
        Route("/v1/loops/{name}/run", run_loop, methods=["POST"]),
        Route("/v1/runs", list_runs),
        Route("/v1/runs/{run_id}", show_run),
        Route("/v1/runs/{run_id}/log", run_log),
        Route("/v1/stats", stats),
        Route("/v1/profiles", list_profiles, methods=["GET"]),
        Route("/v1/profiles", add_profile, methods=["POST"]),
        Route("/v1/profiles/{name}", show_profile, methods=["GET"]),
        Route("/v1/profiles/{name}", remove_profile, methods=["DELETE"]),
        Route("/v1/profiles/{name}/env", profile_env, methods=["GET"]),
        Route("/v1/profiles/{name}/switch", switch_profile, methods=["POST"]),
        Route("/v1/profiles/{name}/enable", enable_profile, methods=["POST"]),
        Route("/v1/profiles/{name}/disable", disable_profile, methods=["POST"]),
        Route("/v1/backends/{backend}/auto", auto_backend, methods=["POST"]),
        Route("/v1/usage", usage),
        Route("/v1/events", events),
        Route("/v1/shutdown", shutdown, methods=["POST"]),
    ]

    async def on_fleetd_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FleetdError)
        return error_response(exc.status, exc.code, exc.message)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the daemon log")

    return Starlette(
        routes=routes,
        exception_handlers={
            FleetdError: on_fleetd_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )


async def _stream_log(ctx: DaemonContext, run_id: int, path: str | None, follow: bool) -> AsyncIterator[bytes]:
    live = ctx.executor.live_logs.get(run_id)
    if live is None:
        # Finished (or from an earlier daemon): the file is complete.
        if path is None or not os.path.exists(path):
            return
        with open(path, "rb") as f:
            while chunk := f.read(64 * 1024):
                yield chunk
        return
    pos = 0
    while True:
        data, pos = live.read_from(pos)
        if data:
            yield data
            continue
        if live.closed or not follow:
            return
        await live.wait_for_more(pos, timeout=1.0)
        await asyncio.sleep(0)


async def _follow_events(ctx: DaemonContext, first: list) -> AsyncIterator[bytes]:  # type: ignore[type-arg]
    last = 0
    for event in first:
        last = event.id
        yield (json.dumps(event.to_json()) + "\n").encode()
    if not first:
        latest = await ctx.events.latest(1)
        last = latest[-1].id if latest else 0
    while True:
        await ctx.events.wait(timeout=15)
        batch = await ctx.events.after(last)
        for event in batch:
            last = event.id
            yield (json.dumps(event.to_json()) + "\n").encode()
        if not batch:
            yield b"\n"  # keeps a dead client from going unnoticed
