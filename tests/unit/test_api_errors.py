"""How the API answers a genuine internal error: one JSON 500 and one traceback in the log.

Starlette's handler for `Exception` re-raises after answering (so uvicorn logged each traceback a
second time); httpx's ASGI transport re-raises what reaches the server, which makes that visible.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from fleetd.daemon.api import create_app


def request(ctx: object, method: str, path: str, body: bytes = b"") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(cast(Any, ctx)))
        async with httpx.AsyncClient(transport=transport, base_url="http://fleetd") as client:
            return await client.request(method, path, content=body)

    return asyncio.run(go())


class Broken:
    """A store (and its database) whose every read fails."""

    def __init__(self) -> None:
        self.db = self

    async def data_version(self) -> int:
        raise RuntimeError("the disk caught fire")

    async def list(self) -> list[Any]:
        raise RuntimeError("the disk caught fire")


def test_an_internal_error_is_one_json_500_and_one_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        response = request(SimpleNamespace(loops=Broken(), runs=Broken()), "GET", "/v1/loops")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error (RuntimeError); see the daemon log"}
    }
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.getMessage() == "internal error on GET /v1/loops"


def test_bad_input_is_answered_without_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="fleetd"):
        response = request(SimpleNamespace(), "POST", "/v1/loops", b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_argument"
    assert not [r for r in caplog.records if r.name.startswith("fleetd")]
