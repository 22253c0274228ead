"""Input validation for the gateway's management side: a route, a client key, a listen address.
Bad input is an InvalidArgument naming the flag; nothing is saved."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Mapping
from typing import Any

from fleetd.backends.registry import backend_names, get_adapter
from fleetd.edits import known_fields
from fleetd.errors import InvalidArgument, shown
from fleetd.names import checked_name
from fleetd.names import checked_route_name as validate_route_name
from fleetd.records.gateway import (
    APIS,
    DEFAULT_ROUTE_TIMEOUT_S,
    KEY_PREFIX,
    ClientKey,
    GatewaySetting,
    Route,
    is_loopback,
    split_listen,
)
from fleetd.records.loop import ChainStep
from fleetd.records.profile import Profile
from fleetd.routing.chain import parse_chain
from fleetd.routing.policy import parse_usd
from fleetd.timefmt import DurationError, parse_duration

MAX_ROUTE_TIMEOUT_S = 3600.0


def validate_key_name(name: object) -> str:
    return checked_name("key", name)


def validate_route_input(body: Mapping[str, Any], profiles: Collection[Profile]) -> Route:
    known_fields(body, ("name", "api", "chain", "timeout", "log_bodies"), "route")
    name = validate_route_name(body.get("name"))
    api = body.get("api") or "chat"
    if api not in APIS:
        raise InvalidArgument(f"invalid --api {shown(api)} (one of: {', '.join(APIS)})")
    chain_text = body.get("chain")
    if not isinstance(chain_text, str) or not chain_text.strip():
        raise InvalidArgument("a route needs --chain PROFILE[@MODEL],… (the profiles to try, in order)")
    by_name = {p.name: p for p in profiles}
    # Profiles only, never a backend: a route tries exactly the profiles the user named, nothing else.
    for item in chain_text.split(","):
        named = item.strip().partition("@")[0]
        if named not in by_name and named in backend_names():
            raise InvalidArgument(f"{named!r} is a backend: a route's --chain names profiles, the ones to try in order "
                                  "(fleetd profile list)")  # fmt: skip
    steps = parse_chain(chain_text, (), {p.name: p.backend for p in profiles})
    chain = tuple(checked_step(step, by_name[step.profiles[0]], api) for step in steps)
    timeout = DEFAULT_ROUTE_TIMEOUT_S
    if body.get("timeout") not in (None, ""):
        try:
            timeout = parse_duration(str(body["timeout"]))
        except DurationError as e:
            raise InvalidArgument(f"invalid --timeout: {e}") from None
        if not 1 <= timeout <= MAX_ROUTE_TIMEOUT_S:
            raise InvalidArgument("--timeout must be between 1s and 1h")
    log_bodies = body.get("log_bodies", False)
    if not isinstance(log_bodies, bool):
        raise InvalidArgument("log_bodies must be true or false")
    return Route(name, api, chain, timeout, log_bodies)


def route_warnings(route: Route, profiles: Collection[Profile]) -> list[str]:
    """What `route add` warns of, saving the route all the same: a paid profile of its chain lacking an input or output
    price, whose calls the gateway can only count at $0 (Claude Code prices its own runs; its key's calls here were $0,
    under no daily cost)."""
    by_name = {p.name: p for p in profiles}
    unpriced = [
        name for step in route.chain if (name := step.profiles[0]) in by_name
        and by_name[name].tier != "local" and None in (by_name[name].price_input, by_name[name].price_output)
    ]  # fmt: skip
    return [
        f"profile {name} lacks an input or output price: its calls on this route are counted at $0 (or less than "
        f"they cost), and no --daily-cost sees it (`fleetd profile edit {name} --price-input X --price-output Y`)"
        for name in dict.fromkeys(unpriced)
    ]


def checked_step(step: ChainStep, profile: Profile, api: str) -> ChainStep:
    """A route's chain step over `profile`: it must speak the route's API and know what model to ask for."""
    adapter = get_adapter(profile.backend)
    apis = adapter.gateway_apis(profile)
    if api not in apis:
        if apis:
            spoken = f"it speaks {', '.join(sorted(apis))}"
        elif profile.has_secret:  # a Gemini key, say: an API the gateway does not speak
            spoken = "the gateway cannot call its provider (it speaks the chat, messages and responses APIs only)"
        else:  # a subscription login belongs to its CLI
            spoken = "the gateway cannot call it (no key or base URL)"
        raise InvalidArgument(f"profile {profile.name} ({profile.backend}) cannot serve a {api} route: {spoken}")
    if problem := adapter.auth_problem(profile):  # each call would be the provider's 401, then a disabled profile
        raise InvalidArgument(
            f"profile {profile.name} ({profile.backend}) cannot serve a route: {problem}: add one with "
            f"`fleetd profile set-key {profile.name} --api-key-stdin < key.txt`"
        )
    if not (step.model or profile.model):
        raise InvalidArgument(
            f"chain step {profile.name} has no model: write {profile.name}@MODEL or give the profile --model"
        )
    return step


def validate_key_input(body: Mapping[str, Any], route_names: Collection[str]) -> tuple[str, str | None, float | None]:
    """(name, routes text or None, daily cost); the routes must exist."""
    known_fields(body, ("name", "routes", "daily_cost"), "key")
    name = validate_key_name(body.get("name"))
    routes = body.get("routes")
    if routes is not None:
        if not isinstance(routes, str) or not routes.strip():
            raise InvalidArgument("invalid --routes: a comma-separated list of route names")
        for item in routes.split(","):
            route = validate_route_name(item.strip())
            if route not in route_names:
                raise InvalidArgument(f"invalid --routes: no route named {route!r}")
    return name, routes, parse_usd(body.get("daily_cost"), "--daily-cost")


def new_key(name: str, routes: str | None, daily_cost: float | None) -> tuple[ClientKey, str]:
    """A fresh client key (shown once) and its record, which holds only its hash."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    chosen = tuple(dict.fromkeys(r.strip() for r in routes.split(","))) if routes is not None else None
    return ClientKey(name, key_hash(plain), chosen, daily_cost), plain


def key_hash(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8", "surrogatepass")).hexdigest()


def parse_listen(text: object, public: bool) -> GatewaySetting:
    """`HOST:PORT` (`[::1]:4141` for IPv6). Loopback unless `public`: a gateway anyone on the network can
    reach is a deliberate choice."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument("--listen needs HOST:PORT, e.g. 127.0.0.1:4141")
    host, port = split_listen(text)
    if not public and not is_loopback(host):
        raise InvalidArgument(
            f"--listen {shown(text)} is not a loopback address: add --public to listen there (anyone who can "
            "reach it can try keys)"
        )
    return GatewaySetting(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", public and not is_loopback(host))
