"""The readable run log: each attempt's lines through its own backend's renderer, chunk boundaries anywhere,
fleetd's lines and renderer-less backends byte for byte, and no key decoded out of a JSON escape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from fleetd.daemon.logview import readable
from fleetd.loops.scrub import Scrubber

KEY = "sk-test-0123456789abcdef"
ESCAPED = "\\u0073" + KEY[1:]  # how a CLI's JSON may carry the key: not the key byte for byte

LOG = (
    b"[fleetd] route: attempt 1: cc (step 1: claude_code)\n"
    + json.dumps({"type": "system", "subtype": "init", "session_id": "s1", "model": "m", "cwd": "/w"}).encode()
    + b"\n"
    + json.dumps({"type": "assistant", "message": {"content": [{"type": "tool_use", "name": "Bash",
                                                                 "input": {"command": "pytest -q"}}]}}).encode()
    + b"\n"
    + ('{"type":"assistant","message":{"content":[{"type":"text","text":"key ' + ESCAPED + '"}]}}\n').encode()
    + b"[fleetd] route: attempt 2: sh (step 2: command)\n"
    + b'{"not": "rendered"}\n\xff raw bytes\n'
    + b"[fleetd] route: attempt 3: cx (step 3: codex)\n"
    + b'{"type":"item.completed","item":{"type":"agent_message","text":"done"}}\n'
    + b"tail without newline"
)  # fmt: skip
EXPECTED = (
    b"[fleetd] route: attempt 1: cc (step 1: claude_code)\n"
    b"session s1 (m, in /w)\n" + "→ Bash: pytest -q\n".encode() + b"key [REDACTED]\n"
    b"[fleetd] route: attempt 2: sh (step 2: command)\n"
    b'{"not": "rendered"}\n\xff raw bytes\n'
    b"[fleetd] route: attempt 3: cx (step 3: codex)\n"
    b"done\n"
    b"tail without newline\n"  # rendered text always ends its lines
)
BACKENDS = {1: "claude_code", 2: "command", 3: "codex"}


async def _render(chunk_size: int, backends: dict[int, str]) -> bytes:
    async def source() -> AsyncIterator[bytes]:
        for i in range(0, len(LOG), chunk_size):
            yield LOG[i : i + chunk_size]

    async def backend_of(number: int) -> str | None:
        return backends.get(number)

    out = readable(source(), backend="claude_code", backend_of=backend_of, scrubber=Scrubber([KEY]))
    return b"".join([chunk async for chunk in out])


@pytest.mark.parametrize("chunk_size", [1, 7, 64, len(LOG)])
def test_each_attempt_is_rendered_by_its_backend(chunk_size: int) -> None:
    assert asyncio.run(_render(chunk_size, BACKENDS)) == EXPECTED


def test_an_attempt_of_an_unknown_backend_passes_through() -> None:
    shown = asyncio.run(_render(64, {1: "claude_code", 2: "command", 3: "no_such_backend"}))
    assert b'{"type":"item.completed"' in shown
