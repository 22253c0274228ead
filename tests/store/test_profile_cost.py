"""A profile's spend over a window, the one sum its --daily-cost is checked against: the loops' attempts and
the gateway's calls alike, so neither driver spends past a cap the other filled."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.records.gateway import GatewayCall
from fleetd.records.result import ParsedOutput
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.gateway import GatewayStore
from fleetd.store.runs import RunStore

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_a_profiles_spend_counts_attempts_and_gateway_calls_in_the_window(tmp_path: Path) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "f.db")
        try:
            runs, attempts, gateway = RunStore(db), AttemptStore(db), GatewayStore(db)
            run = await runs.insert(loop="l", trigger="manual", status="running", scheduled_at=T0, started_at=T0,
                                    backend="claude_code")  # fmt: skip
            attempt = await attempts.start(run_id=run.id, number=1, backend="claude_code", profile="p", model=None,
                                           started_at=T0)  # fmt: skip
            await attempts.finish(attempt, finished_at=T0, exit_code=0, parsed=ParsedOutput("succeeded"), error=None,
                                  cost_usd=1.0)  # fmt: skip
            await gateway.add_calls([
                GatewayCall(T0, "k", "r", "chat", False, "succeeded", profile="p", cost_usd=0.25),
                GatewayCall(T0 - timedelta(days=2), "k", "r", "chat", False, "succeeded", profile="p", cost_usd=8.0),
                GatewayCall(T0, "k", "r", "chat", False, "succeeded", profile="other", cost_usd=4.0),
            ])  # fmt: skip
            assert await attempts.profile_cost_since("p", T0 - timedelta(days=1)) == 1.25
            assert await attempts.profile_cost_since("other", T0 - timedelta(days=1)) == 4.0
            assert await attempts.profile_cost_since("none", T0 - timedelta(days=1)) == 0.0
        finally:
            await db.close()

    asyncio.run(go())


def test_each_cost_of_a_profile_and_a_loops_latest_finished_run_cost(tmp_path: Path) -> None:
    # When a daily cost has room again is found from each cost (attempts and gateway calls, oldest first); a loop's
    # next run is expected to cost what its latest finished run did, not one under way (its cost so far).
    async def go() -> None:
        db = await Database.open(tmp_path / "f.db")
        try:
            runs, attempts, gateway = RunStore(db), AttemptStore(db), GatewayStore(db)

            async def run_costing(at: datetime, costs: list[float], finished: bool = True) -> None:
                run = await runs.insert(loop="l", trigger="manual", status="running", scheduled_at=at, started_at=at,
                                        backend="claude_code")  # fmt: skip
                for number, cost in enumerate(costs, 1):
                    attempt = await attempts.start(run_id=run.id, number=number, backend="claude_code", profile="p",
                                                   model=None, started_at=at)  # fmt: skip
                    await attempts.finish(attempt, finished_at=at, exit_code=0, parsed=ParsedOutput("succeeded"),
                                          error=None, cost_usd=cost)  # fmt: skip
                if finished:
                    await runs.finish(run.id, status="succeeded", finished_at=at, exit_code=0)

            await run_costing(T0 - timedelta(hours=3), [0.25, 0.5])
            await run_costing(T0 - timedelta(hours=2), [0.0])
            await run_costing(T0 - timedelta(hours=1), [0.125], finished=False)
            await gateway.add_calls([GatewayCall(T0 - timedelta(hours=2, minutes=30), "k", "r", "chat", False,
                                                 "succeeded", profile="p", cost_usd=0.0625)])  # fmt: skip
            since = T0 - timedelta(days=1)
            assert await attempts.profile_costs_since("p", since) == [
                (T0 - timedelta(hours=3), 0.25), (T0 - timedelta(hours=3), 0.5),
                (T0 - timedelta(hours=2, minutes=30), 0.0625), (T0 - timedelta(hours=1), 0.125)]  # fmt: skip
            assert await attempts.loop_last_run_cost("l", since) == 0.75  # not the $0 one, nor the one under way
            assert await attempts.loop_last_run_cost("l", T0 - timedelta(hours=2, minutes=30)) is None
        finally:
            await db.close()

    asyncio.run(go())
