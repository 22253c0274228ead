"""The gateway's driver of the router: one client request is one task over its route's chain.

For each `Try` the request goes to the candidate profile's provider (its adapter says where and how to
authenticate), and the answer becomes the router's `AttemptResult`: the router alone decides what comes
next (retry after a short backoff, the next profile, stop). Rate limits, breakers and usage go through
the same profile service the executor uses, so `fleetd usage` and the profiles' windows see gateway
calls like any attempt.

Invariant: once a byte of an answer has gone to the client, the call is committed to that upstream; a
failure after it ends the stream with the protocol's error event (never a second model's output).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import aiohttp
import yarl
from aiohttp.helpers import get_env_proxy_for_url
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from fleetd.backends.registry import get_adapter
from fleetd.gateway.holds import Holds
from fleetd.gateway.journal import Journal, attempt_key
from fleetd.gateway.protocols import GatewayError, WireProtocol, forwarded_headers
from fleetd.gateway.recorder import Attempt, Finished, Recorder
from fleetd.gateway.sse import EventSplitter
from fleetd.gateway.upstream import failure_class, reset_from_headers
from fleetd.loops.scrub import REDACTED, Scrubber
from fleetd.profiles.service import ProfileService
from fleetd.records.gateway import KEY_RE, ClientKey, GatewayCall, Route
from fleetd.records.loop import ChainStep
from fleetd.records.profile import TIERS, Profile
from fleetd.records.result import ParsedOutput, TokenUsage
from fleetd.routing.router import AttemptResult, Backoff, Finish, Observation, Policy, Router, Try, World
from fleetd.timefmt import local_text

log = logging.getLogger("fleetd.gateway")
LOG_BODY_CAP = 64 * 1024  # per body, for a route with --log-bodies
CLIENT_GONE = "the client went away before an answer: no other upstream was tried"
CLIENT_LEFT_BEFORE = "the client went away before the answer was sent"
ERROR_BODY_CAP = 1024 * 1024  # of an upstream's error answer
PROFILE_CONCURRENCY = 64  # calls in flight per profile; more wait (within the route's timeout)
WRITE_TIMEOUT_S = 30.0  # a client that reads nothing for this long loses its stream (and frees the upstream)
CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30.0  # an idle upstream connection is kept this long for the next call
UPSTREAM_ERRORS = (aiohttp.ClientError, OSError)  # (a timeout is a TimeoutError, which is an OSError)
# Short: a client is waiting. Full jitter up to base * 2^(n-1), capped, and never past the route's timeout.
RETRIES, BACKOFF_BASE_S, BACKOFF_CAP_S = 1, 0.25, 2.0
PASSED_BACK = ("content-type", "request-id", "x-request-id", "retry-after")
# A request's first look at the world may be this old: reading it takes the heartbeat's lock, which each
# recorded success holds for milliseconds, and at hundreds of calls a second that wait was most of the
# gateway's added latency. What must be fresh is: every failure this gateway saw (it drops the cached
# world), and a half-open circuit's one probe (a world with a circuit not closed is never cached).
WORLD_TTL_S = 0.25
TOO_DEEP = "the request body is nested too deeply"


def answer_the_stop() -> None:
    """The stop's grace ran out and uvicorn cancelled this call's task: it goes on only to tell its client and record
    the call, so the cancellation is taken back (uncancelled) rather than raised into uvicorn's traceback."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


@dataclass
class Request:
    """One client request, authenticated and routed."""

    protocol: WireProtocol
    route: Route
    key: ClientKey
    body: dict[str, Any]
    raw: bytes
    headers: Mapping[str, str]  # the client's, lower-case
    path: str  # below the upstream's base URL
    query: str = ""
    counted: bool = True  # a model call (count_tokens is not: no usage, no call row)
    hold: int | None = None  # its hold on the key's daily cost cap (holds.py), released when it ends
    gone: Callable[[], Awaitable[bool]] | None = None  # whether its client has hung up (app.py's `client_gone`)


@dataclass
class Failure:
    """An attempt that did not succeed: the router's view of it, and the upstream's own answer if any."""

    result: AttemptResult
    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    over_cost: bool = False  # not called: its profile is over its daily cost


