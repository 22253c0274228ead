"""The gateway's JSON shapes: routes, keys (never the key itself but once, at `key add`), calls, stats."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetd.records.gateway import ClientKey, GatewayCall, Route
from fleetd.timefmt import to_iso

if TYPE_CHECKING:
    from fleetd.store.gateway_stats import GatewayStats, GatewayStatsRow


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


def key_json(key: ClientKey, plain: str | None = None, spent: float | None = None) -> dict[str, Any]:
    """A key as the API shows it; `spent`: what its calls cost in the last 24 h (`key list`)."""
    answer: dict[str, Any] = {
        "name": key.name,
        "routes": list(key.routes) if key.routes is not None else None,
        "daily_cost": key.daily_cost,
        "created_at": to_iso(key.created_at),
    }
    if spent is not None:
        answer["spent_24h"] = spent
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
        # Cut by a crash or the stop's end, or refused before any upstream: none to speak of (it said 0 ms).
        "latency_ms": None if call.outcome in ("interrupted", "rejected") else call.latency_ms,
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


def gateway_stats(stats: GatewayStats) -> dict[str, Any]:
    return {"source": "gateway", "by": list(stats.by), "groups": [_figures(row) for row in stats.groups],
            "total": _figures(stats.total)}  # fmt: skip


def _figures(row: GatewayStatsRow) -> dict[str, Any]:
    return {
        "group": row.group,
        "calls": row.calls,
        "succeeded": row.succeeded,
        "fallbacks": row.fallbacks,
        "streamed": row.streamed,
        "stream_errors": row.stream_errors,
        "rejected": row.rejected,
        # Of the calls fleetd let in: a key's own cap refusing one is no provider's failure (it counted as one).
        "success_rate": round(row.succeeded / let_in, 4) if (let_in := row.calls - row.rejected) else None,
        "fallback_rate": round(row.fallbacks / let_in, 4) if let_in else None,
        "p50_latency_ms": row.p50_latency_ms,
        "p95_latency_ms": row.p95_latency_ms,
        "p50_ttft_ms": row.p50_ttft_ms,
        "tokens": {
            "input": row.input_tokens,
            "output": row.output_tokens,
            "cache_read": row.cache_read_tokens,
            "cache_write": row.cache_write_tokens,
        },
        "cost_usd": round(row.cost_usd, 6),
    }
