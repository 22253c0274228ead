"""Queries on the attempts table: one row per execution of a run by one backend under one profile."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fleetd.records.result import ParsedOutput
from fleetd.records.run import Attempt
from fleetd.store.db import Database
from fleetd.store.usage import INSERT_USAGE
from fleetd.timefmt import from_iso, to_iso

# An attempt's final message is kept to this many characters (its end cut, with a mark): what the agent says
# it did fits many times over, and a runaway answer must not bloat every `runs show`.
RESULT_TEXT_CAP = 64 * 1024


# Both halves are index searches on (profile, time) (`tests/store/test_query_plans.py`).
PROFILE_COST = (
    "SELECT (SELECT coalesce(sum(cost_usd), 0) FROM attempts WHERE profile = ? AND started_at >= ?) "
    "+ (SELECT coalesce(sum(cost_usd), 0) FROM gateway_calls WHERE profile = ? AND at >= ?) AS spent"
)
# A loop's attempts since a time: its spend (a sum as a fire is judged, each cost for when it eases).
_LOOP_ATTEMPTS_SINCE = "FROM attempts a JOIN runs r ON r.id = a.run_id WHERE r.loop = ? AND a.started_at >= ?"


class AttemptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(
        self,
        *,
        run_id: int,
        number: int,
        backend: str,
        profile: str,
        model: str | None,
        started_at: datetime,
        step: int = 1,
        role: str = "work",
        pid: int | None = None,
        pid_create_time: float | None = None,
        run_start: bool | None = None,
        route: list[dict[str, Any]] | None = None,
    ) -> int:
        """`step` is the loop's chain step the attempt came from (from 1); `role` what it did (`work`).
        For a child process, written once it exists: its pid goes on the run (crash recovery kills it)
        and, for the run's first attempt (`run_start`; None: number 1), `started_at` becomes the run's start
        too (the run row was written before it, at the fire): one transaction instead of three. Not after
        the run waited for a reset: its start is the fire's, and the wait is part of its duration. `route`: the
        run's route so far, kept should the daemon die before the run's end writes it whole (`RunStore.set_route`)."""
        moves_start = number == 1 if run_start is None else run_start
        route_text = json.dumps(route) if route is not None else None

        def write(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO attempts (run_id, number, backend, profile, model, started_at, step, role) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, number, backend, profile, model, to_iso(started_at), step, role),
            )
            # The run's profile (and its backend, which a chain step may change) is its worker's; a reviewer's
            # attempt does not take that place.
            conn.execute(
                "UPDATE runs SET attempts = ?, profile = CASE WHEN ? = 'work' THEN ? ELSE profile END, "
                "backend = CASE WHEN ? = 'work' THEN ? ELSE backend END, "
                "started_at = CASE WHEN ? THEN ? ELSE started_at END, "
                "pid = coalesce(?, pid), pid_create_time = CASE WHEN ? IS NULL THEN pid_create_time ELSE ? END, "
                "route_json = coalesce(?, route_json) WHERE id = ?",
                (
                    number,
                    role,
                    profile,
                    role,
                    backend,
                    int(moves_start),
                    to_iso(started_at),
                    pid,
                    pid,
                    pid_create_time,
                    route_text,
                    run_id,
                ),
            )
            return int(cur.lastrowid or 0)

        return await self.db.write(write)

    async def write_end(self, end: Callable[[sqlite3.Connection], None]) -> None:
        """An attempt's end made by `finish_write`, written alone."""
        await self.db.write(end)

    async def finish(
        self,
        attempt_id: int,
        *,
        finished_at: datetime,
        exit_code: int | None,
        parsed: ParsedOutput,
        error: str | None,
        cost_usd: float | None,
    ) -> None:
        await self.db.write(
            finish_write(
                attempt_id, finished_at=finished_at, exit_code=exit_code, parsed=parsed, error=error, cost_usd=cost_usd
            )
        )

    async def set_gate(
        self, attempt_id: int, *, verify_exit: int | None, verify_ms: int, accepted: bool, findings: str | None
    ) -> None:
        """What the acceptance gate said about the attempt's work."""
        await self.db.write(
            lambda conn: conn.execute(
                "UPDATE attempts SET verify_exit = ?, verify_ms = ?, accepted = ?, findings = ? WHERE id = ?",
                (verify_exit, verify_ms, int(accepted), findings, attempt_id),
            ).close()
        )

    async def set_accepted(self, attempt_id: int, *, accepted: bool, findings: str | None) -> None:
        """The acceptance gate's final word on the attempt's work (after its reviewer, if any)."""
        await self.db.write(
            lambda conn: conn.execute(
                "UPDATE attempts SET accepted = ?, findings = ? WHERE id = ?", (int(accepted), findings, attempt_id)
            ).close()
        )

    async def profile_cost_since(self, profile: str, since: datetime) -> float:
        """What `profile` cost since then (USD): the loops' attempts and the gateway's calls alike (a
        profile's --daily-cost is one budget, whichever driver spends it; this is the one place it is summed)."""
        row = await self.db.fetchone(PROFILE_COST, (profile, to_iso(since), profile, to_iso(since)))
        return float(row["spent"]) if row else 0.0

    async def profile_costs_since(self, profile: str, since: datetime) -> list[tuple[datetime, float]]:
        """What each of `profile`'s attempts and gateway calls since then cost (USD), and when, oldest first; those that
        cost nothing left out (what `profile_cost_since` sums: when its --daily-cost has room again)."""
        rows = await self.db.fetchall(
            "SELECT started_at AS at, cost_usd FROM attempts WHERE profile = ?1 AND started_at >= ?2 AND cost_usd > 0 "
            "UNION ALL SELECT at, cost_usd FROM gateway_calls WHERE profile = ?1 AND at >= ?2 AND cost_usd > 0 "
            "ORDER BY at",
            (profile, to_iso(since)),
        )
        return [(from_iso(r["at"]), float(r["cost_usd"])) for r in rows]  # type: ignore[misc]

    async def loop_costs_since(self, loop: str, since: datetime) -> list[tuple[datetime, float]]:
        """When each of a loop's attempts since then started and what it cost (USD), oldest first; those that cost
        nothing left out."""
        rows = await self.db.fetchall(
            f"SELECT a.started_at, a.cost_usd {_LOOP_ATTEMPTS_SINCE} AND a.cost_usd > 0 ORDER BY a.started_at",
            (loop, to_iso(since)),
        )
        return [(from_iso(r["started_at"]), float(r["cost_usd"])) for r in rows]  # type: ignore[misc]

    async def loop_last_run_cost(self, loop: str, since: datetime) -> float | None:
        """What the loop's latest run since then that cost anything cost, all its attempts (USD): what its next run
        is expected to cost against its --daily-cost. None: none did."""
        # The window's runs by `runs_by_loop` (loop, started_at), not the loop's whole history; one under way (its
        # cost so far) is no run's cost.
        row = await self.db.fetchone(
            "SELECT sum(a.cost_usd) AS cost FROM runs r JOIN attempts a ON a.run_id = r.id "
            "WHERE r.loop = ? AND r.started_at >= ? AND r.status NOT IN ('running', 'waiting') "
            "GROUP BY r.id HAVING cost > 0 ORDER BY r.started_at DESC LIMIT 1",
            (loop, to_iso(since)),
        )
        return float(row["cost"]) if row else None

    async def loop_cost_since(self, loop: str, since: datetime) -> float:
        """What a loop's runs cost since then (USD), every attempt included."""
        row = await self.db.fetchone(
            f"SELECT coalesce(sum(a.cost_usd), 0) AS spent {_LOOP_ATTEMPTS_SINCE}",
            (loop, to_iso(since)),
        )
        return float(row["spent"]) if row else 0.0

    async def interrupt_open(self, run_id: int, *, finished_at: datetime, error: str) -> None:
        """Close the attempts a dead daemon left open (crash recovery). Each one under a profile counts as a request
        of it (its CLI may well have made it: a `1d=1req` profile ran twice across a crash), in the same transaction:
        a crash between the two would leave it closed and never counted."""

        def close(conn: sqlite3.Connection) -> None:
            rows = conn.execute(
                "SELECT profile, started_at FROM attempts WHERE run_id = ? AND finished_at IS NULL", (run_id,)
            ).fetchall()
            counted = [(profile, started, "attempt", None, None, 0, 0.0, 1) for profile, started in rows if profile]
            if counted:
                conn.executemany(INSERT_USAGE, counted).close()
            # Not before it started: `finished_at` may be the run's last sign of life, a guess from below.
            conn.execute(
                "UPDATE attempts SET finished_at = max(started_at, ?), outcome = 'failed', error = ?, "
                "duration_ms = max(0, CAST(round((julianday(?) - julianday(started_at)) * 86400000) AS INTEGER)) "
                "WHERE run_id = ? AND finished_at IS NULL",
                (to_iso(finished_at), error, to_iso(finished_at), run_id),
            ).close()

        await self.db.write(close)

    async def for_run(self, run_id: int) -> list[Attempt]:
        rows = await self.db.fetchall(
            "SELECT id, run_id, number, backend, profile, model, started_at, finished_at, exit_code, outcome, "
            "error_class, error, reset_at, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
            "cost_usd, session_id, windows_json, step, role, duration_ms, verify_exit, verify_ms, accepted, "
            "findings, result_text FROM attempts "
            "WHERE run_id = ? ORDER BY number",
            (run_id,),
        )
        return [
            Attempt(
                id=r["id"],
                run_id=r["run_id"],
                number=r["number"],
                backend=r["backend"],
                profile=r["profile"],
                model=r["model"],
                started_at=from_iso(r["started_at"]),  # type: ignore[arg-type]
                finished_at=from_iso(r["finished_at"]),
                exit_code=r["exit_code"],
                outcome=r["outcome"],
                error_class=r["error_class"],
                error=r["error"],
                reset_at=from_iso(r["reset_at"]),
                input_tokens=r["input_tokens"],
                output_tokens=r["output_tokens"],
                cache_read_tokens=r["cache_read_tokens"],
                cache_write_tokens=r["cache_write_tokens"],
                cost_usd=r["cost_usd"],
                session_id=r["session_id"],
                windows=json.loads(r["windows_json"]),
                step=r["step"],
                role=r["role"],
                duration_ms=r["duration_ms"],
                verify_exit=r["verify_exit"],
                verify_ms=r["verify_ms"],
                accepted=None if r["accepted"] is None else bool(r["accepted"]),
                findings=r["findings"],
                result_text=r["result_text"],
            )
            for r in rows
        ]


