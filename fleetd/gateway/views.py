"""The gateway's JSON shapes: routes, keys (never the key itself but once, at `key add`), calls, stats."""

from __future__ import annotations

import math
from typing import Any

from fleetd.records.gateway import ClientKey, GatewayCall, Route
from fleetd.timefmt import to_iso


def route_json(route: Route) -> dict[str, Any]:
    return {
        "name": route.name,
        "api": route.api,
        "chain": [{"profile": s.profiles[0] if s.profiles else None, "model": s.model} for s in route.chain],
        "chain_text": ",".join(s.describe() for s in route.chain),
        "timeout_s": route.timeout_s,
        "log_bodies": route.log_bodies,
        "created_at": to_iso(route.created_at),
    }


def key_json(key: ClientKey, plain: str | None = None) -> dict[str, Any]:
    answer = {
        "name": key.name,
        "routes": list(key.routes) if key.routes is not None else None,
        "daily_cost": key.daily_cost,
        "created_at": to_iso(key.created_at),
    }
    if plain is not None:
        answer["key"] = plain  # shown this once; only its hash is kept
    return answer


def call_json(call: GatewayCall) -> dict[str, Any]:
    answer = {
        "id": call.id,
        "at": to_iso(call.at),
        "key": call.key,
        "route": call.route,
        "api": call.api,
        "streamed": call.streamed,
        "outcome": call.outcome,
        "status": call.status,
        "error": call.error,
        "path": call.path,
        "profile": call.profile,
        "model": call.model,
        "ttft_ms": call.ttft_ms,
        "latency_ms": call.latency_ms,
        "tokens": {
            "input": call.input_tokens,
            "output": call.output_tokens,
            "cache_read": call.cache_read_tokens,
            "cache_write": call.cache_write_tokens,
        },
        "cost_usd": round(call.cost_usd, 6),
    }
    if call.request_body is not None or call.response_body is not None:
        answer["request_body"], answer["response_body"] = call.request_body, call.response_body
    return answer


def gateway_stats(calls: list[GatewayCall], by: tuple[str, ...]) -> dict[str, Any]:
    groups: dict[tuple[Any, ...], list[GatewayCall]] = {}
    for call in calls:
        groups.setdefault(tuple(_value(call, k) for k in by), []).append(call)
    rows = [{"group": dict(zip(by, key, strict=True)), **_figures(members)} for key, members in sorted(
        groups.items(), key=lambda kv: tuple("" if v is None else str(v) for v in kv[0]))]  # fmt: skip
    return {"source": "gateway", "by": list(by), "groups": rows, "total": {"group": {}, **_figures(calls)}}


def _value(call: GatewayCall, key: str) -> Any:
    return {"route": call.route, "profile": call.profile, "model": call.model, "key": call.key, "api": call.api}[key]


def _figures(calls: list[GatewayCall]) -> dict[str, Any]:
    succeeded = sum(1 for c in calls if c.outcome == "succeeded")
    fallbacks = sum(1 for c in calls if len({p["profile"] for p in c.path}) > 1)
    latencies = sorted(c.latency_ms for c in calls)
    ttfts = sorted(c.ttft_ms for c in calls if c.ttft_ms is not None)
    return {
        "calls": len(calls),
        "succeeded": succeeded,
        "fallbacks": fallbacks,
        "streamed": sum(1 for c in calls if c.streamed),
        "stream_errors": sum(1 for c in calls if c.outcome == "stream_error"),
        "success_rate": round(succeeded / len(calls), 4) if calls else None,
        "fallback_rate": round(fallbacks / len(calls), 4) if calls else None,
        "p50_latency_ms": _rank(latencies, 0.5),
        "p95_latency_ms": _rank(latencies, 0.95),
        "p50_ttft_ms": _rank(ttfts, 0.5),
        "tokens": {
            "input": sum(c.input_tokens for c in calls),
            "output": sum(c.output_tokens for c in calls),
            "cache_read": sum(c.cache_read_tokens for c in calls),
            "cache_write": sum(c.cache_write_tokens for c in calls),
        },
        "cost_usd": round(sum(c.cost_usd for c in calls), 6),
    }


def _rank(values: list[int], q: float) -> int | None:
    """Nearest-rank percentile."""
    return values[max(0, math.ceil(q * len(values)) - 1)] if values else None