class Proxy:
    def __init__(
        self,
        profiles: ProfileService,
        record_calls: Callable[[list[GatewayCall]], Awaitable[None]],
        *,
        clock: Callable[[], datetime],
        journal: Journal | None = None,
    ) -> None:
        self.profiles = profiles
        self.clock = clock
        self.recorder = Recorder(self._attempts_finished, record_calls, self._written, journal, self._refused)
        self.journal = self.recorder.journal
        self.holds = Holds()
        self.stopping = False  # the daemon stops: what is cancelled from now is the stop's grace running out
        self._rng = (
            random.Random()
        )  # one for every call's backoff jitter: seeding one per call costs more than the rest
        self._session: aiohttp.ClientSession | None = None  # made in the running loop, on the first call
        self._proxies: dict[yarl.URL, tuple[yarl.URL | None, aiohttp.BasicAuth | None]] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._worlds: dict[tuple[str, ...], tuple[float, World, dict[str, Profile]]] = {}

    async def close(self) -> None:
        await self.recorder.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def session(self) -> aiohttp.ClientSession:
        """One session, one keep-alive pool for every upstream. aiohttp, not httpx: its C parser and its
        pool's bookkeeping cost a fraction of httpx's per request (httpcore checks every pooled
        connection's socket on each request), and this is on every call's path, twice under load.
        No limit of its own: calls in flight are bounded per profile (PROFILE_CONCURRENCY). Bytes pass as
        they come (no decompression); proxies from the environment apply (`_env_proxy`)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  cookie_jar=aiohttp.DummyCookieJar())  # fmt: skip
        return self._session

    async def _env_proxy(self, url: str) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
        """The proxy the environment (HTTPS_PROXY, NO_PROXY, …) names for `url`'s origin, looked up once per
        origin: aiohttp's `trust_env` looks it up in a thread on every request, and that thread hop
        (the GIL handed over and back) was most of a call's added latency."""
        origin = yarl.URL(url).origin()
        if origin not in self._proxies:
            try:
                self._proxies[origin] = await asyncio.to_thread(get_env_proxy_for_url, origin)
            except LookupError:
                self._proxies[origin] = (None, None)
        return self._proxies[origin]

    async def _attempts_finished(self, attempts: list[Attempt]) -> None:
        # Each call's use stops being counted apart as its record joins the windows (`_unrecorded`), or its write fails
        # (then `_refused` counts it apart again, till the batch is written again).
        settles = [functools.partial(self.profiles.recorded_use, a.profile) for a in attempts]
        await self.profiles.attempts_finished([(a.profile, a.parsed, a.finished_at, a.cost_usd) for a in attempts],
                                              settles, keys=[a.key for a in attempts])  # fmt: skip

    def _refused(self, attempts: list[Attempt]) -> None:
        for a in attempts:
            self.profiles.unsettled(a.profile, a.parsed.usage.total, a.cost_usd or 0.0)

    def _written(self, attempts: list[Attempt]) -> None:
        written_at = time.monotonic()
        for attempt in attempts:  # in the call log now: its cost is no longer counted apart
            self.profiles.recorded_cost(attempt.profile, written_at)

    def _semaphore(self, profile: str) -> asyncio.Semaphore:
        if profile not in self._semaphores:
            self._semaphores[profile] = asyncio.Semaphore(PROFILE_CONCURRENCY)
        return self._semaphores[profile]

    async def forward(self, req: Request) -> Response | StreamAnswer:
        call = GatewayCall(self.clock(), req.key.name, req.route.name, req.protocol.name, bool(req.body.get("stream")),
                           id=self.journal.new_id() if req.counted else None)  # fmt: skip
        try:
            return await self._forward(req, call)
        except asyncio.CancelledError:  # cut by a stop: left under way in the journal, `interrupted` at the next start
            raise
        except BaseException:  # no row for the call log (a client's error found on the way)
            self.journal.dropped(call)
            raise

    async def _forward(self, req: Request, call: GatewayCall) -> Response | StreamAnswer:
        started = time.monotonic()
        whole_s = call_timeout_s(req.route)  # each try gets the route's --timeout of it (`until` below)
        deadline = started + whole_s
        scrubber = Scrubber(await self.profiles.known_secrets())
        if req.route.log_bodies:  # a client may paste a key it was given into a question: the log gets it redacted
            call.request_body = _capped(_scrub(scrubber, req.raw))
        body, strip_usage = req.protocol.prepare(req.body)
        policy = Policy(chain=req.route.chain, tiers=frozenset(TIERS), retries=RETRIES, backoff_base=BACKOFF_BASE_S,
                        backoff_cap=BACKOFF_CAP_S, max_attempts=3 * len(req.route.chain) + 2)  # fmt: skip
        router = Router(policy, rng=self._rng)
        steps = list(req.route.chain)
        world, profiles = await self._first_world(steps)
        flow = router.route(world)
        decision = next(flow)
        last: Failure | None = None
        answered: Failure | None = None
        while True:
            left = deadline - time.monotonic()
            if isinstance(decision, Finish):
                error = None
                if (decision.over_cost and last is None) or (last is not None and last.over_cost):
                    error = GatewayError("rate_limited", f"route {req.route.name}: {decision.reason}", retry_after=3600)
                elif last is None:  # nothing could be tried (disabled, parked, no key): not an upstream's failure
                    back = decision.back_at  # each comes back by itself (an open circuit): the client is told when
                    retry_after = max(1.0, (back - world.now).total_seconds()) if back is not None else None
                    error = GatewayError("unavailable", f"route {req.route.name}: {decision.reason}",
                                         retry_after=retry_after)  # fmt: skip
                return await self._refuse(req, call, started, last, decision.reason or "failed", scrubber, error)
            if left <= 0:
                error = GatewayError("timeout", f"route {req.route.name}: no answer within {whole_s:g}s "
                                     f"({req.route.timeout_s:g}s for each upstream's)")  # fmt: skip
                return await self._refuse(req, call, started, last, error.message, scrubber, error)
            if isinstance(decision, Try):
                if last is not None and req.gone is not None and await req.gone():
                    # Nobody would read the answer: another upstream (a paid one, after a fallback) is not asked.
                    error = GatewayError("unavailable", CLIENT_GONE)
                    return await self._refuse(req, call, started, last, CLIENT_GONE, scrubber, error)
                profile = profiles[decision.candidate.profile]
                model = decision.candidate.model or profile.model or req.route.name
                until = min(deadline, time.monotonic() + req.route.timeout_s)
                answer = await self._try(req, call, profile, model, body, strip_usage, until, started, scrubber)
                if not isinstance(answer, Failure):
                    return answer
                last = answer
                if answer.status is not None:
                    answered = answer  # an upstream's own answer, which a client gets rather than a wait of ours
                world, profiles = await self.profiles.world(steps, direct=True)
                decision = flow.send(Observation(world, answer.result))
            elif isinstance(decision, Backoff):
                await asyncio.sleep(max(0.0, min(decision.seconds, left - 0.05)))
                world, profiles = await self.profiles.world(steps, direct=True)
                decision = flow.send(Observation(world))
            else:  # WaitUntil: a client does not wait for a reset; it is told when, and why
                # Room that calls under way take comes back as one ends: a second, not the bound the world set.
                wait = 1.0 if decision.pending else max(1.0, (decision.until - world.now).total_seconds())
                # Each profile once, in the first words said of it: a provider's own 429, not again as the exhaustion
                # it caused, which the next world passed it over for.
                told: dict[object, str] = {}
                for e in router.trail:
                    if e["kind"] == "skip" or e.get("error_class") == "rate_limited":
                        told.setdefault(e.get("profile") or _told(e), _told(e))
                why = "; ".join(dict.fromkeys(told.values()))
                when = "now: calls under way take it" if decision.pending else f"before {local_text(decision.until)}"
                error = GatewayError("rate_limited", f"route {req.route.name}: no profile has room {when}"
                                     + (f" ({why})" if why else ""), retry_after=wait)  # fmt: skip
                if last and last.status != 429 and answered and (answered.status or 0) >= 500:
                    # A provider's 5xx whose retry only a profile's limit stopped is its answer to pass on (it reached
                    # the client as "no room", 429, as if the provider had rate limited it).
                    return await self._refuse(req, call, started, answered, error.message, scrubber)
                return await self._refuse(req, call, started, last if last and last.status == 429 else None,
                                          error.message, scrubber, error)  # fmt: skip

    def forget_worlds(self) -> None:
        """The next call reads the world again (a profile was changed by hand)."""
        self._worlds.clear()

    async def _first_world(self, steps: list[ChainStep]) -> tuple[World, dict[str, Profile]]:
        key = tuple(s.describe() for s in steps)
        cached = self._worlds.get(key)
        if cached is not None and time.monotonic() - cached[0] < WORLD_TTL_S:
            return replace(cached[1], now=self.clock()), cached[2]
        world, profiles = await self.profiles.world(steps, direct=True)
        if all(view.circuit == "closed" for view in world.profiles.values()):
            self._worlds[key] = (time.monotonic(), world, profiles)
        return world, profiles

    async def _try(
        self, req: Request, call: GatewayCall, profile: Profile, model: str, body: dict[str, Any], strip_usage: bool,
        deadline: float, started: float, scrubber: Scrubber,
    ) -> Response | StreamAnswer | Failure:  # fmt: skip
        adapter = get_adapter(profile.backend)
        base = adapter.gateway_apis(profile).get(req.protocol.name)
        t0 = time.monotonic()
        entry: dict[str, Any] = {"profile": profile.name, "model": model, "status": None, "class": None,
                                 "latency_ms": 0}  # fmt: skip
        call.path.append(entry)
        call.profile, call.model = profile.name, model

        def failed(result: AttemptResult, status: int | None = None, data: bytes = b"", headers: Any = None) -> Failure:
            entry.update(status=status, latency_ms=_ms(time.monotonic() - t0))
            entry["class"] = result.error_class
            passed = {k: v for k, v in (headers or {}).items() if k.lower() in PASSED_BACK}
            return Failure(result, status, data, passed)

        if base is None:
            return failed(AttemptResult("failed", "unavailable", f"{profile.name} does not speak {req.protocol.name}"))
        secret = await self.profiles.current_secret(profile) if profile.has_secret else None
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",  # the bytes go to the client as they come: no decoding here
            **forwarded_headers(req.protocol, req.headers),
            **adapter.gateway_auth(secret),
        }
        url = base.rstrip("/") + req.path + (f"?{req.query}" if req.query else "")
        content = upstream_bytes(req.protocol, body, model)
        semaphore = self._semaphore(profile.name)
        try:
            await asyncio.wait_for(semaphore.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            busy = f"{profile.name}: {PROFILE_CONCURRENCY} calls in flight; none ended in time"
            return failed(AttemptResult("failed", "transient", busy))
        # The world this call was routed by was read before its awaits (or cached): calls that came together all
        # saw room that the first ones to reserve have taken since.
        taken = self.profiles.room_taken(profile)
        if taken is not None:
            semaphore.release()
            why, until = taken
            if until is None:  # its daily cost: out for this call
                return replace(failed(AttemptResult("failed", "unavailable", f"{profile.name}: {why}")), over_cost=True)
            return failed(AttemptResult("failed", "rate_limited", f"{profile.name}: {why}", reset_at=until))
        probe = self.profiles.claim_probe(profile)
        self.profiles.reserve(profile)
        attempt = len(call.path) - 1
        key = attempt_key(call.id, attempt)
        if req.counted:  # under way from here: a kill -9 now leaves it `interrupted`, its request counted
            self.journal.began(call, attempt, profile.name, self.clock())
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                semaphore.release()
                self.profiles.release(profile, probe)

        left = max(0.001, deadline - time.monotonic())
        try:
            # sock_read: the longest wait for the answer's head and then between two of its chunks (the try's own
            # --timeout, less only when the call's time is nearly out). Not asyncio.wait_for around the post: with it
            # a stream that broke after its first byte went to the next profile instead (its request in another task).
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(left, CONNECT_TIMEOUT_S), sock_read=left)
            proxy, proxy_auth = await self._env_proxy(url)
            response = await self.session().post(url, data=content, headers=headers, timeout=timeout, proxy=proxy,
                                                 proxy_auth=proxy_auth)  # fmt: skip
        except TimeoutError:
            release()
            return await self._failed_attempt(profile, failed, "transient", "no answer in time", key)
        except UPSTREAM_ERRORS as e:
            release()
            why = scrubber.text(f"cannot reach {profile.name}'s provider: {type(e).__name__}") or ""
            return await self._failed_attempt(profile, failed, "transient", why, key)
        except BaseException:  # cancelled: what it reserved is given back (a leak would hold its limit's room)
            release()
            raise
        status = response.status
        if not 200 <= status < 300:
            try:
                data = await _read_capped(response, ERROR_BODY_CAP)
            except UPSTREAM_ERRORS:
                data = b""
            finally:
                _done(response)
                release()
            data = _scrub(scrubber, data)
            error_class, message = failure_class(status, data)
            reset = reset_from_headers(response.headers, self.clock()) if error_class == "rate_limited" else None
            parsed = ParsedOutput("failed", error_class, reset, message=_without_gateway_keys(scrubber.text(message)))
            self._worlds.clear()
            await self.profiles.attempt_finished(profile, parsed, self.clock(), None, key=key)
            result = AttemptResult("failed", error_class, parsed.message or "", reset_at=reset)
            return failed(result, status, data, response.headers)
        entry.update(status=status, latency_ms=_ms(time.monotonic() - t0))
        call.status = status
        if "text/event-stream" in response.headers.get("content-type", ""):
            chunks = response.content.iter_any()
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                first = b""
            except UPSTREAM_ERRORS as e:  # nothing has reached the client yet: the call can still fall over
                _done(response)
                release()
                return await self._failed_attempt(profile, failed, "transient", f"stream broke: {type(e).__name__}",
                                                  key)  # fmt: skip
            except BaseException:
                _done(response)
                release()
                raise
            call.streamed = True
            return StreamAnswer(self, req, call, profile, response, chunks, first, release, started, strip_usage,
                                scrubber.fresh())  # fmt: skip
        try:
            data = await response.read()
        except UPSTREAM_ERRORS as e:
            release()
            return await self._failed_attempt(profile, failed, "transient", f"answer broke: {type(e).__name__}",
                                              key)  # fmt: skip
        except BaseException:  # cancelled (a stop, the client gone): what it reserved is given back
            release()
            raise
        finally:
            _done(response)
        # A provider, or its model, can quote the key it was sent: neither the client nor the call log gets it.
        data = _scrub(scrubber, data)
        usage = None
        if req.counted:
            try:
                usage = req.protocol.usage_json(json.loads(data))
            except ValueError:
                usage = None
            # Counted apart from the moment it is no longer under way, not once its answer has gone out (`finished`
            # runs after the body is sent): a call that came meanwhile found neither, and passed a `1d=1req` limit.
            self._unrecorded(profile, usage or TokenUsage())
        release()
        call.streamed = False
        if req.route.log_bodies:
            call.response_body = _capped(data)
        passed = {k: v for k, v in response.headers.items() if k.lower() in PASSED_BACK}
        if req.gone is not None and await req.gone():
            # Its client hung up while the provider answered (`curl -m 1`): logged `succeeded`, as if it had the answer.
            # Its use counts; the provider did not fail.
            await self.finished(req, call, profile, usage or TokenUsage(), "failed", CLIENT_LEFT_BEFORE, started,
                                counted_apart=req.counted, client_left=True)  # fmt: skip
            return Response(data, status, headers=passed)
        done = BackgroundTask(self.finished, req, call, profile, usage or TokenUsage(), "succeeded", None, started,
                              counted_apart=req.counted)  # fmt: skip
        return Response(data, status, headers=passed, background=done)

    def _unrecorded(self, profile: Profile, usage: TokenUsage) -> None:
        """A successful call's use, counted against its profile's limits until its batch is written (`_written`)."""
        cost = profile.cost(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)
        self.profiles.unrecorded(profile, usage.total, cost or 0.0)

    async def _failed_attempt(
        self, profile: Profile, failed: Callable[..., Failure], error_class: str, message: str,
        key: tuple[int, int] | None,
    ) -> Failure:  # fmt: skip
        parsed = ParsedOutput("failed", error_class, message=message)  # type: ignore[arg-type]
        self._worlds.clear()
        await self.profiles.attempt_finished(profile, parsed, self.clock(), None, key=key)
        return failed(AttemptResult("failed", error_class, message))

    async def finished(
        self, req: Request, call: GatewayCall, profile: Profile, usage: TokenUsage, outcome: str, error: str | None,
        started: float, *, counted_apart: bool = False, client_left: bool = False,
    ) -> None:  # fmt: skip
        """After the answer went out: the attempt's usage and outcome to the heartbeat, the call to the log.
        `counted_apart`: its use is already counted until its batch is written (`_unrecorded`). `client_left`: the
        call failed because its client went away, not its provider."""
        call.latency_ms = _ms(time.monotonic() - started)
        call.outcome, call.error = outcome, error
        cost = profile.cost(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)
        # Its hold on the key's cap ends as the call joins the calls not written yet, in the same step: a cap's reader
        # between the two would count it nowhere.
        if not req.counted:
            self.holds.release(req.hold, cost)
            if outcome != "succeeded" and not client_left:
                parsed = ParsedOutput("failed", "transient", message=error)
                await self.profiles.attempt_finished(profile, parsed, self.clock(), None)
            return
        call.input_tokens, call.output_tokens = usage.input_tokens, usage.output_tokens
        call.cache_read_tokens, call.cache_write_tokens = usage.cache_read_tokens, usage.cache_write_tokens
        call.cost_usd = cost or 0.0
        key = attempt_key(call.id, len(call.path) - 1)
        # Written after, with others (recorder.py): the next call need not wait. A stream cut by a stop, or left by its
        # client (gone, or reading nothing), counts its use: the provider answered, and did not fail.
        if outcome in ("succeeded", "interrupted") or client_left:
            # Only a success is the provider's: one cut short (by a stop, or its client) says nothing of it, as for an
            # attempt a run's stop cut (`unknown`: its use counts; its profile's state and circuit stay as they were).
            parsed = ParsedOutput("succeeded" if outcome == "succeeded" else "unknown", usage=usage, model=call.model)
            if not counted_apart:  # a stream's: it ends here, with no await since it stopped being under way
                self.profiles.unrecorded(profile, usage.total, cost or 0.0)
            # A call that succeeded: what the route's calls cost (not one cut short: it may be a part of that).
            self.holds.release(req.hold, cost, req.route.name if outcome == "succeeded" else None)
            await self.recorder.put(Finished(call, Attempt(profile, parsed, self.clock(), cost, key)))
            return
        # The stream broke after it began: the provider failed (the router must know before the next call),
        # and what it used still counts.
        parsed = ParsedOutput("failed", "transient", usage=usage, model=call.model, message=error)
        self._worlds.clear()
        try:
            await self.profiles.attempt_finished(profile, parsed, self.clock(), cost, key=key)
        except Exception:  # the client has its answer; a store that refuses the record is logged, not raised
            log.exception("gateway: cannot record a call of route %s", call.route)
        self.holds.release(req.hold, cost)
        await self.recorder.put(Finished(call))

    async def _refuse(
        self, req: Request, call: GatewayCall, started: float, last: Failure | None, reason: str, scrubber: Scrubber,
        error: GatewayError | None = None,
    ) -> Response:  # fmt: skip
        """The call ends without a success: the last upstream's own answer when there was one (a contract
        error reaches the client unchanged), else the gateway's, in the protocol's shape."""
        if error is None and last is not None and last.status is not None:
            response = Response(last.body, last.status, headers=last.headers)
            call.status, call.error = last.status, last.result.message
        else:
            error = error or GatewayError("upstream", f"route {req.route.name}: {reason}")
            message = scrubber.text(error.message) or ""
            headers = {"retry-after": str(max(1, round(error.retry_after)))} if error.retry_after else {}
            response = Response(req.protocol.error_bytes(error.kind, message), error.status, headers=headers,
                                media_type="application/json")  # fmt: skip
            call.status, call.error = error.status, message
        call.outcome = "failed"
        call.latency_ms = _ms(time.monotonic() - started)
        self.holds.release(req.hold)
        if req.route.log_bodies:
            call.response_body = _capped(bytes(response.body))
        if req.counted:
            await self._record_quietly(call)
        return response

    async def _record_quietly(self, call: GatewayCall) -> None:
        await self.recorder.put(Finished(call))