def finish_write(
    attempt_id: int,
    *,
    finished_at: datetime,
    exit_code: int | None,
    parsed: ParsedOutput,
    error: str | None,
    cost_usd: float | None,
) -> Callable[[sqlite3.Connection], None]:
    """The attempt's end as a write function: `AttemptStore.finish` writes it alone; a run's last attempt
    goes with the run's end (`RunStore.finish(attempt_end=…)`), one transaction instead of two."""
    windows = json.dumps([w.to_json() for w in parsed.windows]) if parsed.windows else "[]"
    u = parsed.usage
    params = (
        to_iso(finished_at), exit_code, parsed.outcome, parsed.error_class, error, to_iso(parsed.reset_at),
        u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, cost_usd, parsed.session_id,
        parsed.model, windows, cap_result_text(parsed.final_text), to_iso(finished_at), attempt_id,
    )  # fmt: skip

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE attempts SET finished_at = ?, exit_code = ?, outcome = ?, error_class = ?, error = ?, "
            "reset_at = ?, input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, "
            "cache_write_tokens = ?, cost_usd = ?, session_id = ?, model = coalesce(?, model), "
            "windows_json = ?, result_text = ?, "
            "duration_ms = CAST(round((julianday(?) - julianday(started_at)) * 86400000) AS INTEGER) WHERE id = ?",
            params,
        ).close()

    return write


def cap_result_text(text: str | None) -> str | None:
    if not text:
        return None
    if len(text) <= RESULT_TEXT_CAP:
        return text
    mark = f"\n[fleetd] cut: {len(text) - RESULT_TEXT_CAP} more characters"
    return text[: RESULT_TEXT_CAP - len(mark)] + mark
