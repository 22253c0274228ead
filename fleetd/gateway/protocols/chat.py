"""OpenAI Chat Completions: `POST {base}/chat/completions`, JSON or SSE (`data: {...}` chunks, `[DONE]`).

Usage arrives in the JSON answer, and in a stream only when `stream_options.include_usage` is set: as a
last chunk with empty `choices`. fleetd always asks for it (it counts every call); when the client did
not, that chunk is kept from the client, so the client sees what it asked for."""

from __future__ import annotations

import json
from typing import Any

from fleetd.gateway.protocols import WireProtocol, number
from fleetd.records.result import TokenUsage

TYPES = {
    "auth": ("invalid_request_error", "invalid_api_key"),
    "forbidden": ("invalid_request_error", "model_not_allowed"),
    "not_found": ("invalid_request_error", "model_not_found"),
    "too_large": ("invalid_request_error", "request_too_large"),
    "rate_limited": ("requests", "rate_limit_exceeded"),
    "bad_request": ("invalid_request_error", None),
    "upstream": ("server_error", None),
    "timeout": ("server_error", "timeout"),
    "no_endpoint": ("invalid_request_error", "unknown_url"),
    "wrong_method": ("invalid_request_error", "method_not_allowed"),
    "unavailable": ("server_error", "service_unavailable"),
}


class Chat(WireProtocol):
    name = "chat"
    path = "/chat/completions"

    def prepare(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if not body.get("stream"):
            return body, False
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            return body, False
        asked = options if isinstance(options, dict) else {}
        return {**body, "stream_options": {**asked, "include_usage": True}}, True

    def usage_json(self, obj: Any) -> TokenUsage | None:
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        cached = number(details.get("cached_tokens")) if isinstance(details, dict) else 0
        prompt = number(usage.get("prompt_tokens"))
        return TokenUsage(max(0, prompt - cached), number(usage.get("completion_tokens")), cached, 0)

    def usage_event(self, event: str | None, data: Any, so_far: TokenUsage | None) -> TokenUsage | None:
        return self.usage_json(data) or so_far

    def drop_event(self, data: Any) -> bool:
        return isinstance(data, dict) and data.get("choices") == [] and isinstance(data.get("usage"), dict)

    def error_body(self, kind: str, message: str) -> dict[str, Any]:
        kind_type, code = TYPES.get(kind, ("server_error", None))
        return {"error": {"message": message, "type": kind_type, "param": None, "code": code}}

    def error_event(self, message: str) -> bytes:
        return b"data: " + json.dumps(self.error_body("upstream", message)).encode() + b"\n\n"


PROTOCOL = Chat()
