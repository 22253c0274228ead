"""The gateway as the daemon runs it: routes and keys (kept in memory, written through to the store),
the listener's lifecycle (the `--gateway` flag, else the stored setting), the per-call log and its
figures. The proxy (`proxy.py`) does the forwarding."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetd.errors import Conflict, InvalidArgument, NotFound
from fleetd.gateway.model import (
    new_key,
    parse_listen,
    route_warnings,
    validate_key_input,
    validate_key_name,
    validate_route_input,
    validate_route_name,
)
from fleetd.gateway.protocols import GatewayError
from fleetd.heartbeat.windows import within
from fleetd.profiles.service import ProfileService
from fleetd.records.gateway import ClientKey, GatewayCall, GatewaySetting, Route, is_loopback, split_listen
from fleetd.records.money import day_since, usd, usd_apart
from fleetd.store.gateway import GatewayStore

if TYPE_CHECKING:
    from fleetd.gateway.journal import Journal
    from fleetd.gateway.proxy import Proxy
    from fleetd.gateway.server import GatewayListener

log = logging.getLogger("fleetd.gateway")
STATS_KEYS = ("route", "profile", "model", "key", "api")


class GatewayService:
    def __init__(
        self,
        store: GatewayStore,
        profiles: ProfileService,
        *,
        clock: Callable[[], datetime],
        forced: GatewaySetting | None = None,
    ) -> None:
        self.store = store
        self.profiles = profiles
        self.clock = clock
        self.forced = forced  # the daemon's --gateway flag: this run only, never stored
        # The proxy and its app (aiohttp, uvicorn's TCP side) are made on the first listen: a daemon that
        # never serves the gateway does not load them (~0.3 s of start-up and ~10 MB).
        self._proxy: Proxy | None = None
        self._app: object | None = None
        self.listener: GatewayListener | None = None
        self.setting = GatewaySetting()
        self.problem: str | None = None
        self._routes: dict[str, Route] = {}
        self._keys: list[ClientKey] = []
        self._looked_up: set[tuple[str, str]] = set()  # (key's hash, route) whose last cost the call log was asked for
        self._routes_looked_up: set[str] = set()  # routes whose last call's cost (any key's) it was asked for
        self.journal: Journal | None = None  # set by `recover`; none: a kill -9 loses the calls not yet written

    async def recover(self, directory: Path) -> None:
        """Write into the store what the journal a kill -9 left holds and the store does not (journal.py), then keep
        the journal there from the next call id on. Before the heartbeat and the gateway start: the profiles' windows
        and the keys' caps count those calls from the first look."""
        from fleetd.gateway import journal

        last = 0
        try:
            replay = await asyncio.to_thread(journal.read, directory)
            last = max((c.id or 0 for c in replay.calls), default=0)
            if replay.calls or replay.uses:
                added = await self.store.replay(replay.calls, replay.uses)
                if added:
                    interrupted = sum(c.outcome == "interrupted" for c in replay.calls if c.id in added)
                    log.warning("gateway: %d call(s) the daemon had not written when it stopped are recorded now (%d "
                                "of them under way then: interrupted)", len(added), interrupted)  # fmt: skip
            for segment in replay.segments:
                segment.unlink(missing_ok=True)
        except Exception:  # kept for the next start: the daemon starts, its new calls numbered after the kept ones
            log.exception(
                "gateway: cannot write the journal %s into the store; it is kept for the next start", directory
            )
        self.journal = journal.Journal(directory, max(last, await self.store.last_call_id()) + 1)
        if self._proxy is not None:  # made meanwhile by an API request (`gateway key list`); no call went through it
            self._proxy.journal = self._proxy.recorder.journal = self.journal

    async def start(self) -> None:
        """Load routes and keys, then listen where the flag or the stored setting says. A bad flag stops
        the daemon (raised); a stored address that cannot be bound now is reported, not fatal."""
        self._routes = {r.name: r for r in await self.store.routes()}
        self._keys = await self.store.keys()
        setting = self.forced or await self.store.setting()
        if setting.listen is None:
            return
        try:
            await self._listen(setting)
        except InvalidArgument as e:
            if self.forced is not None:
                raise
            self.problem = e.message
            log.error("gateway: %s", e.message)

    @property
    def proxy(self) -> Proxy:
        if self._proxy is None:
            from fleetd.gateway.proxy import Proxy

            self._proxy = Proxy(self.profiles, self.store.add_calls, clock=self.clock, journal=self.journal)
        return self._proxy

    @property
    def address(self) -> str | None:
        return self.listener.address if self.listener is not None else None

    @property
    def calls_under_way(self) -> int:
        return self.journal.under_way if self.journal is not None else 0

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening; calls in flight get `grace` seconds (None: all they take)."""
        if self._proxy is not None:  # what is cut after that is the stop's doing (app.py and the stream answer it)
            self._proxy.stopping = True
        if self.listener is not None:
            await self.listener.stop(grace)
        if self._proxy is not None:
            await self._proxy.close()

    async def _listen(self, setting: GatewaySetting) -> None:
        await self._switch(await self._bind(setting), setting)

    async def _bind(self, setting: GatewaySetting) -> GatewayListener | None:
        """A listener on the new address, started beside the running one (None: it is the running one's
        address already), so an address that cannot be used leaves the gateway as it was."""
        listen = setting.listen or ""
        if self.address is not None and not listen.endswith(":0") and listen in (self.setting.listen, self.address):
            return None  # bound already: a second bind would find the port in use
        from fleetd.gateway.app import create_gateway_app
        from fleetd.gateway.server import GatewayListener

        if self._app is None:
            self._app = create_gateway_app(self)
        new = GatewayListener(self._app)
        await new.start(listen)
        return new

    async def _switch(self, new: GatewayListener | None, setting: GatewaySetting) -> None:
        """Serve from `new` (from `_bind`) and stop the old listener; its calls in flight end first."""
        if new is not None:
            old, self.listener = self.listener, new
            if old is not None:
                await old.stop()
        self.setting, self.problem = setting, None
        address = self.address or ""
        host, _ = split_listen(address)
        if not is_loopback(host):
            log.warning("gateway: listening on %s, beyond this machine: anyone who can reach it can try keys", address)
        log.info("gateway listening on http://%s", address)

    # -- the listen setting -----------------------------------------------------------------------

    async def enable(self, body: dict[str, Any]) -> dict[str, Any]:
        public = body.get("public", False)
        if not isinstance(public, bool):
            raise InvalidArgument("public must be true or false")
        setting = parse_listen(body.get("listen"), public)
        # Bound first, saved second, switched last: an address that cannot be used is never saved, and a
        # failure at either step leaves the running gateway (if any) listening where it was.
        new = await self._bind(setting)
        try:
            await self.store.save_setting(setting, self.clock())
        except BaseException:
            if new is not None:
                await new.stop()
            raise
        await self._switch(new, setting)
        self.forced = None  # the user's word now: the stored setting, not the daemon's --gateway, says where
        return self.status()

    async def disable(self) -> dict[str, Any]:
        await self.store.save_setting(GatewaySetting(), self.clock())
        if self.listener is not None:
            await self.listener.stop()
        self.setting, self.problem, self.forced = GatewaySetting(), None, None
        return self.status()

    def status(self) -> dict[str, Any]:
        address = self.address
        return {
            "enabled": address is not None,
            "listen": self.setting.listen,
            "address": address,
            "url": f"http://{address}" if address else None,
            "public": self.setting.public,
            "source": "flag" if self.forced is not None else "setting",
            "problem": self.problem,
            "routes": len(self._routes),
            "keys": len(self._keys),
        }

    # -- routes ------------------------------------------------------------------------------------

    async def add_route(self, body: dict[str, Any]) -> tuple[Route, list[str]]:
        """The route saved, and what to warn of (`route_warnings`)."""
        profiles = await self.profiles.list()
        route = validate_route_input(body, profiles)
        route = replace(route, created_at=self.clock())
        await self.store.add_route(route)
        self._routes[route.name] = route
        return route, route_warnings(route, profiles)

    def routes_now(self) -> list[Route]:
        return sorted(self._routes.values(), key=lambda r: r.name)

    def route(self, name: str) -> Route | None:
        return self._routes.get(name)

    def get_route(self, name: str) -> Route:
        route = self._routes.get(validate_route_name(name))
        if route is None:
            raise NotFound(f"no route named {name!r}")
        return route

    async def remove_route(self, name: str) -> None:
        validate_route_name(name)
        users = [k.name for k in self._keys if k.routes is not None and name in k.routes]
        if users:
            # Removed, a key kept naming it, and a new route of the same name was that key's without a word.
            raise Conflict(
                f"route {name!r} is one of the routes of gateway key(s) {', '.join(users)}: remove "
                "those keys first (`fleetd gateway key rm NAME`; a key's routes cannot be changed)"
            )
        await self.store.remove_route(name)
        self._routes.pop(name, None)
        self.proxy.holds.forget(name)
        self._looked_up = {pair for pair in self._looked_up if pair[1] != name}
        self._routes_looked_up.discard(name)

    # -- keys --------------------------------------------------------------------------------------

    async def add_key(self, body: dict[str, Any]) -> tuple[ClientKey, str]:
        name, routes, daily_cost = validate_key_input(body, self._routes)
        key, plain = new_key(name, routes, daily_cost)
        key = replace(key, created_at=self.clock())
        await self.store.add_key(key)
        self._keys.append(key)
        return key, plain

    def profiles_changed(self) -> None:
        """A profile was changed by hand: the next call reads the world again (`Proxy.forget_worlds`)."""
        if self._proxy is not None:
            self._proxy.forget_worlds()

    def keys_now(self) -> list[ClientKey]:
        return sorted(self._keys, key=lambda k: k.name)

    async def spent(self, key: ClientKey) -> float:
        """What `key`'s calls cost in the last 24 h, as its cap counts it: the call log, and the finished calls it
        does not show yet, read together (no batch is written meanwhile: each call is counted once). Only since the
        key was added: calls are logged by its name, and a key added under a removed one's name took its spend."""
        since = day_since(self.clock(), key.created_at)
        recorder = self.proxy.recorder
        async with recorder.log_lock:
            return await self.store.key_cost_since(key.name, since) + recorder.unwritten_cost(key.name, since)

    async def remove_key(self, name: str) -> None:
        validate_key_name(name)
        await self.store.remove_key(name)
        self._keys = [k for k in self._keys if k.name != name]

    def authenticate(self, presented: str | None) -> ClientKey:
        """The key `presented` is, compared in constant time against every key's hash (no early exit)."""
        if not presented:
            raise GatewayError("auth", "no gateway key: send it as `Authorization: Bearer fk-…` or `x-api-key`")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.key_hash):
                found = key
        if found is None:
            raise GatewayError("auth", "invalid gateway key (fleetd gateway key list)")
        return found

    async def admit(self, key: ClientKey, route: Route) -> tuple[GatewayError | None, int | None]:
        """Whether a call of `key` may go on under its daily cost cap: (the refusal, None) or (None, its hold on
        the cap, which the proxy releases when the call ends). The cap counts what the call log shows, the finished
        calls it does not show yet, and the calls under way (`holds.py`), each held at what the key's latest call
        cost, or, before one has finished, at all that is left: the first calls go one at a time."""
        if key.daily_cost is None:
            return None, None
        holds = self.proxy.holds
        me = key.key_hash  # in memory a key is its hash: one added under a removed key's name is another key
        own = holds.own(me, route.name)
        if own is None and (me, route.name) not in self._looked_up:
            # After a restart: what its latest call on this route cost, from the call log (one at $0.98 of $1 was let
            # in after a kill -9, the key's last cost forgotten), before any other key's since.
            self._looked_up.add((me, route.name))
            since = route.created_at  # not another route's of its name, nor another key's of its name
            if since is not None and key.created_at is not None:
                since = max(since, key.created_at)
            if own := await self.store.last_call_cost(key.name, route.name, since):
                holds.remember(me, route.name, own)
        expected = holds.expected(me, route.name)
        if expected is None and route.name not in self._routes_looked_up:  # its first call there, after a restart
            self._routes_looked_up.add(route.name)
            if last := await self.store.last_call_cost(None, route.name, route.created_at):
                holds.remember(None, route.name, last)
                expected = last
        # What it spent, then what its calls under way hold, with no await between (nor after, until this call holds
        # its share): a call that ended meanwhile moved from the calls under way to the finished ones, counted once.
        spent = await self.spent(key)
        held = holds.held(me)
        shown, cap = usd_apart(spent, key.daily_cost)
        if spent >= key.daily_cost:
            message = f"gateway key {key.name} has spent {shown} of its {cap} daily cost cap in the last 24 h"
            return GatewayError("rate_limited", message, retry_after=3600), None
        if expected is not None:
            expected = min(expected, key.daily_cost)  # one over the cap alone: let in when nothing else is spent
        # The calls under way may spend the rest, or this one would pass the cap (a call at $0.82 of a $1 cap was let
        # in though each cost $0.82): it waits for them, or for spend to leave the 24 h window.
        if not within(spent + held + (expected or 0.0), key.daily_cost) or spent + held >= key.daily_cost:
            if held and within(spent + (expected or 0.0), key.daily_cost):  # it would fit once they end
                message = (f"gateway key {key.name} has spent {shown} of its {cap} daily cost cap in the last "
                           f"24 h and calls under way may spend the rest")  # fmt: skip
                return GatewayError("rate_limited", message, retry_after=1), None
            message = (f"gateway key {key.name} has spent {shown} of its {cap} daily cost cap in the last 24 h "
                       f"and a call costs about {usd(expected or 0.0)}")  # fmt: skip
            return GatewayError("rate_limited", message, retry_after=3600), None
        # Held at its own last cost; a first call on the route (expected at another key's, or not at all) at all that
        # is left, so that its first calls go one at a time (twenty at once were let in at another key's $0.001 ping).
        amount = min(own, key.daily_cost) if own else key.daily_cost - spent - held
        from fleetd.gateway.proxy import call_timeout_s  # loaded with the listener, before any call is admitted

        return None, holds.hold(me, route.name, amount, call_timeout_s(route) + 60)

    # -- the per-call log --------------------------------------------------------------------------

    async def record(self, call: GatewayCall) -> None:
        """To the call log, after the answer (with others: recorder.py)."""
        from fleetd.gateway.recorder import Finished

        await self.proxy.recorder.put(Finished(call))

    async def calls(self, *, route: str | None, since: datetime | None, limit: int) -> list[GatewayCall]:
        if route is not None:
            validate_route_name(route)
        return await self.store.calls(route=route, since=since, limit=limit)

    async def route_known(self, name: str) -> bool:
        """A route that exists, or whose calls are on record (a removed route's history still answers)."""
        return name in self._routes or await self.store.has_calls(name)

    async def stats(self, *, since: datetime, by: tuple[str, ...]) -> dict[str, Any]:
        from fleetd.gateway.views import gateway_stats

        return gateway_stats(await self.store.stats(since=since, by=by))


def parse_gateway_by(text: str | None) -> tuple[str, ...]:
    if not text:
        return ("route",)
    keys = tuple(k.strip() for k in text.split(","))
    bad = [k for k in keys if k not in STATS_KEYS]
    if bad or len(keys) > 2 or len(set(keys)) != len(keys):
        raise InvalidArgument(f"invalid --by {text!r} for --source gateway: one or two of {', '.join(STATS_KEYS)}")
    return keys
