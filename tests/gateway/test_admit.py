"""A key's daily cost cap at the gateway's door (`GatewayService.admit`): what a call is expected to cost, and what it
holds while under way, with the call log (the store) and the memory of calls since the start (`Holds`) both in play."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

from fleetd.gateway.holds import Holds
from fleetd.gateway.service import GatewayService
from fleetd.records.gateway import ClientKey, Route

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ROUTE = Route("r", "chat", (), created_at=T0)


class CallLog:
    """The store's answers: what each key spent, and the latest call's cost per (key, route) (key None: any key)."""

    def __init__(self, spent: dict[str, float], last: dict[tuple[str | None, str], float]) -> None:
        self.spent, self.last = spent, last

    async def key_cost_since(self, key: str, since: datetime) -> float:
        return self.spent.get(key, 0.0)

    async def last_call_cost(self, key: str | None, route: str, since: datetime | None) -> float | None:
        return self.last.get((key, route))


def _service(log: CallLog, holds: Holds) -> GatewayService:
    service = GatewayService(log, None, clock=lambda: T0)  # type: ignore[arg-type]
    recorder = SimpleNamespace(unwritten_cost=lambda key, since: 0.0, log_lock=asyncio.Lock())
    service._proxy = SimpleNamespace(holds=holds, recorder=recorder)  # type: ignore[assignment]
    return service


def test_after_a_restart_a_keys_own_cost_wins_over_another_keys_call_since() -> None:
    # Key a's calls on r cost $0.90; after a kill -9, key b's $0.01 call on r made a's next look like $0.01: let in,
    # a spent $1.80 of its $1.
    holds = Holds()
    holds.release(None, 0.01, "r")  # b's call since the restart
    service = _service(CallLog({"a": 0.90}, {("a", "r"): 0.90, (None, "r"): 0.01}), holds)
    refused, hold = asyncio.run(service.admit(ClientKey("a", "h", daily_cost=1.0), ROUTE))
    assert hold is None and refused is not None and refused.retry_after == 3600, refused


def test_a_keys_first_calls_on_a_route_go_one_at_a_time_at_whatever_another_key_paid() -> None:
    # Another key's $0.001 ping on r: twenty parallel $0.30 calls of a key with a $1 cap were each held at $0.001.
    holds = Holds()
    holds.release(None, 0.001, "r")
    service = _service(CallLog({}, {}), holds)
    key = ClientKey("a", "h", daily_cost=1.0)

    async def two() -> list[object]:
        first = await service.admit(key, ROUTE)
        second = await service.admit(key, ROUTE)
        return [first, second]

    (ok, hold), (refused, none) = asyncio.run(two())
    assert ok is None and hold is not None and holds.held("h") == 1.0  # all that is left (a key is its hash)
    assert none is None and refused is not None and refused.retry_after == 1  # until the first one ends


def test_a_key_added_under_a_removed_keys_name_takes_neither_its_calls_under_way_nor_its_last_cost() -> None:
    # The holds were by name: the removed key's call under way counted against the new key's cap, and its last cost
    # on the route stood for the new key's own (its first calls then went in together, not one at a time).
    holds = Holds()
    service = _service(CallLog({}, {}), holds)
    old = ClientKey("a", "old-hash", daily_cost=1.0, created_at=T0)
    _, first = asyncio.run(service.admit(old, ROUTE))
    holds.release(first, 0.30, "r")
    _, under_way = asyncio.run(service.admit(old, ROUTE))
    assert under_way is not None and holds.held("old-hash") == 0.30
    new = ClientKey("a", "new-hash", daily_cost=1.0, created_at=T0)
    refused, hold = asyncio.run(service.admit(new, ROUTE))
    assert refused is None and hold is not None
    assert holds.held("new-hash") == 1.0  # a first call: all that is left, not $0.30, and the old call not counted
