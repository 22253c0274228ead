"""UsageStore on a real SQLite file: an agent's records added in one statement, as `add` adds them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.store.db import Database
from fleetd.store.usage import NewUsage, UsageStore
from fleetd.timefmt import to_iso

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def test_an_agents_records_in_one_statement_are_what_add_stores(tmp_path: Path) -> None:
    records = [
        NewUsage("p", T0, "agent", 120, session_id="s-1", dedupe_key="msg_1:req_1"),
        NewUsage("p", T0 + timedelta(seconds=1), "agent", 2**62, session_id="caf\u00e9 \U0001f600", dedupe_key="k\"'2"),
        NewUsage("p", T0 + timedelta(seconds=2), "agent", 7, session_id=None, dedupe_key=None),
        NewUsage("p", T0 + timedelta(seconds=3), "agent", 0, session_id="s-1", dedupe_key="msg_1:req_1+9", requests=0),
    ]

    async def go() -> None:
        rows = []
        for name in ("added", "one_statement"):
            db = await Database.open(tmp_path / f"{name}.db")
            usage = UsageStore(db)
            if name == "added":
                assert await usage.add(records) == 4
            else:
                as_rows = [(to_iso(r.at), r.session_id, r.dedupe_key, r.tokens, r.requests) for r in records]
                assert await usage.add_agent("p", as_rows) == 4
                assert await usage.add_agent("p", as_rows[:1] + as_rows[2:3]) == 1  # the known key skipped
                assert await usage.add_agent("p", []) == 0
            rows.append(
                [
                    tuple(r)
                    for r in await db.fetchall(
                        "SELECT profile, at, source, session_id, dedupe_key, tokens, typeof(tokens), cost_usd, "
                        "requests FROM usage_records ORDER BY id"
                    )
                ]
            )
            await db.close()
        added, one_statement = rows
        assert one_statement == [*added, added[2]]  # the record without a key again: never de-duplicated

    asyncio.run(go())
