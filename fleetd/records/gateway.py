"""The gateway's records: a route (a model name clients ask for, over a chain of profiles), a client
key (stored as a hash only), and one call as the per-call log keeps it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleetd.errors import InvalidArgument, shown
from fleetd.records.loop import ChainStep

# The provider APIs the gateway speaks: same protocol in and out, only the model name is rewritten.
APIS = ("chat", "messages", "responses")
DEFAULT_ROUTE_TIMEOUT_S = 120.0
KEY_PREFIX = "fk-"
# A gateway key as written anywhere (the prefix and 43 URL-safe characters: gateway/model.new_key); 16 or more
# catch one a body's cap cut short. fleetd keeps only their hashes: text is scrubbed of them by this form.
KEY_RE = re.compile(rb"fk-[A-Za-z0-9_-]{16,}")
# What a call ended as. `stream_error`: the stream had begun (a byte had reached the client) when the
# upstream failed; the client got a provider-shaped error event, never another model's continuation.
# `interrupted`: the daemon died while it was under way (gateway/journal.py).
OUTCOMES = ("succeeded", "failed", "rejected", "stream_error", "interrupted")


@dataclass(frozen=True)
class Route:
    name: str
    api: str
    chain: tuple[ChainStep, ...]  # every step names one profile: only those are ever tried
    timeout_s: float = DEFAULT_ROUTE_TIMEOUT_S
    log_bodies: bool = False
    created_at: datetime | None = None


@dataclass(frozen=True)
class ClientKey:
    name: str
    key_hash: str  # hex SHA-256 of the key; the key itself is shown once and never stored
    routes: tuple[str, ...] | None = None  # None: every route
    daily_cost: float | None = None  # USD per rolling 24 h
    created_at: datetime | None = None

    def may_use(self, route: str) -> bool:
        return self.routes is None or route in self.routes


@dataclass(frozen=True)
class GatewaySetting:
    listen: str | None = None  # HOST:PORT; None: the gateway is off
    public: bool = False  # a non-loopback address was allowed explicitly


@dataclass
class GatewayCall:
    at: datetime
    key: str | None
    route: str
    api: str
    streamed: bool
    outcome: str = "failed"
    status: int | None = None
    error: str | None = None
    path: list[dict[str, Any]] = field(default_factory=list)  # each try: profile, model, status, class, latency
    profile: str | None = None  # the last try's
    model: str | None = None
    ttft_ms: int | None = None
    latency_ms: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    request_body: str | None = None
    response_body: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class AttemptUse:
    """What one try of a gateway call used, as its profile's usage record keeps it (`gateway.journal.attempt_key`)."""

    profile: str
    at: datetime
    tokens: int
    cost_usd: float
    key: tuple[int, int]  # the call's id, the try's number


def split_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:4141` for IPv6) → (host, port); port 0 asks for a free one."""
    message = f"invalid listen address {shown(text)}: use HOST:PORT, e.g. 127.0.0.1:4141"
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", text)
    if not m:
        raise InvalidArgument(message)
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise InvalidArgument(message)
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
