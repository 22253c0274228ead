"""The gateway's tables: routes, client keys (hashes only), its listen setting, and the per-call log (whose
figures, `stats --source gateway`, come from rollups: store/gateway_stats.py)."""

from __future__ import annotations

import functools
import json
import sqlite3
from datetime import datetime
from typing import Any

import aiosqlite

from fleetd.errors import Conflict, NotFound
from fleetd.records.gateway import AttemptUse, ClientKey, GatewayCall, GatewaySetting, Route
from fleetd.records.loop import ChainStep
from fleetd.store.db import Database
from fleetd.store.gateway_stats import GatewayStats, GatewayStatsStore, add_to_rollups
from fleetd.store.usage import INSERT_ATTEMPT_USAGE_INTO
from fleetd.timefmt import from_iso, to_iso

_CALL_COLUMNS = (
    "at, key_name, route, api, streamed, outcome, status, error, path_json, profile, model, ttft_ms, latency_ms, "
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, request_body, response_body"
)


def _route(row: aiosqlite.Row) -> Route:
    return Route(
        name=row["name"],
        api=row["api"],
        chain=tuple(ChainStep.from_json(step) for step in json.loads(row["chain_json"])),
        timeout_s=row["timeout_s"],
        log_bodies=bool(row["log_bodies"]),
        created_at=from_iso(row["created_at"]),
    )


def _key(row: aiosqlite.Row) -> ClientKey:
    routes = json.loads(row["routes_json"]) if row["routes_json"] else None
    return ClientKey(row["name"], row["key_hash"], tuple(routes) if routes is not None else None, row["daily_cost"],
                     from_iso(row["created_at"]))  # fmt: skip


def _call(row: aiosqlite.Row) -> GatewayCall:
    return GatewayCall(
        at=from_iso(row["at"]),  # type: ignore[arg-type]
        key=row["key_name"], route=row["route"], api=row["api"], streamed=bool(row["streamed"]),
        outcome=row["outcome"], status=row["status"], error=row["error"], path=json.loads(row["path_json"]),
        profile=row["profile"], model=row["model"], ttft_ms=row["ttft_ms"], latency_ms=row["latency_ms"],
        input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"], cache_write_tokens=row["cache_write_tokens"],
        cost_usd=row["cost_usd"], request_body=row["request_body"], response_body=row["response_body"], id=row["id"],
    )  # fmt: skip


class GatewayStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._stats = GatewayStatsStore(db)  # keeps whole periods' histograms between queries

    # -- routes ------------------------------------------------------------------------------------

    async def add_route(self, route: Route) -> Route:
        try:
            async with self.db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO gateway_routes (name, api, chain_json, timeout_s, log_bodies, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (route.name, route.api, json.dumps([s.to_json() for s in route.chain]), route.timeout_s,
                     int(route.log_bodies), to_iso(route.created_at)),
                )  # fmt: skip
        except sqlite3.IntegrityError:
            raise Conflict(f"route {route.name!r} already exists") from None
        return route

    async def routes(self) -> list[Route]:
        return [_route(r) for r in await self.db.fetchall("SELECT * FROM gateway_routes ORDER BY name")]

    async def remove_route(self, name: str) -> None:
        async with self.db.transaction() as conn:
            cur = await conn.execute("DELETE FROM gateway_routes WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise NotFound(f"no route named {name!r}")

    # -- keys --------------------------------------------------------------------------------------

    async def add_key(self, key: ClientKey) -> ClientKey:
        try:
            async with self.db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO gateway_keys (name, key_hash, routes_json, daily_cost, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key.name, key.key_hash, json.dumps(list(key.routes)) if key.routes is not None else None,
                     key.daily_cost, to_iso(key.created_at)),
                )  # fmt: skip
        except sqlite3.IntegrityError:
            raise Conflict(f"gateway key {key.name!r} already exists") from None
        return key

    async def keys(self) -> list[ClientKey]:
        return [_key(r) for r in await self.db.fetchall("SELECT * FROM gateway_keys ORDER BY name")]

    async def remove_key(self, name: str) -> None:
        async with self.db.transaction() as conn:
            cur = await conn.execute("DELETE FROM gateway_keys WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise NotFound(f"no gateway key named {name!r}")

    # -- the listen setting ------------------------------------------------------------------------

    async def setting(self) -> GatewaySetting:
        row = await self.db.fetchone("SELECT listen, public FROM gateway_settings WHERE id = 1")
        return GatewaySetting(row["listen"], bool(row["public"])) if row else GatewaySetting()

    async def save_setting(self, setting: GatewaySetting, now: datetime) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO gateway_settings (id, listen, public, updated_at) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET listen = excluded.listen, public = excluded.public, "
                "updated_at = excluded.updated_at",
                (setting.listen, int(setting.public), to_iso(now)),
            )

    # -- calls -------------------------------------------------------------------------------------

    async def add_call(self, call: GatewayCall) -> None:
        await self.add_calls([call])

    async def add_calls(self, calls: list[GatewayCall]) -> None:
        """In one transaction, with what they add to the stats rollups (the gateway writes its calls in batches,
        after their answers). A call with an id keeps it (the journal gave it as the call started) and one the log
        has already is skipped; one without is numbered after the largest."""
        await self.db.write(functools.partial(_insert_calls, calls))

    async def replay(self, calls: list[GatewayCall], uses: list[AttemptUse]) -> set[int]:
        """What a kill -9 left in the gateway's journal (journal.py), in one transaction: the calls the log does not
        have, and each attempt's use its profile's records do not (of profiles that still exist). Returns the ids of
        the calls that were new."""

        def write(conn: sqlite3.Connection) -> set[int]:
            added = _insert_calls(calls, conn)
            conn.executemany(
                f"{INSERT_ATTEMPT_USAGE_INTO} SELECT ?, ?, 'attempt', NULL, NULL, ?, ?, 1, ?, ? "
                # Of the profile as it is now, not one removed since (then added again, after the use)
                "WHERE EXISTS (SELECT 1 FROM profiles WHERE name = ? AND (created_at IS NULL OR created_at <= ?))",
                [(u.profile, to_iso(u.at), u.tokens, u.cost_usd, *u.key, u.profile, to_iso(u.at)) for u in uses],
            )
            return added

        return await self.db.write(write) if calls or uses else set()

    async def last_call_id(self) -> int:
        """The largest call id the log or a usage record holds: ids go on from there, never again one a profile's
        usage records still key (the calls may have been pruned; their records count on for a day)."""
        row = await self.db.fetchone(
            "SELECT max(coalesce((SELECT max(id) FROM gateway_calls), 0), "
            "coalesce((SELECT max(gateway_call) FROM usage_records WHERE gateway_call IS NOT NULL), 0)) AS last"
        )
        return int(row["last"]) if row is not None else 0

    async def calls(self, *, route: str | None, since: datetime | None, limit: int) -> list[GatewayCall]:
        where, params = _where(route=route, since=since)
        rows = await self.db.fetchall(
            f"SELECT id, {_CALL_COLUMNS} FROM gateway_calls {where} ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [_call(r) for r in rows]

    async def has_calls(self, route: str) -> bool:
        return await self.db.fetchone("SELECT 1 FROM gateway_calls WHERE route = ? LIMIT 1", (route,)) is not None

    async def last_call_cost(self, key: str | None, route: str, since: datetime | None) -> float | None:
        """What key `key`'s latest call on `route` since `since` (the route's creation: a route removed and added
        again may cost anything) that cost anything cost (key None: any key's), or None."""
        by_key, keys = ("key_name = ? AND ", (key,)) if key is not None else ("", ())
        row = await self.db.fetchone(
            f"SELECT cost_usd FROM gateway_calls WHERE {by_key}route = ? AND at >= ? AND cost_usd > 0 "
            "ORDER BY at DESC LIMIT 1",
            (*keys, route, to_iso(since) or ""),
        )
        return float(row[0]) if row else None

    async def key_cost_since(self, key: str, since: datetime) -> float:
        row = await self.db.fetchone(
            "SELECT coalesce(sum(cost_usd), 0) FROM gateway_calls WHERE key_name = ? AND at >= ?", (key, to_iso(since))
        )
        return float(row[0]) if row else 0.0

    async def stats(self, *, since: datetime, by: tuple[str, ...]) -> GatewayStats:
        """What `stats --source gateway` shows, from the rollups (store/gateway_stats.py)."""
        return await self._stats.stats(since=since, by=by)


def _where(**filters: Any) -> tuple[str, tuple[Any, ...]]:
    clauses, params = [], []
    if filters.get("route") is not None:
        clauses.append("route = ?")
        params.append(filters["route"])
    if filters.get("since") is not None:
        clauses.append("at >= ?")
        params.append(to_iso(filters["since"]))
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params)


def _insert_calls(calls: list[GatewayCall], conn: sqlite3.Connection) -> set[int]:
    """Insert the calls the log does not have yet, and add them to the rollups; returns their ids."""
    given = [c.id for c in calls if c.id is not None]
    have = {r[0] for r in conn.execute("SELECT id FROM gateway_calls WHERE id IN (SELECT value FROM json_each(?))",
                                       (json.dumps(given),))} if given else set()  # fmt: skip
    # Only a call without an id (a proxy without a journal: tests) needs the largest: not read on every batch.
    last = (
        conn.execute("SELECT coalesce(max(id), 0) FROM gateway_calls").fetchone()[0] if len(given) < len(calls) else 0
    )
    rows, ids = [], []
    for call in calls:
        if call.id in have:
            continue
        call_id = call.id if call.id is not None else last + 1
        last = max(last, call_id)
        ids.append(call_id)
        rows.append((call_id, to_iso(call.at), call.key, call.route, call.api, int(call.streamed), call.outcome,
                     call.status, call.error, json.dumps(call.path), call.profile, call.model, call.ttft_ms,
                     call.latency_ms, call.input_tokens, call.output_tokens, call.cache_read_tokens,
                     call.cache_write_tokens, call.cost_usd, call.request_body, call.response_body))  # fmt: skip
    conn.executemany(f"INSERT INTO gateway_calls (id, {_CALL_COLUMNS}) VALUES ({', '.join('?' * 21)})", rows)
    add_to_rollups(conn, ids)
    return set(ids)
