"""Queries for the heartbeat: consumption records, each profile's judged state, the active profile
of each backend."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec

from fleetd.records.result import WindowState
from fleetd.records.usage import Consumption, ProfileStatus, StoredState
from fleetd.store.db import Database
from fleetd.timefmt import from_iso, to_iso

log = logging.getLogger("fleetd.store")


@dataclass(frozen=True)
class NewUsage:
    profile: str
    at: datetime
    source: str  # 'attempt' or 'agent'
    tokens: int
    cost_usd: float = 0.0
    session_id: str | None = None
    dedupe_key: str | None = None
    requests: int = 1
    gateway_try: tuple[int, int] | None = None  # a gateway call's id and try (`journal.attempt_key`): replayed once


# A record whose dedupe key its profile has already is skipped.
INSERT_USAGE = (
    "INSERT OR IGNORE INTO usage_records (profile, at, source, session_id, dedupe_key, tokens, cost_usd, requests) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# `INSERT_USAGE` with the gateway attempt a record counts (a record of one written already is skipped); its head alone
# takes a SELECT of the rows instead of their VALUES (`GatewayStore.replay`).
INSERT_ATTEMPT_USAGE_INTO = (
    "INSERT OR IGNORE INTO usage_records "
    "(profile, at, source, session_id, dedupe_key, tokens, cost_usd, requests, gateway_call, gateway_try)"
)
INSERT_ATTEMPT_USAGE = f"{INSERT_ATTEMPT_USAGE_INTO} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
HAS_AGENT_KEYS_SQL = "SELECT 1 AS found FROM usage_records WHERE profile = ? AND dedupe_key IS NOT NULL LIMIT 1"


_ENCODE = msgspec.json.Encoder().encode
AgentRow = tuple[str, str | None, str | None, int, int]  # at, session_id, dedupe_key, tokens, requests


class AgentRows:
    """Rows for `UsageStore.add_agent`, encoded as the JSON array its statement reads: one string instead of a tuple
    and three strings per row (a first read keeps a hundred thousand rows until the windows show them)."""

    __slots__ = ("_count", "text")

    def __init__(self, text: str, count: int) -> None:
        self.text = text
        self._count = count

    @classmethod
    def encode(cls, rows: list[AgentRow]) -> AgentRows:
        """msgspec writes the array 14x faster than json (what `add_agent` would do), and SQLite reads the same values
        from it; a lone surrogate (json escapes it) or an integer past 64 bits is left to json."""
        try:
            text = _ENCODE(rows).decode()
        except (UnicodeEncodeError, OverflowError):
            text = json.dumps(rows)
        return cls(text, len(rows))

    def __len__(self) -> int:
        return self._count


@dataclass(frozen=True)
class ReadProgress:
    """What a profile's reader has got past once a part of its read is stored (`add_agent`): its offsets (serialised),
    the garbled lines counted so far, the windows the agent's files last reported, and when (as `to_iso` writes it)."""

    offsets_json: str
    garbled_lines: int
    reported: list[WindowState]
    at: str


def _windows_to_json(windows: list[WindowState]) -> str:
    return json.dumps([w.to_json() for w in windows])


def _windows_from_json(text: str) -> list[WindowState]:
    return [
        WindowState(w.get("window_minutes"), w.get("used_percent"), from_iso(w.get("resets_at")), w.get("name", ""))
        for w in json.loads(text)
    ]


class UsageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, records: list[NewUsage], with_: Sequence[Callable[[sqlite3.Connection], object]] = ()) -> int:
        """Insert them, skipping records whose dedupe key this profile already has. Returns how many were new (all of
        them, unless some were read before: then the caller cannot tell which). `with_`: writes of the change these
        records count (the ends of the attempts that used them), in the same transaction: an attempt closed is an
        attempt counted (crash recovery counts the open ones). One that raises is logged, and the records still go."""
        rows = [
            (
                r.profile,
                to_iso(r.at),
                r.source,
                r.session_id,
                r.dedupe_key,
                r.tokens,
                r.cost_usd,
                r.requests,
                *(r.gateway_try or (None, None)),
            )
            for r in records
        ]

        def write(conn: sqlite3.Connection) -> int:
            for change in with_:
                try:
                    change(conn)
                except Exception:
                    if not conn.in_transaction:  # SQLite rolled the whole transaction back: the store failed
                        raise
                    log.exception("cannot record the change some usage records count; the records are kept")
            cur = conn.executemany(INSERT_ATTEMPT_USAGE, rows)
            return max(0, cur.rowcount)

        return await self.db.write(write) if rows or with_ else 0

    async def add_rows(self, rows: list[tuple[str, str | None, str, str | None, str | None, int, float, int]]) -> int:
        """`add` for rows already in column order (profile, at as `to_iso` writes it, source, session_id,
        dedupe_key, tokens, cost_usd, requests): a first read brings a hundred thousand."""
        if not rows:
            return 0
        async with self.db.transaction() as conn:
            cur = await conn.executemany(INSERT_USAGE, rows)
            return max(0, cur.rowcount)

    async def add_agent(
        self, profile: str, rows: list[AgentRow] | AgentRows, progress: ReadProgress | None = None
    ) -> int:
        """An agent's own records of `profile`, each (at as `to_iso` writes it, session_id, dedupe_key, tokens,
        requests), added as `add` adds them (a dedupe key the profile has is skipped; returns how many were new).
        `rows` may come encoded already (`AgentRows.encode`): a read kept to be stored later is kept that way.
        `progress`: where the profile's reader stands past these records, saved as the profile's in the same
        transaction: a kill between the two would leave the records to be read again, and a record without a dedupe
        key would then be stored twice.

        One statement over a JSON array of them, which SQLite runs in one step. `executemany` steps once per row and
        lets go of Python's GIL around each step; during a first read (a hundred thousand records, the daemon's other
        threads busy decoding and de-duplicating the next ones) each row then waited for another thread's turn to
        end, and 20,000 rows took a second instead of a tenth."""
        if not rows:
            return 0
        text = (rows if isinstance(rows, AgentRows) else AgentRows.encode(rows)).text
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "INSERT OR IGNORE INTO usage_records "
                "(profile, at, source, session_id, dedupe_key, tokens, cost_usd, requests) "
                "SELECT ?, json_extract(r.value, '$[0]'), 'agent', json_extract(r.value, '$[1]'), "
                "json_extract(r.value, '$[2]'), json_extract(r.value, '$[3]'), 0.0, json_extract(r.value, '$[4]') "
                "FROM json_each(?) AS r",
                (profile, text),
            )
            if progress is not None:
                await conn.execute(
                    "INSERT INTO profile_state "
                    "(profile, state, reported_json, offsets_json, garbled_lines, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (profile) DO UPDATE SET "
                    "reported_json = excluded.reported_json, offsets_json = excluded.offsets_json, "
                    "garbled_lines = excluded.garbled_lines",
                    (profile, ProfileStatus().state, _windows_to_json(progress.reported), progress.offsets_json,
                     progress.garbled_lines, progress.at),
                )  # fmt: skip
            return max(0, cur.rowcount)

    async def has_agent_keys(self, profile: str) -> bool:
        """Whether the store holds a record of `profile` with a dedupe key (one the store could ignore a record for).
        An index search (usage_dedupe holds exactly those records)."""
        return await self.db.fetchone(HAS_AGENT_KEYS_SQL, (profile,)) is not None

    async def since(self, profile: str, start: datetime) -> list[Consumption]:
        """The profile's consumption after `start`, each session counted once.

        Invariant: a session fleetd ran is counted from exactly one source — its attempt's record once that
        exists, the agent's own records of it (from the transcript or rollout) until then — whichever of
        the two was written first. Both are always stored; the choice is made here, at read time, from the
        rows alone, so no ordering of ingestion against `attempt_finished` can count a session twice
        (in the trial the file watcher read the agent's record tens of ms before the attempt's existed).
        Agent records without a session id, or of sessions fleetd never ran (someone using the same
        login by hand), always count. (`heartbeat.windows.Ledger` keeps the same rule as records arrive.)
        """
        return [row for row, _ in await self.window(profile, start)]

    async def window(self, profile: str, start: datetime) -> list[tuple[Consumption, str | None]]:
        """`since`, each record with the session an attempt record could still take over (agent records only)."""
        rows = await self.db.fetchall(
            "SELECT at, tokens, requests, cost_usd, CASE WHEN source = 'agent' THEN session_id END AS agent_session "
            "FROM usage_records AS u WHERE u.profile = ? AND u.at > ? "
            "AND NOT (u.source = 'agent' AND u.session_id IS NOT NULL AND EXISTS ("
            "SELECT 1 FROM usage_records AS a WHERE a.profile = u.profile AND a.source = 'attempt' "
            "AND a.session_id = u.session_id)) ORDER BY u.at",
            (profile, to_iso(start)),
        )
        return [
            (Consumption(from_iso(r["at"]), r["tokens"], r["requests"], r["cost_usd"]), r["agent_session"])  # type: ignore[arg-type]
            for r in rows
        ]

    async def last_id(self) -> int:
        """The newest record's id, whoever wrote it (O(1)): whether the records changed since it was last read."""
        row = await self.db.fetchone("SELECT max(id) AS last FROM usage_records")
        return (row["last"] if row is not None else None) or 0

    async def attempt_sessions(self, profile: str, sessions: Collection[str]) -> set[str]:
        """Which of `sessions` have an attempt record (their agent records do not count)."""
        found: set[str] = set()
        wanted = sorted(set(sessions))
        for i in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
            part = wanted[i : i + 500]
            rows = await self.db.fetchall(
                "SELECT DISTINCT session_id FROM usage_records WHERE profile = ? AND source = 'attempt' "
                f"AND session_id IN ({', '.join('?' * len(part))})",
                (profile, *part),
            )
            found.update(r["session_id"] for r in rows)
        return found

    async def recent_attempts(self, profile: str, limit: int = 10) -> list[tuple[int, float]]:
        """The tokens and cost of the profile's latest attempts that used any (runs' and gateway calls'), newest
        first: failures that used nothing (and the requests a crash left) would make its typical attempt free."""
        rows = await self.db.fetchall(
            "SELECT tokens, cost_usd FROM usage_records WHERE profile = ? AND source = 'attempt' AND tokens > 0 "
            "ORDER BY id DESC LIMIT ?",
            (profile, limit),
        )
        return [(r["tokens"], r["cost_usd"]) for r in rows]

    async def load_states(self) -> dict[str, StoredState]:
        rows = await self.db.fetchall(
            "SELECT profile, state, exhausted_until, reason, unconfirmed, counted, reported_json, offsets_json, "
            "garbled_lines FROM profile_state"
        )
        return {
            r["profile"]: StoredState(
                ProfileStatus(
                    r["state"], from_iso(r["exhausted_until"]), r["reason"], bool(r["unconfirmed"]), bool(r["counted"])
                ),
                _windows_from_json(r["reported_json"]),
                json.loads(r["offsets_json"]),
                r["garbled_lines"],
            )
            for r in rows
        }

    async def save_state(
        self, profile: str, stored: StoredState, now: datetime, offsets_json: str | None = None
    ) -> None:
        """`offsets_json`: `stored.offsets` already serialised (a caller that knows they did not change keeps
        thousands of files' offsets from being serialised on every beat)."""
        s = stored.status
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO profile_state (profile, state, exhausted_until, reason, unconfirmed, counted, "
                "reported_json, offsets_json, garbled_lines, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (profile) DO UPDATE SET state = excluded.state, "
                "exhausted_until = excluded.exhausted_until, "
                "reason = excluded.reason, unconfirmed = excluded.unconfirmed, counted = excluded.counted, "
                "reported_json = excluded.reported_json, "
                "offsets_json = excluded.offsets_json, garbled_lines = excluded.garbled_lines, "
                "updated_at = excluded.updated_at",
                (profile, s.state, to_iso(s.exhausted_until), s.reason, int(s.unconfirmed), int(s.counted),
                 _windows_to_json(stored.reported), offsets_json or json.dumps(stored.offsets), stored.garbled_lines,
                 to_iso(now)),
            )  # fmt: skip

    async def forget(self, profile: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM profile_state WHERE profile = ?", (profile,))
            await conn.execute("DELETE FROM usage_records WHERE profile = ?", (profile,))
            await conn.execute("UPDATE backend_active SET profile = NULL, pinned = 0 WHERE profile = ?", (profile,))

    async def load_active(self) -> dict[str, tuple[str | None, bool]]:
        rows = await self.db.fetchall("SELECT backend, profile, pinned FROM backend_active")
        return {r["backend"]: (r["profile"], bool(r["pinned"])) for r in rows}

    async def save_active(self, backend: str, profile: str | None, pinned: bool, now: datetime) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO backend_active (backend, profile, pinned, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (backend) DO UPDATE SET profile = excluded.profile, pinned = excluded.pinned, "
                "updated_at = excluded.updated_at",
                (backend, profile, int(pinned), to_iso(now)),
            )
