"""Anthropic Messages: `POST {base}/v1/messages` (and `/v1/messages/count_tokens`), JSON or SSE.

`anthropic-version` and `anthropic-beta` are the protocol's own headers and go on upstream. A stream's
usage is in `message_start` (input and cache) and `message_delta` (output, sometimes input again);
the later value of a field wins."""

from __future__ import annotations

import json
from typing import Any

from fleetd.gateway.protocols import WireProtocol, number
from fleetd.records.result import TokenUsage

TYPES = {
    "auth": "authentication_error",
    "forbidden": "permission_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
    "rate_limited": "rate_limit_error",
    "bad_request": "invalid_request_error",
    "upstream": "api_error",
    "timeout": "api_error",
    "no_endpoint": "not_found_error",
    "wrong_method": "invalid_request_error",
    "unavailable": "overloaded_error",
}
_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


class Messages(WireProtocol):
    name = "messages"
    path = "/v1/messages"
    passed_headers = ("anthropic-version", "anthropic-beta")

    def usage_json(self, obj: Any) -> TokenUsage | None:
        usage = obj.get("usage") if isinstance(obj, dict) else None
        return _usage(usage, None) if isinstance(usage, dict) else None

    def usage_event(self, event: str | None, data: Any, so_far: TokenUsage | None) -> TokenUsage | None:
        if not isinstance(data, dict):
            return so_far
        if data.get("type") == "message_start" and isinstance(data.get("message"), dict):
            usage = data["message"].get("usage")
        elif data.get("type") == "message_delta":
            usage = data.get("usage")
        else:
            return so_far
        return _usage(usage, so_far) if isinstance(usage, dict) else so_far

    def error_body(self, kind: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": TYPES.get(kind, "api_error"), "message": message}}

    def error_event(self, message: str) -> bytes:
        return b"event: error\ndata: " + json.dumps(self.error_body("upstream", message)).encode() + b"\n\n"


def _usage(usage: dict[str, Any], so_far: TokenUsage | None) -> TokenUsage:
    old = so_far or TokenUsage()
    values = [number(usage[f]) if f in usage and usage[f] is not None else None for f in _FIELDS]
    olds = (old.input_tokens, old.output_tokens, old.cache_read_tokens, old.cache_write_tokens)
    merged = [new if new is not None else prev for new, prev in zip(values, olds, strict=True)]
    return TokenUsage(*merged)


PROTOCOL = Messages()
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
