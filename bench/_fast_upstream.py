"""A fast fake OpenAI Chat Completions upstream for bench/gateway.py: asyncio, HTTP/1.1 keep-alive, canned answers.

    python bench/_fast_upstream.py            # prints its port, serves until killed

tests/integration/fake_provider.py is a thread-per-connection stdlib server: fine for driving CLIs, but on two cores
it (not the gateway) would set the ceiling of a throughput figure. This one answers ``POST .../chat/completions``
from a single event loop with the same usage numbers as the test fake: JSON, or SSE (chunked) when the body says
``"stream": true`` (with a usage chunk when ``include_usage`` is asked for). Anything else: 404. Stdlib only.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

PROMPT_TOKENS, COMPLETION_TOKENS = 812, 5  # as tests/integration/fake_provider.py's CHAT_* constants
_USAGE = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
          "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}  # fmt: skip
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"]*)"')


def _completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": _USAGE,
        },
        separators=(",", ":"),
    ).encode()


def _stream(model: str, include_usage: bool) -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if include_usage:
        events.append({**base, "choices": [], "usage": _USAGE})
    body = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
    body += b"data: [DONE]\n\n"
    # One chunk per event would be closer to a real provider; the canned body in one chunk keeps this side cheap.
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(head.split(" ", 2), body)

    def _answer(self, request_line: list[str], body: bytes) -> None:
        assert self.transport is not None
        if len(request_line) < 2 or request_line[0] != "POST" or not request_line[1].endswith("/chat/completions"):
            payload = b'{"error":{"message":"Not found (fake)","type":"invalid_request_error"}}'
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))  # fmt: skip
            return
        found = _MODEL.search(body)
        model = found.group(1).decode() if found else "fake"
        if _STREAM.search(body):
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            self.transport.write(head + _stream(model, bool(_INCLUDE_USAGE.search(body))))
        else:
            payload = _completion(model)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))  # fmt: skip


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0, backlog=512)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