class StreamAnswer:
    """An upstream's SSE stream, relayed event by event as it comes. Usage is read on the way; a chat
    usage chunk fleetd asked for itself is kept from the client, and every key fleetd knows is redacted from the
    bytes before they are split into events. The upstream connection is never held longer than the client reads
    (WRITE_TIMEOUT_S) or stays connected."""

    def __init__(
        self, proxy: Proxy, req: Request, call: GatewayCall, profile: Profile, response: aiohttp.ClientResponse,
        chunks: AsyncIterator[bytes], first: bytes, release: Callable[[], None], started: float, strip_usage: bool,
        scrubber: Scrubber,
    ) -> None:  # fmt: skip
        self.proxy, self.req, self.call, self.profile = proxy, req, call, profile
        self.scrubber = scrubber  # the stream's own: it holds back a chunk's end that may begin a key
        self.response, self.chunks, self.first, self.release = response, chunks, first, release
        self.started, self.strip_usage = started, strip_usage
        self.splitter = EventSplitter()
        self.usage: TokenUsage | None = None
        self.logged = bytearray()

    def _relay(self, chunk: bytes) -> bytes:
        if not self.req.counted:
            return chunk
        out = bytearray()
        protocol = self.req.protocol
        for event in self.splitter.feed(chunk):
            if protocol.may_carry_usage(event.raw):
                data = event.json()
                self.usage = protocol.usage_event(event.name, data, self.usage)
                if self.strip_usage and protocol.drop_event(data):
                    continue
            out += event.raw
        return bytes(out)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        outcome, error = "succeeded", None
        client_left = False  # the client, not the provider, ended it: no mark against the provider
        began = False  # a part of the answer's body went out

        def left() -> str:
            return "the client went away mid-stream" if began else "the client went away before the stream began"

        async def deliver(message: dict[str, Any]) -> bool:
            """`message` to the client; False once it has gone (or reads nothing): what comes then is only read."""
            nonlocal outcome, error, client_left, began
            if not client_left and gone.is_set():
                outcome, error, client_left = "failed", left(), True
            if client_left:
                return False
            try:
                await self._send(send, message)
            except TimeoutError:
                outcome, error = "failed", f"the client read nothing for {WRITE_TIMEOUT_S:g}s: stream dropped"
                client_left = True
            except OSError:
                outcome, error, client_left = "failed", left(), True
            began = began or (message["type"] == "http.response.body" and not client_left)
            return not client_left

        try:
            headers = [(k.encode(), v.encode()) for k, v in self.response.headers.items() if k.lower() in PASSED_BACK]
            await deliver({"type": "http.response.start", "status": self.response.status, "headers": headers})
            chunk = self.first
            # A client that leaves does not end the read: what the provider serves it bills, and the usage comes last
            # (half such calls were counted at $0, and daily costs let more through). Nothing more is sent then.
            while True:
                out = self._relay(self.scrubber.feed(chunk))
                if out and await deliver({"type": "http.response.body", "body": out, "more_body": True}):
                    if self.call.ttft_ms is None:
                        self.call.ttft_ms = _ms(time.monotonic() - self.started)
                    self._log(out)
                try:
                    chunk = await self.chunks.__anext__()
                except StopAsyncIteration:
                    break
                except UPSTREAM_ERRORS as e:
                    if client_left:
                        break
                    outcome, error = "stream_error", f"the upstream stream broke after it began: {type(e).__name__}"
                    await deliver({"type": "http.response.body", "more_body": True,
                                   "body": self.req.protocol.error_event(f"fleetd gateway: {error}")})  # fmt: skip
                    break
            rest = self._relay(self.scrubber.flush()) + self.splitter.rest()
            await deliver({"type": "http.response.body", "body": rest, "more_body": False})
        except asyncio.CancelledError:
            # A stop's grace ran out: what it used so far counts, and not as the provider's fault.
            outcome, error = "interrupted", "the daemon stopped while the stream was under way"
            if not self.proxy.stopping:
                raise
            # The client is told in the protocol's error event (uvicorn would log the cancellation's traceback, and
            # the stream would just stop): the task goes on only to say so and record it.
            answer_the_stop()
            with contextlib.suppress(Exception):
                event = self.req.protocol.error_event("fleetd gateway: the daemon is stopping; the stream was cut")
                await asyncio.wait_for(send({"type": "http.response.body", "body": event, "more_body": False}), 1.0)
        finally:
            watcher.cancel()
            _done(self.response)
            self.release()
            if self.req.route.log_bodies:
                self.call.response_body = _capped(bytes(self.logged))
            await self.proxy.finished(self.req, self.call, self.profile, self.usage or TokenUsage(), outcome, error,
                                      self.started, client_left=client_left)  # fmt: skip

    async def _send(self, send: Send, message: dict[str, Any]) -> None:
        await asyncio.wait_for(send(message), WRITE_TIMEOUT_S)

    def _log(self, data: bytes) -> None:
        if self.req.route.log_bodies and len(self.logged) < LOG_BODY_CAP:
            self.logged += data[: LOG_BODY_CAP - len(self.logged)]


