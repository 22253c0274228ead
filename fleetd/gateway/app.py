"""The gateway's HTTP side (TCP, for any client): authenticate the key, cap the body, find the route,
hand the request to the proxy. Every refusal is in the protocol's own error shape."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from fleetd.gateway.protocols import GatewayError, WireProtocol, get_protocol
from fleetd.gateway.protocols.messages import COUNT_TOKENS_PATH
from fleetd.gateway.proxy import TOO_DEEP, Request, answer_the_stop
from fleetd.records.gateway import GatewayCall

if TYPE_CHECKING:
    from fleetd.gateway.service import GatewayService

log = logging.getLogger("fleetd.gateway")
MAX_BODY = 16 * 1024 * 1024
STOPPING = "the fleetd gateway is stopping: the call was cut short; try again once it is back"
STOPPING_RETRY_S = 5.0
DRAIN_LIMIT = 4 * MAX_BODY  # an oversized body is read (and dropped) this far, so the client sees the 413


def presented_key(headers: Any) -> str | None:
    """The gateway key, as `x-api-key` (Anthropic clients) or `Authorization: Bearer` (OpenAI clients)."""
    if key := headers.get("x-api-key"):
        return str(key)
    scheme, _, value = str(headers.get("authorization") or "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def client_gone(request: HttpRequest) -> Callable[[], Awaitable[bool]]:
    """Whether the request's client has hung up. uvicorn's cycle keeps a flag its connection_lost sets: read as it is.
    Starlette's `is_disconnected` polls `receive` inside a cancelled scope, which cost ~9 % of the gateway's
    throughput asked once per plain answer; it stands in under any other server."""
    cycle = getattr(request.receive, "__self__", None)  # uvicorn's RequestResponseCycle
    if isinstance(getattr(cycle, "disconnected", None), bool):

        async def flag() -> bool:
            return bool(cycle.disconnected)  # type: ignore[union-attr]

        return flag
    return request.is_disconnected


def create_gateway_app(service: GatewayService) -> Starlette:
    def refusal(protocol: WireProtocol, error: GatewayError) -> Response:
        headers = {"retry-after": str(max(1, round(error.retry_after)))} if error.retry_after else {}
        return Response(protocol.error_bytes(error.kind, error.message), error.status, headers=headers,
                        media_type="application/json")  # fmt: skip

    async def read_body(request: HttpRequest) -> bytes:
        data = bytearray()
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= MAX_BODY:
                data += chunk
            elif size > DRAIN_LIMIT:
                break
        if size > MAX_BODY:
            raise GatewayError("too_large", f"request body over {MAX_BODY // (1024 * 1024)} MB")
        return bytes(data)

    async def handle(request: HttpRequest, api: str, path: str, counted: bool = True) -> Response:
        protocol = get_protocol(api)
        try:
            key = service.authenticate(presented_key(request.headers))
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except RecursionError:
                raise GatewayError("bad_request", TOO_DEEP) from None
            except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer past Python's 4,300 digits
                raise GatewayError("bad_request", "the request body is not valid JSON") from None
            if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                raise GatewayError("bad_request", 'the request body must be a JSON object with a "model"')
            name = body["model"]
            route = service.route(name)
            if route is None:
                raise GatewayError("not_found", f"no route named {name!r} (fleetd route list)")
            if not key.may_use(route.name):
                raise GatewayError("forbidden", f"gateway key {key.name} may not use route {route.name}")
            if route.api != api:
                raise GatewayError("bad_request", f"route {route.name} speaks the {route.api} API, not {api}")
            hold = None
            if counted:
                over, hold = await service.admit(key, route)
                if over is not None:
                    await service.record(GatewayCall(service.clock(), key.name, route.name, api,
                                                     bool(body.get("stream")), outcome="rejected", status=429,
                                                     error=over.message))  # fmt: skip
                    raise over
        except GatewayError as e:
            return refusal(protocol, e)
        forward = Request(protocol, route, key, body, raw, request.headers, path, request.url.query, counted, hold,
                          client_gone(request))  # fmt: skip
        try:
            return await service.proxy.forward(forward)  # type: ignore[return-value]
        except GatewayError as e:  # found on the way upstream, before any byte went to the client
            service.proxy.holds.release(hold)
            return refusal(protocol, e)
        except asyncio.CancelledError:
            if not service.proxy.stopping:
                raise
            # The stop's grace ran out (uvicorn cancels what is left): the client gets an answer it can act on, not
            # uvicorn's plain 500 and a traceback in the log. The call stays under way in the journal: `interrupted`.
            answer_the_stop()
            service.proxy.holds.release(hold)
            return refusal(protocol, GatewayError("unavailable", STOPPING, retry_after=STOPPING_RETRY_S))
        except Exception:  # a bug's last stop: one line in the API's shape for the client, the traceback logged
            service.proxy.holds.release(hold)
            log.exception("gateway: internal error on route %s", route.name)
            return refusal(protocol, GatewayError("upstream", "internal error in the fleetd gateway; see its log"))

    async def chat(request: HttpRequest) -> Response:
        return await handle(request, "chat", get_protocol("chat").path)

    async def responses(request: HttpRequest) -> Response:
        return await handle(request, "responses", get_protocol("responses").path)

    async def messages(request: HttpRequest) -> Response:
        return await handle(request, "messages", get_protocol("messages").path)

    async def count_tokens(request: HttpRequest) -> Response:
        return await handle(request, "messages", COUNT_TOKENS_PATH, counted=False)

    async def models(request: HttpRequest) -> Response:
        try:
            key = service.authenticate(presented_key(request.headers))
        except GatewayError as e:
            return refusal(get_protocol("chat"), e)
        created = int(time.time())
        data = [{"id": r.name, "object": "model", "created": created, "owned_by": "fleetd"}
                for r in service.routes_now() if key.may_use(r.name)]  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    async def refused_path(request: HttpRequest, exc: Exception) -> Response:
        api = "messages" if request.url.path.startswith("/v1/messages") else "chat"
        if getattr(exc, "status_code", 404) == 405:  # not "model_not_found": the path is one, the method is not
            allowed = (getattr(exc, "headers", None) or {}).get("Allow", "another method")
            error = GatewayError("wrong_method", f"{request.method} {request.url.path}: not allowed; use {allowed}")
        else:
            error = GatewayError("no_endpoint", f"{request.method} {request.url.path}: not a gateway endpoint")
        return refusal(get_protocol(api), error)

    routes = [
        HttpRoute("/v1/chat/completions", chat, methods=["POST"]),
        HttpRoute("/v1/responses", responses, methods=["POST"]),
        HttpRoute("/v1/messages", messages, methods=["POST"]),
        HttpRoute("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        HttpRoute("/v1/models", models, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: refused_path, 405: refused_path})
