"""UsageStore on a real SQLite file: an agent's records added in one statement, as `add` adds them."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetd.store.db import Database
from fleetd.store.usage import HAS_AGENT_KEYS_SQL, AgentRows, NewUsage, UsageStore
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


def test_whether_a_profile_has_keyed_records_is_told_by_the_dedupe_index(tmp_path: Path) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "keys.db")
        usage = UsageStore(db)
        await usage.add([NewUsage("p", T0, "attempt", 5, session_id="s-1"), NewUsage("q", T0, "agent", 5)])
        assert not await usage.has_agent_keys("p")  # an attempt's record and another profile's have no key
        assert not await usage.has_agent_keys("q")  # an agent's record without a key: never de-duplicated
        await usage.add([NewUsage("p", T0, "agent", 5, dedupe_key="msg_1:req_1")])
        assert await usage.has_agent_keys("p")
        plan = await db.fetchall(f"EXPLAIN QUERY PLAN {HAS_AGENT_KEYS_SQL}", ("p",))
        assert [r["detail"] for r in plan] == [
            "SEARCH usage_records USING COVERING INDEX usage_dedupe (profile=? AND dedupe_key>?)"
        ]
        await db.close()

    asyncio.run(go())


def test_rows_encoded_ahead_are_stored_as_the_rows_themselves(tmp_path: Path) -> None:
    at = to_iso(T0)
    rows = [(at, "s-1", "msg_1:req_1", 120, 1), (at, None, None, 7, 1), (at, "s", "k\"'2\x01", 3, 0),
            (at, "caf\u00e9 \U0001f600", "m\u2028", 2**62, 1)]  # fmt: skip

    async def go() -> list[list[tuple[object, ...]]]:
        stored = []
        for name, given in (("plain", rows), ("encoded", AgentRows.encode(rows))):
            db = await Database.open(tmp_path / f"{name}.db")
            assert len(given) == 4 and await UsageStore(db).add_agent("p", given) == 4
            stored.append([tuple(r) for r in await db.fetchall("SELECT * FROM usage_records ORDER BY id")])
            await db.close()
        return stored

    plain, encoded = asyncio.run(go())
    assert encoded == plain
    lone = [(at, "s\ud800", "k", 1, 1)]  # json escapes a lone surrogate, msgspec refuses it: json writes it then
    assert AgentRows.encode(lone).text == json.dumps(lone) and len(AgentRows.encode(lone)) == 1