def call_timeout_s(route: Route) -> float:
    """How long one call may take in all. The route's --timeout is each upstream's answer, and a profile that hangs
    takes a try and its retry (a timeout is `transient`) and a backoff: each profile of the chain gets that much."""
    return len(route.chain) * ((RETRIES + 1) * route.timeout_s + RETRIES * BACKOFF_CAP_S)


def upstream_bytes(protocol: WireProtocol, body: dict[str, Any], model: str) -> bytes:
    """The body as it goes upstream. Nesting is not walked on every call: json.dumps runs a few frames
    deeper than the json.loads that read it, so a body at the very edge of Python's recursion limit can
    pass one and not the other; that is the client's bad request, not the gateway's failure."""
    try:
        return json.dumps(protocol.with_model(body, model)).encode()
    except RecursionError:
        raise GatewayError("bad_request", TOO_DEEP) from None


def _done(response: aiohttp.ClientResponse) -> None:
    """The connection back to the pool when the answer was read to its end, else closed (a half-read
    answer would be the next call's first bytes)."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    data = bytearray()
    async for chunk in response.content.iter_any():
        data += chunk
        if len(data) >= cap:
            break
    return bytes(data[:cap])


def _scrub(scrubber: Scrubber, data: bytes) -> bytes:
    """A body without any key fleetd knows (a provider may quote the key it was sent, a client paste one)."""
    fresh = scrubber.fresh()
    return fresh.feed(data) + fresh.flush()


def _without_gateway_keys(text: str | None) -> str | None:
    """An upstream's message as fleetd records it: one that quotes the request it got may quote a gateway key a
    client pasted into it, which no scrubber knows (fleetd keeps only their hashes): found by its form."""
    return KEY_RE.sub(REDACTED, text.encode()).decode("utf-8", "replace") if text else text


def _capped(data: bytes) -> str:
    """A body as the call log keeps it: capped, and without any gateway key (fleetd stores only their hashes, so
    none is known to the scrubber: one a client pasted is found by its form)."""
    return KEY_RE.sub(REDACTED, data)[:LOG_BODY_CAP].decode("utf-8", "replace")


def _told(entry: dict[str, Any]) -> str:
    """A route entry as a refusal names it: `profile: why`, the same words for a call refused at its second look
    and for the next world passing it over (each reason is said once), a provider's 429 with its profile."""
    if entry["kind"] == "skip":
        return str(entry["detail"])
    why = str(entry["detail"]).removeprefix("rate_limited: ")
    profile = entry.get("profile")
    return why if profile is None or why.startswith(f"{profile}: ") else f"{profile}: {why}"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
