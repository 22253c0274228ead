"""A finished gateway call's writes (its attempt to the heartbeat, its row to the call log) happen after
its answer, batched: the request never waits for the store (uvicorn reads a keep-alive connection's
next request only once the previous call has returned), nothing is lost, and a stop writes the rest."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetd.gateway import recorder as recorder_module
from fleetd.gateway.protocols import get_protocol
from fleetd.gateway.proxy import Proxy, Request
from fleetd.gateway.recorder import Attempt, Finished, Recorder
from fleetd.records.gateway import ClientKey, GatewayCall, Route
from fleetd.records.loop import ChainStep
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput, TokenUsage

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
PROFILE = Profile("p", "openai_compat", "metered", "/tmp/p", price_input=3.0, price_output=15.0)


class BlockedStore:
    """Heartbeat and call log in one: every write waits until `open` is set."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.attempts: list[Any] = []
        self.calls: list[GatewayCall] = []
        self.writes = 0
        self.pending = 0  # finished calls counted apart until their use joins the windows
        self.pending_cost = 0  # ... and until the call log has them

    async def attempt_finished(self, profile: Profile, parsed: ParsedOutput, at: datetime, cost: float | None) -> None:
        await self.attempts_finished([(profile, parsed, at, cost)])

    async def attempts_finished(self, done: list[Any], settles: Any = (), keys: Any = ()) -> None:
        await self.open.wait()
        self.attempts += done
        for settle in settles:
            settle()

    def unrecorded(self, profile: Profile, tokens: int, cost: float) -> None:
        self.pending += 1
        self.pending_cost += 1

    def recorded_use(self, profile: Profile) -> None:
        self.pending -= 1

    def recorded_cost(self, profile: Profile, written_at: float) -> None:
        self.pending_cost -= 1

    async def add_calls(self, calls: Any) -> None:
        await self.open.wait()
        self.writes += 1
        self.calls += calls if isinstance(calls, list) else [calls]


class RefusingStore:
    """Heartbeat and call log in one that refuse every batch while `full` (a full disk), and a batch of calls holding
    `bad_route` always (a row the store will never take)."""

    def __init__(self, *, full: bool = False, bad_route: str | None = None) -> None:
        self.full, self.bad_route = full, bad_route
        self.logged: list[GatewayCall] = []

    async def attempts(self, batch: list[Attempt]) -> None:
        if self.full:
            raise RuntimeError("database or disk is full")

    async def calls(self, batch: list[GatewayCall]) -> None:
        if self.full:
            raise RuntimeError("database or disk is full")
        if any(c.route == self.bad_route for c in batch):
            raise RuntimeError("CHECK constraint failed")
        self.logged.extend(batch)


def call(route: str = "fast") -> GatewayCall:
    return GatewayCall(T0, "laptop", route, "chat", False)


def test_a_finished_call_does_not_wait_for_the_store() -> None:
    async def go() -> None:
        store = BlockedStore()
        proxy = Proxy(store, store.add_calls, clock=lambda: T0)  # type: ignore[arg-type]
        route = Route("fast", "chat", (ChainStep("openai_compat", ("p",)),))
        req = Request(get_protocol("chat"), route, ClientKey("laptop", "0" * 64), {"model": "fast"}, b"", {}, "/x")
        finished = proxy.finished(req, call(), PROFILE, TokenUsage(input_tokens=10, output_tokens=2), "succeeded",
                                  None, time.monotonic())  # fmt: skip
        await asyncio.wait_for(finished, 2)  # the store is blocked: this returns only if nothing waits for it
        assert store.calls == [] and store.attempts == []
        assert (store.pending, store.pending_cost) == (1, 1)  # counted against the profile's limits meanwhile
        store.open.set()
        await proxy.close()  # a stop writes what is queued
        assert (store.pending, store.pending_cost) == (0, 0)
        (written,) = store.calls
        assert (written.outcome, written.input_tokens, written.output_tokens) == ("succeeded", 10, 2)
        assert written.cost_usd == (10 * 3.0 + 2 * 15.0) / 1e6
        ((profile, parsed, _, cost),) = store.attempts
        assert (profile.name, parsed.outcome, cost) == ("p", "succeeded", written.cost_usd)

    asyncio.run(go())


