"""OpenAI Responses: `POST {base}/responses`, JSON or SSE (`event: response.*`). The usage is the
answer's `usage`, in a stream inside `response.completed`'s `response`; `input_tokens` includes the
cached ones (fleetd's TokenUsage does not)."""

from __future__ import annotations

import json
from typing import Any

from fleetd.gateway.protocols import WireProtocol, number
from fleetd.gateway.protocols.chat import TYPES
from fleetd.records.result import TokenUsage


class Responses(WireProtocol):
    name = "responses"
    path = "/responses"

    def usage_json(self, obj: Any) -> TokenUsage | None:
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict):
            return None
        details = usage.get("input_tokens_details")
        cached = number(details.get("cached_tokens")) if isinstance(details, dict) else 0
        return TokenUsage(max(0, number(usage.get("input_tokens")) - cached), number(usage.get("output_tokens")),
                          cached, 0)  # fmt: skip

    def usage_event(self, event: str | None, data: Any, so_far: TokenUsage | None) -> TokenUsage | None:
        if isinstance(data, dict) and isinstance(data.get("response"), dict):
            return self.usage_json(data["response"]) or so_far
        return so_far

    def error_body(self, kind: str, message: str) -> dict[str, Any]:
        kind_type, code = TYPES.get(kind, ("server_error", None))
        return {"error": {"message": message, "type": kind_type, "param": None, "code": code}}

    def error_event(self, message: str) -> bytes:
        data = {"type": "error", "code": "server_error", "message": message, "param": None}
        return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"


PROTOCOL = Responses()
