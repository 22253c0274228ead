"""A loopback HTTP server that answers like the model providers' APIs, for driving the real agent CLIs.

Speaks just enough of four APIs for Claude Code, Codex CLI, Gemini CLI and Aider (litellm):

* Anthropic Messages   ``POST /v1/messages`` (SSE when ``"stream": true``, JSON otherwise) and
  ``POST /v1/messages/count_tokens``;
* OpenAI Responses     ``POST /v1/responses`` (SSE, as Codex uses it);
* Gemini               ``POST /v1beta/models/{model}:streamGenerateContent`` (``alt=sse``), ``:generateContent``
  and ``:countTokens``;
* OpenAI Chat          ``POST /v1/chat/completions`` (SSE when ``"stream": true``, JSON otherwise).

Anything else gets a harmless 404 JSON body. Every request is recorded (``paths``, ``requests``) and model calls are
counted per API (``calls``, with the time of the first in ``first_call_at``), so a test can see what a CLI called and
how often it retried. Pointed at as an HTTP(S) proxy, the server refuses every outside host with 403 and records it
in ``proxy_attempts`` (agents.agent_env sets the proxy variables so, as a trap for outside traffic).

The behaviour is switched at run time with ``server.mode``:

``"ok"``     a reply of ``server.reply_text`` (default the one word ``REPLY_TEXT``) with the fixed usage numbers below;
``"429"``    each API's rate-limit error (Anthropic ``rate_limit_error``, OpenAI ``rate_limit_exceeded``, Gemini
             ``RESOURCE_EXHAUSTED`` with a per-minute quota violation and ``RetryInfo``), ``retry-after: 1``;
``"quota"``  each API's out-of-quota error: OpenAI 429 ``insufficient_quota``, Gemini 429 with a per-day quota
             violation (terminal for Gemini CLI), Anthropic 400 "credit balance is too low";
``"500"``    each API's internal server error;
``"529"``    Anthropic 529 ``overloaded_error``; the other APIs answer their own "overloaded" error with 503;
``"bad_key"`` each API's answer to a wrong API key: Anthropic 401 ``authentication_error`` "invalid x-api-key",
             OpenAI 401 ``invalid_api_key``, Gemini **400** ``INVALID_ARGUMENT`` "API key not valid"
             (``API_KEY_INVALID``);
``"bad_request"`` each API's 400 for a malformed request (``invalid_request_error`` / ``INVALID_ARGUMENT``);
``"model_not_found"`` each API's 404 for an unknown model.

``server.reply_text`` is the model's answer in every API shape (Anthropic streamed or not, Responses, Gemini streamed
or not, Chat streamed or not), e.g. a reviewer's JSON verdict; Gemini CLI's own JSON-mode helper calls keep their
fixed JSON answer.

``fail_first(n, mode)`` makes the next ``n`` generation requests answer as ``mode`` (default ``"529"``) and every
later one succeed: one counter per server, for "a transient error, then the retry works" tests.

Only the generation endpoints follow ``mode``; token counting always succeeds. Error texts end in "(fake)".
Anthropic answers carry a ``request-id`` header; the OpenAI ones no ``x-request-id`` (Codex would append
", request id: ..." to its error messages, which the captures do not have).
Stdlib only; binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import secrets
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MODES = ("ok", "429", "quota", "500", "529", "bad_key", "bad_request", "model_not_found")

# Keys of FakeProvider.calls: one per API, counting generation requests only.
API_ANTHROPIC = "anthropic"
API_RESPONSES = "responses"
API_GEMINI = "gemini"
API_CHAT = "chat"
APIS = (API_ANTHROPIC, API_RESPONSES, API_GEMINI, API_CHAT)

REPLY_TEXT = "hi"
RETRY_AFTER_SECONDS = 1

# Anthropic Messages usage (input_tokens excludes the cache reads and writes).
ANTHROPIC_INPUT_TOKENS = 123
ANTHROPIC_CACHE_CREATION_INPUT_TOKENS = 45
ANTHROPIC_CACHE_READ_INPUT_TOKENS = 67
ANTHROPIC_OUTPUT_TOKENS = 9
ANTHROPIC_COUNT_TOKENS = 42

# OpenAI Responses usage (input_tokens includes the cached ones, output_tokens the reasoning ones).
RESPONSES_INPUT_TOKENS = 111
RESPONSES_CACHED_INPUT_TOKENS = 22
RESPONSES_OUTPUT_TOKENS = 33
RESPONSES_REASONING_OUTPUT_TOKENS = 4
RESPONSES_TOTAL_TOKENS = RESPONSES_INPUT_TOKENS + RESPONSES_OUTPUT_TOKENS

# Gemini usageMetadata.
GEMINI_PROMPT_TOKENS = 101
GEMINI_CANDIDATES_TOKENS = 7
GEMINI_CACHED_TOKENS = 0
GEMINI_THOUGHTS_TOKENS = 0
GEMINI_TOTAL_TOKENS = GEMINI_PROMPT_TOKENS + GEMINI_CANDIDATES_TOKENS + GEMINI_THOUGHTS_TOKENS

# OpenAI Chat Completions usage.
CHAT_PROMPT_TOKENS = 812
CHAT_COMPLETION_TOKENS = 5
CHAT_TOTAL_TOKENS = CHAT_PROMPT_TOKENS + CHAT_COMPLETION_TOKENS

# Error texts.
ANTHROPIC_RATE_LIMIT_MESSAGE = (
    "This request would exceed your organization's rate limit of 50 requests per minute (fake)."
)
ANTHROPIC_CREDIT_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits. (fake)"
)
ANTHROPIC_OVERLOADED_MESSAGE = "Overloaded (fake)"
ANTHROPIC_SERVER_ERROR_MESSAGE = "Internal server error (fake)"
OPENAI_RATE_LIMIT_MESSAGE = "Rate limit reached for requests (fake). Please try again in 1s."
OPENAI_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors. (fake)"
)
OPENAI_SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that! (fake)"
OPENAI_OVERLOADED_MESSAGE = "The engine is currently overloaded, please try again later. (fake)"
GEMINI_RATE_LIMIT_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n"
    "* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 2\n"
    "Please retry in 1s. (fake)"
)
GEMINI_DAILY_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n"
    "* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 250\n"
    "Please retry in 9h41m. (fake)"
)
GEMINI_SERVER_ERROR_MESSAGE = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting (fake)"
)
GEMINI_OVERLOADED_MESSAGE = "The model is overloaded. Please try again later. (fake)"
NOT_FOUND_MESSAGE = "Not found (fake)"
ANTHROPIC_BAD_KEY_MESSAGE = "invalid x-api-key (fake)"
ANTHROPIC_BAD_REQUEST_MESSAGE = "messages: at least one message is required (fake)"
OPENAI_BAD_KEY_MESSAGE = (
    "Incorrect API key provided: sk-fake***6789. You can find your API key at "
    "https://platform.openai.com/account/api-keys. (fake)"
)
OPENAI_BAD_REQUEST_MESSAGE = "Invalid value for 'input': expected a list of items. (fake)"
GEMINI_BAD_KEY_MESSAGE = "API key not valid. Please pass a valid API key. (fake)"
GEMINI_BAD_REQUEST_MESSAGE = 'Invalid JSON payload received. Unknown name "bogus": Cannot find field. (fake)'


def model_not_found_message(model: str) -> str:
    """Each API's wording differs; one text (with the model's name) is enough to classify on."""
    return f"The model `{model}` does not exist or you do not have access to it. (fake)"


_GEMINI_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (body decoded as JSON when possible, else None)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    api: str | None
    at: float


@dataclass(frozen=True)
class ErrorReply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _request_id(prefix: str = "req_fake_") -> str:
    return prefix + secrets.token_hex(6)


def _retry_headers() -> dict[str, str]:
    return {"retry-after": str(RETRY_AFTER_SECONDS)}


# --- per-API error bodies ------------------------------------------------------------------------------------------


def anthropic_error(mode: str, model: str = "claude-fake") -> ErrorReply:
    def body(kind: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": _request_id()}

    if mode == "bad_key":
        return ErrorReply(401, body("authentication_error", ANTHROPIC_BAD_KEY_MESSAGE))
    if mode == "bad_request":
        return ErrorReply(400, body("invalid_request_error", ANTHROPIC_BAD_REQUEST_MESSAGE))
    if mode == "model_not_found":
        return ErrorReply(404, body("not_found_error", f"model: {model} (fake)"))

    if mode == "429":
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + RETRY_AFTER_SECONDS))
        headers = {
            **_retry_headers(),
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": reset,
        }
        return ErrorReply(429, body("rate_limit_error", ANTHROPIC_RATE_LIMIT_MESSAGE), headers)
    if mode == "quota":
        return ErrorReply(400, body("invalid_request_error", ANTHROPIC_CREDIT_MESSAGE))
    if mode == "529":
        return ErrorReply(529, body("overloaded_error", ANTHROPIC_OVERLOADED_MESSAGE), _retry_headers())
    return ErrorReply(500, body("api_error", ANTHROPIC_SERVER_ERROR_MESSAGE))


def openai_error(mode: str, model: str = "fake") -> ErrorReply:
    def body(message: str, kind: str, code: str | None) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    if mode == "bad_key":
        return ErrorReply(401, body(OPENAI_BAD_KEY_MESSAGE, "invalid_request_error", "invalid_api_key"))
    if mode == "bad_request":
        return ErrorReply(400, body(OPENAI_BAD_REQUEST_MESSAGE, "invalid_request_error", None))
    if mode == "model_not_found":
        return ErrorReply(404, body(model_not_found_message(model), "invalid_request_error", "model_not_found"))

    if mode == "429":
        headers = {
            **_retry_headers(),
            "x-ratelimit-limit-requests": "50",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{RETRY_AFTER_SECONDS}s",
        }
        return ErrorReply(429, body(OPENAI_RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded"), headers)
    if mode == "quota":
        return ErrorReply(429, body(OPENAI_QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota"))
    if mode == "529":
        return ErrorReply(503, body(OPENAI_OVERLOADED_MESSAGE, "server_error", None), _retry_headers())
    return ErrorReply(500, body(OPENAI_SERVER_ERROR_MESSAGE, "server_error", None))


def gemini_error(mode: str, model: str = "gemini-fake") -> ErrorReply:
    def body(code: int, status: str, message: str, details: list[dict[str, Any]]) -> dict[str, Any]:
        return {"error": {"code": code, "message": message, "status": status, "details": details}}

    if mode == "bad_key":
        # The real API answers a wrong key with 400, not 401: only the text and the reason say "auth".
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": GEMINI_BAD_KEY_MESSAGE,
            },
        ]
        return ErrorReply(400, body(400, "INVALID_ARGUMENT", GEMINI_BAD_KEY_MESSAGE, details))
    if mode == "bad_request":
        return ErrorReply(400, body(400, "INVALID_ARGUMENT", GEMINI_BAD_REQUEST_MESSAGE, []))
    if mode == "model_not_found":
        message = (
            f"models/{model} is not found for API version v1beta, or is not supported for generateContent. "
            "Call ListModels to see the list of available models and their supported methods. (fake)"
        )
        return ErrorReply(404, body(404, "NOT_FOUND", message, []))

    def quota_details(quota_id: str, limit: str, retry_delay: str) -> list[dict[str, Any]]:
        return [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": _GEMINI_METRIC,
                        "quotaId": quota_id,
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                        "quotaValue": limit,
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
        ]

    if mode == "429":
        details = quota_details("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "2", f"{RETRY_AFTER_SECONDS}s")
        return ErrorReply(429, body(429, "RESOURCE_EXHAUSTED", GEMINI_RATE_LIMIT_MESSAGE, details), _retry_headers())
    if mode == "quota":
        details = quota_details("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "250", "34860s")
        return ErrorReply(429, body(429, "RESOURCE_EXHAUSTED", GEMINI_DAILY_QUOTA_MESSAGE, details))
    if mode == "529":
        return ErrorReply(503, body(503, "UNAVAILABLE", GEMINI_OVERLOADED_MESSAGE, []), _retry_headers())
    return ErrorReply(500, body(500, "INTERNAL", GEMINI_SERVER_ERROR_MESSAGE, []))


# --- success bodies ------------------------------------------------------------------------------------------------


def _sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def anthropic_usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": ANTHROPIC_INPUT_TOKENS,
        "cache_creation_input_tokens": ANTHROPIC_CACHE_CREATION_INPUT_TOKENS,
        "cache_read_input_tokens": ANTHROPIC_CACHE_READ_INPUT_TOKENS,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def anthropic_message(model: str, text: str = REPLY_TEXT) -> dict[str, Any]:
    return {
        "id": "msg_fake_" + secrets.token_hex(8),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(ANTHROPIC_OUTPUT_TOKENS),
    }


def anthropic_stream(model: str, text: str = REPLY_TEXT) -> Iterator[bytes]:
    message = anthropic_message(model, text)
    start = {**message, "content": [], "stop_reason": None, "usage": anthropic_usage(1)}
    yield _sse("message_start", {"type": "message_start", "message": start})
    yield _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield _sse("ping", {"type": "ping"})
    yield _sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": ANTHROPIC_INPUT_TOKENS,
                "cache_creation_input_tokens": ANTHROPIC_CACHE_CREATION_INPUT_TOKENS,
                "cache_read_input_tokens": ANTHROPIC_CACHE_READ_INPUT_TOKENS,
                "output_tokens": ANTHROPIC_OUTPUT_TOKENS,
            },
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


def responses_usage() -> dict[str, Any]:
    return {
        "input_tokens": RESPONSES_INPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": RESPONSES_CACHED_INPUT_TOKENS},
        "output_tokens": RESPONSES_OUTPUT_TOKENS,
        "output_tokens_details": {"reasoning_tokens": RESPONSES_REASONING_OUTPUT_TOKENS},
        "total_tokens": RESPONSES_TOTAL_TOKENS,
    }


def responses_stream(model: str, text: str = REPLY_TEXT) -> Iterator[bytes]:
    response_id = "resp_fake_" + secrets.token_hex(8)
    item_id = "msg_fake_" + secrets.token_hex(8)
    created = int(time.time())
    base = {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "model": model,
        "output": [],
        "status": "in_progress",
        "usage": None,
    }
    text_part = {"type": "output_text", "text": text, "annotations": []}
    item_done = {"id": item_id, "type": "message", "role": "assistant", "status": "completed", "content": [text_part]}
    seq = iter(range(1000))

    def event(kind: str, **payload: Any) -> bytes:
        return _sse(kind, {"type": kind, "sequence_number": next(seq), **payload})

    yield event("response.created", response=base)
    yield event("response.in_progress", response=base)
    yield event(
        "response.output_item.added",
        output_index=0,
        item={**item_done, "status": "in_progress", "content": []},
    )
    yield event(
        "response.content_part.added",
        item_id=item_id,
        output_index=0,
        content_index=0,
        part={**text_part, "text": ""},
    )
    yield event("response.output_text.delta", item_id=item_id, output_index=0, content_index=0, delta=text)
    yield event("response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=text)
    yield event("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=text_part)
    yield event("response.output_item.done", output_index=0, item=item_done)
    done = {**base, "status": "completed", "output": [item_done], "usage": responses_usage()}
    yield event("response.completed", response=done)


def gemini_usage() -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": GEMINI_PROMPT_TOKENS,
        "candidatesTokenCount": GEMINI_CANDIDATES_TOKENS,
        "totalTokenCount": GEMINI_TOTAL_TOKENS,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": GEMINI_PROMPT_TOKENS}],
    }
    if GEMINI_CACHED_TOKENS:
        usage["cachedContentTokenCount"] = GEMINI_CACHED_TOKENS
    if GEMINI_THOUGHTS_TOKENS:
        usage["thoughtsTokenCount"] = GEMINI_THOUGHTS_TOKENS
    return usage


def _gemini_chunk(model: str, text: str, final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    chunk: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": model,
        "responseId": "fake" + secrets.token_hex(6),
    }
    if final:
        candidate["finishReason"] = "STOP"
        chunk["usageMetadata"] = gemini_usage()
    return chunk


def gemini_text_for(body: Any, text: str = REPLY_TEXT) -> str:
    """``text``; JSON of their own shape when the request asks for JSON (Gemini CLI's router and helper calls)."""
    config = body.get("generationConfig") if isinstance(body, dict) else None
    if isinstance(config, dict) and config.get("responseMimeType") == "application/json":
        return json.dumps(
            {
                "reasoning": "Simple greeting (fake).",
                "model_choice": "flash",
                "complexity_reasoning": "Simple greeting (fake).",
                "complexity_score": 1,
                "next_speaker": "user",
            }
        )
    return text


def gemini_response(model: str, text: str) -> dict[str, Any]:
    return _gemini_chunk(model, text, final=True)


def gemini_stream(model: str, text: str) -> Iterator[bytes]:
    parts = [text[: len(text) // 2], text[len(text) // 2 :]] if len(text) > 1 else [text]
    for index, part in enumerate(parts):
        chunk = _gemini_chunk(model, part, final=index == len(parts) - 1)
        yield f"data: {json.dumps(chunk, separators=(',', ':'))}\r\n\r\n".encode()


def chat_usage() -> dict[str, Any]:
    return {
        "prompt_tokens": CHAT_PROMPT_TOKENS,
        "completion_tokens": CHAT_COMPLETION_TOKENS,
        "total_tokens": CHAT_TOTAL_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def chat_completion(model: str, text: str = REPLY_TEXT) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake" + secrets.token_hex(6),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"},
        ],
        "usage": chat_usage(),
    }


def chat_stream(model: str, include_usage: bool, text: str = REPLY_TEXT) -> Iterator[bytes]:
    base = {
        "id": "chatcmpl-fake" + secrets.token_hex(6),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return _sse(None, {**base, "choices": choices, **extra})

    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if include_usage:
        yield chunk([], usage=chat_usage())
    yield b"data: [DONE]\n\n"


# --- the server ----------------------------------------------------------------------------------------------------


def _decode_body(raw: bytes, encoding: str) -> Any:
    try:
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding not in ("", "identity"):
            return None
        return json.loads(raw) if raw else None
    except (ValueError, OSError, zlib.error):
        return None


class _Handler(BaseHTTPRequestHandler):
    server: FakeProvider
    protocol_version = "HTTP/1.1"
    server_version = "fake-provider/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # Every method goes through one dispatcher.
    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_CONNECT(self) -> None:
        # A client that uses this server as its HTTPS proxy wanted an outside host: refuse and remember it.
        self.server.record_proxy_attempt(self.path)
        self._send_json(403, {"error": {"message": "Blocked by fake proxy (fake)", "target": self.path}})
        self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        raw = self._read_body()
        if self.path.startswith(("http://", "https://")):
            # Absolute URI: someone is using us as a plain-HTTP proxy for an outside host.
            self.server.record_proxy_attempt(self.path)
            self._send_json(403, {"error": {"message": "Blocked by fake proxy (fake)", "target": self.path}})
            return
        url = urlsplit(self.path)
        path = url.path
        query = parse_qs(url.query)
        body = _decode_body(raw, self.headers.get("Content-Encoding", "").lower())
        api = _api_for(self.command, path)
        self.server.record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                query=query,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                api=api,
                at=time.monotonic(),
            )
        )
        request = body if isinstance(body, dict) else {}
        if api is None:
            self._unknown_or_aux(path)
            return
        # Decided on arrival: a request still hanging when a later test sets up fail_first does not take its failure.
        mode = self.server.mode_for_next_call()
        if self.server.latency:
            time.sleep(self.server.latency)
        if mode != "ok":
            model = str(request.get("model") or "")
            if api == API_GEMINI:
                model = path.rsplit("/", 1)[-1].partition(":")[0]
            error = {
                API_ANTHROPIC: anthropic_error,
                API_RESPONSES: openai_error,
                API_CHAT: openai_error,
                API_GEMINI: gemini_error,
            }[api](mode, model or "fake")
            if self.server.echo_errors:
                quoted = raw[:300].decode("utf-8", "replace")
                error.body["error"]["message"] = f"{error.body['error']['message']} (got: {quoted})"
            self._send_json(error.status, error.body, error.headers)
            return
        text = self.server.reply_text
        if api == API_ANTHROPIC:
            model = str(request.get("model") or "claude-fake")
            if request.get("stream"):
                self._send_sse(anthropic_stream(model, text))
            else:
                self._send_json(200, anthropic_message(model, text))
        elif api == API_RESPONSES:
            self._send_sse(responses_stream(str(request.get("model") or "fake-model"), text))
        elif api == API_CHAT:
            model = str(request.get("model") or "fake")
            if request.get("stream"):
                options = request.get("stream_options")
                include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
                self._send_sse(chat_stream(model, include_usage, text))
            else:
                self._send_json(200, chat_completion(model, text))
        else:
            model, _, method = path.rsplit("/", 1)[-1].partition(":")
            text = gemini_text_for(request, text)
            if method == "streamGenerateContent":
                self._send_sse(gemini_stream(model, text))
            else:
                self._send_json(200, gemini_response(model, text))

    def _unknown_or_aux(self, path: str) -> None:
        if self.command == "POST" and path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": ANTHROPIC_COUNT_TOKENS})
        elif self.command == "POST" and path.startswith("/v1beta/models/") and path.endswith(":countTokens"):
            self._send_json(200, {"totalTokens": GEMINI_PROMPT_TOKENS})
        elif path.startswith("/v1beta"):
            self._send_json(404, {"error": {"code": 404, "message": NOT_FOUND_MESSAGE, "status": "NOT_FOUND"}})
        elif path.startswith("/v1/messages") or "anthropic-version" in self.headers:
            body = {"type": "error", "error": {"type": "not_found_error", "message": NOT_FOUND_MESSAGE}}
            self._send_json(404, body)
        else:
            self._send_json(404, {"error": {"message": NOT_FOUND_MESSAGE, "type": "invalid_request_error"}})

    # --- writers ---

    def _common_headers(self) -> None:
        # Anthropic's request id (Claude Code shows it as request_id). No x-request-id for the OpenAI APIs: Codex
        # would append ", request id: …" to its error messages, unlike in the captures.
        if self.path.startswith("/v1/messages"):
            self.send_header("request-id", _request_id())

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._common_headers()
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_sse(self, events: Iterable[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._common_headers()
        self.end_headers()
        try:
            for event in events:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _api_for(method: str, path: str) -> str | None:
    if method != "POST":
        return None
    if path == "/v1/messages":
        return API_ANTHROPIC
    if path in ("/v1/responses", "/responses"):
        return API_RESPONSES
    if path in ("/v1/chat/completions", "/chat/completions"):
        return API_CHAT
    if path.startswith("/v1beta/models/") and path.endswith((":streamGenerateContent", ":generateContent")):
        return API_GEMINI
    return None


class FakeProvider(ThreadingHTTPServer):
    """The server. ``mode`` and ``reply_text`` may be changed at any time; ``calls``, ``paths``, ``requests`` are
    live views."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str = "ok", port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self._lock = threading.Lock()
        self._mode = "ok"
        self.mode = mode
        self.reply_text = REPLY_TEXT  # what the model answers in "ok" mode; reset() leaves it, like mode
        self.latency = 0.0  # seconds each generation request waits before its answer (calls in flight together)
        # An error's message quotes the start of the request, as some servers' validation errors do (a local
        # OpenAI-compatible server's "invalid value …: <what it got>").
        self.echo_errors = False
        self.calls: dict[str, int] = dict.fromkeys(APIS, 0)
        self.paths: list[str] = []
        self.requests: list[RecordedRequest] = []
        self.proxy_attempts: list[str] = []
        self.first_call_at: dict[str, float] = {}
        self._failures_left = 0
        self._failure_mode = "529"
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {value!r}")
        self._mode = value

    def fail_first(self, times: int, mode: str = "529") -> None:
        """The next ``times`` generation requests answer as ``mode``; then ``self.mode`` applies again."""
        if mode not in MODES or mode == "ok":
            raise ValueError(f"failure mode must be one of {MODES[1:]}, not {mode!r}")
        with self._lock:
            self._failures_left, self._failure_mode = times, mode

    @property
    def failures_left(self) -> int:
        with self._lock:
            return self._failures_left

    def mode_for_next_call(self) -> str:
        """The mode one generation request is answered in (spends one of fail_first's failures)."""
        with self._lock:
            if self._failures_left > 0:
                self._failures_left -= 1
                return self._failure_mode
            return self._mode

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` without a trailing slash or API prefix."""
        return f"http://127.0.0.1:{self.port}"

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.paths.append(f"{request.method} {request.path}")
            self.requests.append(request)
            if request.api is not None:
                self.calls[request.api] += 1
                self.first_call_at.setdefault(request.api, request.at)

    def record_proxy_attempt(self, target: str) -> None:
        with self._lock:
            self.proxy_attempts.append(target)

    def reset(self, mode: str | None = None) -> None:
        """Forget everything recorded so far (and optionally switch mode)."""
        with self._lock:
            if mode is not None:
                self.mode = mode
            self.calls = dict.fromkeys(APIS, 0)
            self.paths = []
            self.requests = []
            self.proxy_attempts = []
            self.first_call_at = {}
            self._failures_left = 0

    def requests_for(self, api: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.api == api]

    def start(self) -> FakeProvider:
        self._thread = threading.Thread(target=self.serve_forever, name="fake-provider", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@contextlib.contextmanager
def running_fake_provider(mode: str = "ok") -> Iterator[FakeProvider]:
    """Start a FakeProvider on 127.0.0.1 (free port) in a thread; stop it on exit."""
    server = FakeProvider(mode).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    """By hand: `python -m tests.integration.fake_provider [MODE] [--port N] [--latency S]`; prints its base URL."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.fake_provider",
        description="A loopback provider speaking the OpenAI, Anthropic and Gemini APIs.",
    )
    parser.add_argument("mode", nargs="?", default="ok", choices=MODES, help="how it answers (default ok)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each answer waits (calls in flight)")
    args = parser.parse_args(argv)
    provider = FakeProvider(args.mode, args.port).start()
    provider.latency = args.latency
    print(provider.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        provider.stop()


if __name__ == "__main__":
    main()
