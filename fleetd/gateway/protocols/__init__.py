"""Wire-format knowledge, one module per provider API the gateway speaks (chat, messages, responses).

A `WireProtocol` knows: where a request goes below the upstream's base URL, how to rewrite the model,
which of the client's headers belong to the protocol and travel on, where the usage is in a JSON answer
and in an SSE stream, and what an error looks like in that API (a JSON body, and an SSE event for a
stream that has already begun). Which profile speaks which API, and how to authenticate to it, is the
adapters' knowledge (`Adapter.gateway_apis`), not this package's. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetd.records.result import TokenUsage

# The gateway's own refusals, one vocabulary; each protocol names them in its own error types.
#   auth: no or a wrong gateway key; forbidden: the key may not use the route; not_found: no such route;
#   too_large: the body is over the cap; rate_limited: the key's daily cost, or every profile rests;
#   bad_request: not a request this API takes; upstream: no upstream gave an answer; timeout: none in time;
#   no_endpoint: a path the gateway does not serve; wrong_method: a path it serves, asked with another method;
#   unavailable: no profile of the route can be tried at all (disabled, parked, no key): nothing was called.
ERROR_KINDS = ("auth", "forbidden", "not_found", "too_large", "rate_limited", "bad_request", "upstream", "timeout",
               "no_endpoint", "wrong_method", "unavailable")  # fmt: skip
STATUS = {"auth": 401, "forbidden": 403, "not_found": 404, "too_large": 413, "rate_limited": 429,
          "bad_request": 400, "upstream": 502, "timeout": 504, "no_endpoint": 404, "wrong_method": 405,
          "unavailable": 503}  # fmt: skip


@dataclass(frozen=True)
class GatewayError(Exception):
    """A refusal of the gateway's own (not an upstream's answer), shaped by the protocol on the way out."""

    kind: str
    message: str
    retry_after: float | None = None

    @property
    def status(self) -> int:
        return STATUS[self.kind]


class WireProtocol:
    name: str = ""
    path: str = ""  # below the upstream's base URL
    # The client's headers that are part of the protocol (versions, betas) and go on upstream.
    passed_headers: tuple[str, ...] = ()

    def with_model(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return {**body, "model": model}

    def prepare(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The body as it goes upstream (before the model is set), and whether the usage-only part of
        the answer that fleetd added for its own accounting must be kept from the client."""
        return body, False

    def usage_json(self, obj: Any) -> TokenUsage | None:
        raise NotImplementedError

    def usage_event(self, event: str | None, data: Any, so_far: TokenUsage | None) -> TokenUsage | None:
        """The usage after one SSE event (`data` decoded), given what the earlier ones said."""
        raise NotImplementedError

    def may_carry_usage(self, raw: bytes) -> bool:
        """A cheap look at an event's bytes before decoding it: most carry no usage."""
        return b"usage" in raw

    def drop_event(self, data: Any) -> bool:
        """An event fleetd asked for itself (chat's usage chunk the client did not ask for)."""
        return False

    def error_body(self, kind: str, message: str) -> dict[str, Any]:
        raise NotImplementedError

    def error_event(self, message: str) -> bytes:
        raise NotImplementedError

    def error_bytes(self, kind: str, message: str) -> bytes:
        return json.dumps(self.error_body(kind, message)).encode()


def forwarded_headers(protocol: WireProtocol, headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in protocol.passed_headers if name in headers}


def number(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def get_protocol(name: str) -> WireProtocol:
    from fleetd.gateway.protocols import chat, messages, responses

    return {"chat": chat.PROTOCOL, "messages": messages.PROTOCOL, "responses": responses.PROTOCOL}[name]