def test_calls_finished_together_are_written_in_one_batch(monkeypatch: Any) -> None:
    monkeypatch.setattr(recorder_module, "LINGER_S", 0.05)

    async def go() -> None:
        store = BlockedStore()
        store.open.set()
        rec = Recorder(store.attempts_finished, store.add_calls)
        for i in range(50):
            attempt = Attempt(PROFILE, ParsedOutput("succeeded"), T0, None) if i % 2 else None
            await rec.put(Finished(call(f"r{i}"), attempt))
        await rec.flush()
        assert store.writes == 1 and [c.route for c in store.calls] == [f"r{i}" for i in range(50)]
        assert len(store.attempts) == 25
        await rec.put(Finished(call("later")))
        await rec.close()
        assert store.writes == 2 and store.calls[-1].route == "later"

    asyncio.run(go())


def test_a_batch_the_store_refused_is_written_with_the_next(monkeypatch: Any) -> None:
    # A full disk: its calls were dropped, and counted nowhere once there was room again.
    monkeypatch.setattr(recorder_module, "LINGER_S", 0.01)

    async def go() -> None:
        store = RefusingStore(full=True)
        rec = Recorder(store.attempts, store.calls)
        await rec.put(Finished(call("lost")))
        await rec.flush()
        store.full = False
        await rec.put(Finished(call("kept")))
        await rec.close()
        assert [c.route for c in store.logged] == ["lost", "kept"]

    asyncio.run(go())


def test_the_unwritten_cost_of_a_key_counts_only_its_calls_since_then() -> None:
    # A key added under a removed key's name: the removed key's calls not written yet are not the new key's.
    async def go() -> None:
        store = BlockedStore()
        recorder = Recorder(store.attempts_finished, store.add_calls)
        await recorder.put(Finished(GatewayCall(T0, "laptop", "fast", "chat", False, cost_usd=0.25)))
        assert recorder.unwritten_cost("laptop", T0) == 0.25
        assert recorder.unwritten_cost("laptop", T0 + timedelta(seconds=1)) == 0.0
        assert recorder.unwritten_cost("desk", T0) == 0.0
        store.open.set()
        await recorder.close()

    asyncio.run(go())


def test_a_refused_batch_is_counted_apart_until_written_and_a_stop_tries_it_once_more(monkeypatch: Any) -> None:
    # With the disk full, a refused batch's use stopped being counted against its profile's limits (10 calls of 817
    # tokens passed a 1d=2500tok profile), and a clean stop dropped what was still refused.
    monkeypatch.setattr(recorder_module, "LINGER_S", 0.01)

    async def go() -> None:
        store = RefusingStore(full=True)
        counted_apart_again: list[Attempt] = []
        in_call_log: list[Attempt] = []
        rec = Recorder(store.attempts, store.calls, in_call_log.extend, refused=counted_apart_again.extend)
        used = Attempt(PROFILE, ParsedOutput("succeeded", usage=TokenUsage(817)), T0, 0.0025)
        await rec.put(Finished(call("refused"), used))
        await rec.flush()
        assert counted_apart_again == [used] and in_call_log == []  # its use and its cost still count
        store.full = False  # room again; no call comes before the stop
        await rec.close()
        assert [c.route for c in store.logged] == ["refused"] and in_call_log == [used]

    asyncio.run(go())


def test_a_batch_the_store_never_takes_does_not_keep_the_later_ones_out(monkeypatch: Any) -> None:
    monkeypatch.setattr(recorder_module, "LINGER_S", 0.01)

    async def go() -> None:
        store = RefusingStore(bad_route="poison")
        rec = Recorder(store.attempts, store.calls)
        await rec.put(Finished(call("poison")))
        await rec.flush()
        for route in ("after", "later"):
            await rec.put(Finished(call(route)))
            await rec.flush()
        await rec.close()
        assert [c.route for c in store.logged] == ["after", "later"]

    asyncio.run(go())
