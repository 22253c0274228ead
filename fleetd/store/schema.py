"""Schema migrations, applied in order by `PRAGMA user_version`.

Each script runs inside its own transaction together with its version bump, so a failing step
leaves the database exactly at the previous version.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiosqlite

# A migration is a script, or (when it must read the schema it changes) a coroutine function that
# runs its statements one by one; `db.migrate` wraps either in one transaction with its version bump.
Migration = str | Callable[["aiosqlite.Connection"], Awaitable[None]]

# Whole seconds since the epoch of an ISO time: unixepoch() where SQLite has it (3.38), else strftime('%s'),
# twice the cost.
EPOCH_S_SQL = ("unixepoch({0})", "CAST(strftime('%s', {0}) AS INTEGER)")


def duration_ms_sql(finished: str, started: str, epoch_s: str | None = None) -> str:
    """The milliseconds from `started` to `finished` (SQL expressions of times as `to_iso` writes them,
    YYYY-MM-DDTHH:MM:SS.mmm+00:00), exactly: whole seconds (`epoch_s`, one of EPOCH_S_SQL) plus the text's
    milliseconds. NULL when either is NULL. A run's `duration_ms` (migration 16)."""
    if epoch_s is None:
        epoch_s = EPOCH_S_SQL[0] if sqlite3.sqlite_version_info >= (3, 38) else EPOCH_S_SQL[1]
    ms = f"{epoch_s} * 1000 + CAST(substr({{0}}, 21, 3) AS INTEGER)"
    return f"({ms.format(finished)} - ({ms.format(started)}))"


# The rollups of `fleetd stats` (migration 6; store/stats.py says what they count). Each SQL text is
# written once here: the triggers add one finished attempt's or run's facts, STATS_REBUILD (the
# migration's backfill, and bench/ after bulk inserts) adds every row's. Two tables of one shape:
# `stats_daily` keyed by the UTC day ('2026-11-21'), `stats_hourly` by the hour ('2026-11-21T09').
_TUPLE = "loop, backend, profile, model, step, role"
_PERIODS = (("stats_daily", 10), ("stats_hourly", 13))  # the table, and how much of an ISO time names its period
_ROLLUP_TABLE = """
    CREATE TABLE {table} (
        period             TEXT NOT NULL,
        loop               TEXT NOT NULL,
        backend            TEXT NOT NULL,
        profile            TEXT NOT NULL,
        model              TEXT NOT NULL,  -- '' when unknown: a NULL would never match in the key
        step               INTEGER NOT NULL,
        role               TEXT NOT NULL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        input_tokens       INTEGER NOT NULL DEFAULT 0,
        output_tokens      INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd           REAL NOT NULL DEFAULT 0,
        durations          TEXT NOT NULL DEFAULT '{{}}',  -- {{"rounded duration_ms": attempts}}
        runs_started       INTEGER NOT NULL DEFAULT 0,
        fallbacks          INTEGER NOT NULL DEFAULT 0,
        escalations        INTEGER NOT NULL DEFAULT 0,
        runs_ended         INTEGER NOT NULL DEFAULT 0,
        succeeded          INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (period, loop, backend, profile, model, step, role)
    ) WITHOUT ROWID;
"""
_ADD_ATTEMPTS = (
    "INSERT INTO {table} (period, " + _TUPLE + ", attempts, input_tokens, output_tokens, cache_read_tokens, "
    "cache_write_tokens, cost_usd, durations) "
    "SELECT period, " + _TUPLE + ", sum(n), sum(i), sum(o), sum(cr), sum(cw), sum(c), "
    "json_group_object(CAST(duration_ms AS TEXT), n) FILTER (WHERE duration_ms IS NOT NULL) FROM ("
    " SELECT substr(started_at, 1, {width}) AS period, " + _TUPLE + ", duration_ms, count(*) AS n, "
    " sum(input_tokens) AS i, sum(output_tokens) AS o, sum(cache_read_tokens) AS cr, sum(cache_write_tokens) AS cw, "
    " sum(cost_usd) AS c FROM stats_attempt_facts f WHERE {where} GROUP BY period, " + _TUPLE + ", duration_ms"
    ") WHERE 1 GROUP BY period, " + _TUPLE + " "
    "ON CONFLICT DO UPDATE SET attempts = attempts + excluded.attempts, "
    "input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens, "
    "cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens, "
    "cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens, cost_usd = cost_usd + excluded.cost_usd, "
    "durations = (SELECT json_group_object(key, n) FROM (SELECT key, sum(value) AS n FROM ("
    " SELECT key, value FROM json_each({table}.durations)"
    " UNION ALL SELECT key, value FROM json_each(excluded.durations)) GROUP BY key));"
)
_ADD_RUN_STARTS = (
    "INSERT INTO {table} (period, " + _TUPLE + ", runs_started, fallbacks, escalations) "
    "SELECT substr(started_at, 1, {width}) AS period, loop, first_backend, first_profile, first_model, first_step, "
    "first_role, count(*), sum(fallback), sum(escalated) FROM stats_run_facts f WHERE {where} "
    "GROUP BY period, loop, first_backend, first_profile, first_model, first_step, first_role "
    "ON CONFLICT DO UPDATE SET runs_started = runs_started + excluded.runs_started, "
    "fallbacks = fallbacks + excluded.fallbacks, escalations = escalations + excluded.escalations;"
)
_ADD_RUN_ENDS = (
    "INSERT INTO {table} (period, " + _TUPLE + ", runs_ended, succeeded) "
    "SELECT substr(started_at, 1, {width}) AS period, loop, last_backend, last_profile, last_model, last_step, "
    "last_role, count(*), sum(succeeded) FROM stats_run_facts f WHERE {where} "
    "GROUP BY period, loop, last_backend, last_profile, last_model, last_step, last_role "
    "ON CONFLICT DO UPDATE SET runs_ended = runs_ended + excluded.runs_ended, "
    "succeeded = succeeded + excluded.succeeded;"
)


def _rollup(templates: tuple[str, ...], where: str) -> str:
    return "\n".join(t.format(table=table, width=width, where=where) for t in templates for table, width in _PERIODS)


# A run's facts and the trigger that adds them once it ends, with the statuses that count as ended
# (`{ended}`): migration 6 wrote them with the statuses of its day, migration 10 again with `cancelled`.
# Each migration keeps its own literal list: a migration means what it meant when it shipped.
_RUN_FACTS_VIEW = """
    -- What one finished run adds: it starts in the group of its first attempt and ends in the group of
    -- its last `work` attempt (the one whose output decided it; any last attempt if none is `work`).
    -- Fallback: its work attempts used more than one candidate (chain step, profile); escalation: more
    -- than one chain step. `skipped` runs have no attempts and add nothing.
    CREATE VIEW stats_run_facts AS
    SELECT r.id AS run_id, r.started_at, r.loop, r.status = 'succeeded' AS succeeded,
           -- A run that ended without any attempt (no usable candidate, over budget, an unreadable prompt)
           -- counts too: under its loop's backend, no profile, step 1, as work.
           coalesce(f.backend, r.backend) AS first_backend, coalesce(f.profile, '') AS first_profile,
           coalesce(f.model, '') AS first_model, coalesce(f.step, 1) AS first_step,
           coalesce(f.role, 'work') AS first_role,
           coalesce(l.backend, r.backend) AS last_backend, coalesce(l.profile, '') AS last_profile,
           coalesce(l.model, '') AS last_model, coalesce(l.step, 1) AS last_step,
           coalesce(l.role, 'work') AS last_role,
           coalesce((SELECT max(w.step) > min(w.step) OR max(w.profile) <> min(w.profile)
                     FROM attempts w WHERE w.run_id = r.id AND w.role = 'work'), 0) AS fallback,
           coalesce((SELECT max(w.step) > min(w.step) FROM attempts w WHERE w.run_id = r.id AND w.role = 'work'), 0)
               AS escalated
    FROM runs r
    LEFT JOIN attempts f ON f.id = (SELECT id FROM attempts WHERE run_id = r.id ORDER BY number LIMIT 1)
    LEFT JOIN attempts l ON l.id = coalesce(
        (SELECT id FROM attempts WHERE run_id = r.id AND role = 'work' ORDER BY number DESC LIMIT 1),
        (SELECT id FROM attempts WHERE run_id = r.id ORDER BY number DESC LIMIT 1))
    WHERE r.status IN ({ended});
"""
_RUN_FINISHED_TRIGGER = (
    "CREATE TRIGGER stats_run_finished AFTER UPDATE OF status ON runs\n"
    "WHEN OLD.status IN ('running', 'waiting') AND NEW.status IN ({ended})\n"
    "BEGIN\n"
    + _rollup((_ADD_RUN_STARTS, _ADD_RUN_ENDS), "f.run_id = NEW.id").replace("{", "{{").replace("}", "}}")
    + "\nEND;"
)
_ENDED_V6 = "'succeeded', 'failed', 'timed_out', 'interrupted'"
_ENDED_V10 = "'succeeded', 'failed', 'timed_out', 'interrupted', 'cancelled'"


# The triggers again (migration 18), counting exactly what the ones above count (tests/store/test_stats.py
# compares them with STATS_REBUILD, which still reads the views) at a fraction of the cost: ending a run took
# ~350 µs of SQL with them and ~30 µs without. Each statement takes the ended row's own columns from NEW
# instead of reading it back through a view, works the run's facts out once per table instead of once per
# figure and table, and adds a duration to its histogram by json_set instead of merging two histograms.
# Invariant: no statement needs a temporary b-tree (no GROUP BY, no sort, no IN list on an index): each
# opens a page cache of its own and frees it at the statement's end, and glibc gave that memory back to the
# system and asked for it again every time (brk, page faults): that cost more than all the rest. A
# histogram's keys come in the order they first came, not sorted: nothing reads that order.
def _rounded_ms(ms: str) -> str:
    """stats_attempt_facts' `duration_ms` (migration 6) of the integer expression `ms`: two significant digits."""
    digit = f"CAST(substr('1000000000000000000', 1, length({ms}) - 1) AS INTEGER)"
    return (
        f"(CASE WHEN {ms} IS NULL THEN NULL WHEN {ms} < 100 THEN max({ms}, 0) "
        f"ELSE ({ms} + {digit} / 2) / {digit} * {digit} END)"
    )


def _add_attempt_v18(table: str, width: int) -> str:
    """The attempt NEW (ended) into `table`: a row of its own, or one more attempt in its group's row."""
    rounded = _rounded_ms("NEW.duration_ms")
    key = f"'$.\"' || {rounded} || '\"'"  # its duration's place in the histogram
    return (
        f"INSERT INTO {table} (period, {_TUPLE}, attempts, input_tokens, output_tokens, cache_read_tokens, "
        "cache_write_tokens, cost_usd, durations) "
        f"SELECT substr(NEW.started_at, 1, {width}), r.loop, NEW.backend, NEW.profile, coalesce(NEW.model, ''), "
        "NEW.step, NEW.role, 1, NEW.input_tokens, NEW.output_tokens, NEW.cache_read_tokens, NEW.cache_write_tokens, "
        "coalesce(NEW.cost_usd, 0), CASE WHEN NEW.duration_ms IS NULL THEN '{}' "
        f"ELSE json_object(CAST({rounded} AS TEXT), 1) END "
        "FROM runs r WHERE r.id = NEW.run_id "  # as the view's join: no run, nothing counted
        "ON CONFLICT DO UPDATE SET attempts = attempts + 1, input_tokens = input_tokens + excluded.input_tokens, "
        "output_tokens = output_tokens + excluded.output_tokens, "
        "cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens, "
        "cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens, "
        "cost_usd = cost_usd + excluded.cost_usd, "
        "durations = CASE WHEN NEW.duration_ms IS NULL THEN durations "
        f"ELSE json_set(durations, {key}, coalesce(json_extract(durations, {key}), 0) + 1) END;"
    )


def _add_run_v18(table: str, width: int) -> str:
    """The run NEW (ended) into `table`, as stats_run_facts defines its start and its end: a row for the group
    of its first attempt and one for the group of its deciding attempt, or one row for both when that is the
    same attempt (a run of one attempt, or of none: the LEFT JOIN's row of NULLs, under the loop's backend)."""
    attempt = (
        "coalesce(a.backend, NEW.backend), coalesce(a.profile, ''), coalesce(a.model, ''), coalesce(a.step, 1), "
        "coalesce(a.role, 'work')"
    )
    return (
        f"INSERT INTO {table} (period, {_TUPLE}, runs_started, fallbacks, escalations, runs_ended, succeeded) "
        f"SELECT substr(NEW.started_at, 1, {width}), NEW.loop, {attempt}, a.id IS f.first_id, "
        "(a.id IS f.first_id) * f.fallback, (a.id IS f.first_id) * f.escalated, a.id IS f.last_id, "
        "(a.id IS f.last_id) * (NEW.status = 'succeeded') "
        "FROM (SELECT (SELECT id FROM attempts WHERE run_id = NEW.id ORDER BY number LIMIT 1) AS first_id, "
        "    coalesce((SELECT id FROM attempts WHERE run_id = NEW.id AND role = 'work' ORDER BY number DESC LIMIT 1),"
        "             (SELECT id FROM attempts WHERE run_id = NEW.id ORDER BY number DESC LIMIT 1)) AS last_id, "
        "    coalesce(max(step) > min(step) OR max(profile) <> min(profile), 0) AS fallback, "
        "    coalesce(max(step) > min(step), 0) AS escalated "
        "  FROM attempts WHERE run_id = NEW.id AND role = 'work') f "
        # `+a.id`: the run's few attempts walked by its index; `a.id IN (...)` would build a temporary b-tree
        "LEFT JOIN attempts a ON a.run_id = NEW.id AND (+a.id = f.first_id OR +a.id = f.last_id) WHERE true "
        "ON CONFLICT DO UPDATE SET runs_started = runs_started + excluded.runs_started, "
        "fallbacks = fallbacks + excluded.fallbacks, escalations = escalations + excluded.escalations, "
        "runs_ended = runs_ended + excluded.runs_ended, succeeded = succeeded + excluded.succeeded;"
    )


STATS_REBUILD = "\n".join(
    [f"DELETE FROM {table};" for table, _ in _PERIODS] + [_rollup((_ADD_ATTEMPTS, _ADD_RUN_STARTS, _ADD_RUN_ENDS), "1")]
)

# The rollups of `fleetd stats --source gateway` (migration 17; store/gateway_stats.py says what they count), of
# the same two periods as the loops' ones: sums per (period, route, profile, model, key, api) in
# `gateway_stats_{daily,hourly}`, and the histograms of rounded latency and time to first token as one row per
# (period, group, metric, rounded ms) in `gateway_histograms_{daily,hourly}`. Not JSON objects as the loops'
# rollups keep them: adding one call to a JSON histogram re-parses and re-writes the whole object (SQLite's
# json_set, or Python's json), ~200 us of CPU per call once a day's histograms hold a few hundred entries,
# ten times the insert itself; adding to a row is an upsert of a few bytes. A query groups the rows of the
# periods it has not kept (store/rollups.py) into JSON objects, so the rest is the loops' code.
# GATEWAY_ADD (`{where}` picks the calls) adds calls to all four; GATEWAY_STATS_REBUILD adds every call.
GATEWAY_KEY = "route, profile, model, key_name, api"
GATEWAY_PERIODS = (("daily", 10), ("hourly", 13))  # gateway_stats_* and gateway_histograms_*, and period width
GATEWAY_SUMS_V17 = ("calls", "succeeded", "fallbacks", "streamed", "stream_errors", "input_tokens", "output_tokens",
                    "cache_read_tokens", "cache_write_tokens", "cost_usd")  # fmt: skip
GATEWAY_FACTS_V17 = ("1", "succeeded", "fallback", "streamed", "stream_error", "input_tokens", "output_tokens",
                     "cache_read_tokens", "cache_write_tokens", "cost_usd")  # fmt: skip
# Migration 26: calls fleetd refused for their key's own --daily-cost (`rejected`), apart from those it let in.
GATEWAY_SUMS = (*GATEWAY_SUMS_V17, "rejected")
GATEWAY_FACTS = (*GATEWAY_FACTS_V17, "rejected")
GATEWAY_METRICS = (("latency", "latency_ms"), ("ttft", "ttft_ms"))  # a histogram's name, and its fact


def two_digits_sql(column: str) -> str:
    """`column` (whole milliseconds) rounded to two significant digits, halves up (36392 → 36000); below 100
    as it is. As migration 6 rounds attempt durations: rounding is monotonic, so a percentile of the rounded
    values is the exact percentile, rounded."""
    digit = f"CAST(substr('1000000000000000000', 1, length({column}) - 1) AS INTEGER)"
    return (
        f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} < 100 THEN max({column}, 0) "
        f"ELSE ({column} + {digit} / 2) / {digit} * {digit} END"
    )


_GATEWAY_CALL_FACTS_VIEW_V17 = f"""
    -- What one call adds to the figures. NULL keys are '' (a NULL would never match in a rollup's key).
    -- Fallback: its path tried more than one profile (a retry of the same profile is not one).
    CREATE VIEW gateway_call_facts AS
    SELECT id AS call_id, at, route, coalesce(profile, '') AS profile, coalesce(model, '') AS model,
           coalesce(key_name, '') AS key_name, api, outcome = 'succeeded' AS succeeded,
           json_array_length(path_json) > 1 AND EXISTS (
               SELECT 1 FROM json_each(path_json)
               WHERE json_extract(value, '$.profile') IS NOT json_extract(path_json, '$[0].profile')) AS fallback,
           streamed <> 0 AS streamed, outcome = 'stream_error' AS stream_error, input_tokens, output_tokens,
           cache_read_tokens, cache_write_tokens, cost_usd,
           {two_digits_sql("latency_ms")} AS latency_ms, {two_digits_sql("ttft_ms")} AS ttft_ms
    FROM gateway_calls;
"""
# Migration 25's: a call a crash or a stop cut (`interrupted`: a crash's is logged at 0 ms, gateway/journal.py; a stop's
# at the time it had run, cut short), or one fleetd refused (`rejected`, logged at 0 ms), has no latency, as a call
# without a first token has no time to first token (they pulled p50 down).
_GATEWAY_CALL_FACTS_VIEW_V25 = _GATEWAY_CALL_FACTS_VIEW_V17.replace(
    f"{two_digits_sql('latency_ms')} AS latency_ms",
    f"CASE WHEN outcome IN ('interrupted', 'rejected') THEN NULL ELSE {two_digits_sql('latency_ms')} END AS latency_ms",
)
# Migration 26's: and whether fleetd refused the call for its key's own --daily-cost (`rejected`).
_GATEWAY_CALL_FACTS_VIEW = _GATEWAY_CALL_FACTS_VIEW_V25.replace(
    "outcome = 'stream_error' AS stream_error,",
    "outcome = 'stream_error' AS stream_error, outcome = 'rejected' AS rejected,",
)
_UNCOUNT_UNKNOWN_LATENCY = f"""
    UPDATE gateway_histograms_{{period}} AS h SET calls = h.calls - x.n
    FROM (SELECT substr(at, 1, {{width}}) AS period, {GATEWAY_KEY}, latency_ms AS ms, count(*) AS n
          FROM gateway_call_facts
          WHERE call_id IN (SELECT id FROM gateway_calls WHERE outcome IN ('interrupted', 'rejected'))
          GROUP BY 1, 2, 3, 4, 5, 6, 7) AS x
    WHERE h.period = x.period AND h.route = x.route AND h.profile = x.profile AND h.model = x.model
      AND h.key_name = x.key_name AND h.api = x.api AND h.metric = 'latency' AND h.ms = x.ms;
    DELETE FROM gateway_histograms_{{period}} WHERE calls <= 0;
"""
_COUNT_REJECTED = f"""
    ALTER TABLE gateway_stats_{{period}} ADD COLUMN rejected INTEGER NOT NULL DEFAULT 0;
    UPDATE gateway_stats_{{period}} AS s SET rejected = x.n
    FROM (SELECT substr(at, 1, {{width}}) AS period, {GATEWAY_KEY}, count(*) AS n
          FROM gateway_call_facts WHERE call_id IN (SELECT id FROM gateway_calls WHERE outcome = 'rejected')
          GROUP BY 1, 2, 3, 4, 5, 6) AS x
    WHERE s.period = x.period AND s.route = x.route AND s.profile = x.profile AND s.model = x.model
      AND s.key_name = x.key_name AND s.api = x.api;
"""
_GATEWAY_ROLLUP_TABLES = """
    CREATE TABLE gateway_stats_{period} (
        period             TEXT NOT NULL,
        route              TEXT NOT NULL,
        profile            TEXT NOT NULL,
        model              TEXT NOT NULL,
        key_name           TEXT NOT NULL,
        api                TEXT NOT NULL,
        calls              INTEGER NOT NULL DEFAULT 0,
        succeeded          INTEGER NOT NULL DEFAULT 0,
        fallbacks          INTEGER NOT NULL DEFAULT 0,
        streamed           INTEGER NOT NULL DEFAULT 0,
        stream_errors      INTEGER NOT NULL DEFAULT 0,
        input_tokens       INTEGER NOT NULL DEFAULT 0,
        output_tokens      INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd           REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (period, route, profile, model, key_name, api)
    ) WITHOUT ROWID;
    CREATE TABLE gateway_histograms_{period} (
        period   TEXT NOT NULL,
        route    TEXT NOT NULL,
        profile  TEXT NOT NULL,
        model    TEXT NOT NULL,
        key_name TEXT NOT NULL,
        api      TEXT NOT NULL,
        metric   TEXT NOT NULL,     -- 'latency' or 'ttft' (calls with a first token only)
        ms       INTEGER NOT NULL,  -- rounded to two significant digits
        calls    INTEGER NOT NULL,
        PRIMARY KEY (period, route, profile, model, key_name, api, metric, ms)
    ) WITHOUT ROWID;
"""


def _gateway_add_sums(sums: tuple[str, ...], facts: tuple[str, ...]) -> str:
    """The statement that adds calls to `gateway_stats_{period}`: each of `sums` the sum of its fact."""
    summed = ", ".join(f"{'total' if s == 'cost_usd' else 'sum'}({f})" for s, f in zip(sums, facts, strict=True))
    return (
        f"INSERT INTO gateway_stats_{{period}} (period, {GATEWAY_KEY}, {', '.join(sums)}) "
        f"SELECT substr(at, 1, {{width}}) AS period, {GATEWAY_KEY}, {summed} "
        f"FROM gateway_call_facts f WHERE {{where}} GROUP BY period, {GATEWAY_KEY} "
        "ON CONFLICT DO UPDATE SET " + ", ".join(f"{s} = {s} + excluded.{s}" for s in sums) + ";"
    )


_GATEWAY_ADD_HISTOGRAM = (
    f"INSERT INTO gateway_histograms_{{period}} (period, {GATEWAY_KEY}, metric, ms, calls) "
    f"SELECT substr(at, 1, {{width}}) AS period, {GATEWAY_KEY}, '{{metric}}', {{fact}}, count(*) "
    f"FROM gateway_call_facts f WHERE {{where}} AND {{fact}} IS NOT NULL GROUP BY period, {GATEWAY_KEY}, {{fact}} "
    "ON CONFLICT DO UPDATE SET calls = calls + excluded.calls;"
)


def gateway_add(
    where: str, sums: tuple[str, ...] = GATEWAY_SUMS, facts: tuple[str, ...] = GATEWAY_FACTS
) -> tuple[str, ...]:
    """The statements that add the calls `where` picks (a condition on `gateway_call_facts f`) to the rollups
    (`sums`/`facts`: as of a migration, for the one that wrote them then)."""
    add_sums = _gateway_add_sums(sums, facts)
    return tuple(
        template.format(period=period, width=width, where=where, metric=metric, fact=fact)
        for period, width in GATEWAY_PERIODS
        for template, metric, fact in ((add_sums, "", ""),
                                       *((_GATEWAY_ADD_HISTOGRAM, m, f) for m, f in GATEWAY_METRICS))
    )  # fmt: skip


def _gateway_rebuild(sums: tuple[str, ...], facts: tuple[str, ...]) -> str:
    return "\n".join(
        [f"DELETE FROM gateway_{kind}_{period};" for kind in ("stats", "histograms") for period, _ in GATEWAY_PERIODS]
        + list(gateway_add("1", sums, facts))
    )


GATEWAY_STATS_REBUILD = _gateway_rebuild(GATEWAY_SUMS, GATEWAY_FACTS)

_RUNS_STATUS_CHECK = re.compile(r"(CHECK\s*\(\s*status\s+IN\s*\()([^)]*)(\))", re.IGNORECASE)
_RUNS_STATUSES_V10 = "'running', 'waiting', 'succeeded', 'failed', 'timed_out', 'interrupted', 'cancelled', 'skipped'"


async def _fetch(conn: aiosqlite.Connection, sql: str) -> list[tuple[str, ...]]:
    async with conn.execute(sql) as cur:
        return [tuple(row) for row in await cur.fetchall()]


async def _runs_with_cancelled(conn: aiosqlite.Connection) -> None:
    """Migration 10: the runs table's status CHECK admits `cancelled`, and the stats count it as ended.

    SQLite cannot alter a CHECK: the table is rebuilt (a new table from the current definition with
    the new list, every row copied, the old dropped, the new renamed). Dropping a table drops its
    indexes and triggers, so every index and trigger on runs is read from sqlite_master first and
    created again after, whatever earlier migrations (or ones merged later) put there; the columns,
    likewise, come from the stored definition. Views and other tables' triggers that name `runs` keep
    naming it: legacy_alter_table stops the rename from checking them against a schema in which
    `runs` is, for that moment, missing (they are not rewritten, and need not be).
    Runs via `db.migrate`, inside its transaction with foreign keys off and checked before commit."""
    ((table_sql,),) = await _fetch(conn, "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'")
    new_sql, found = _RUNS_STATUS_CHECK.subn(lambda m: m.group(1) + _RUNS_STATUSES_V10 + m.group(3), table_sql)
    if found != 1:
        raise RuntimeError("migration 10: the runs table has no single status CHECK to extend")
    new_sql, named = re.subn(r'^(\s*CREATE\s+TABLE\s+)("runs"|runs|`runs`|\[runs\])', r"\1runs_v10", new_sql)
    if named != 1:
        raise RuntimeError("migration 10: cannot read the runs table's definition")
    attached = await _fetch(
        conn, "SELECT sql FROM sqlite_master WHERE tbl_name = 'runs' AND type IN ('index', 'trigger') "
        "AND sql IS NOT NULL AND name <> 'stats_run_finished' ORDER BY type, name",
    )  # fmt: skip
    # AUTOINCREMENT's high-water mark: the copy would restart it at max(id), and an id of a pruned
    # newest run could be given out again.
    sequence = await _fetch(conn, "SELECT seq FROM sqlite_sequence WHERE name = 'runs'")
    await conn.execute(new_sql)
    await conn.execute("INSERT INTO runs_v10 SELECT * FROM runs")
    await conn.execute("PRAGMA legacy_alter_table = ON")
    try:
        await conn.execute("DROP TABLE runs")
        await conn.execute("ALTER TABLE runs_v10 RENAME TO runs")
    finally:
        await conn.execute("PRAGMA legacy_alter_table = OFF")
    if sequence:
        await conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'runs'", (sequence[0][0],))
    for (sql,) in attached:
        await conn.execute(sql)
    # The stats: `cancelled` runs count as ended (not succeeded), like `interrupted` ones.
    await conn.execute("DROP VIEW stats_run_facts")
    await conn.execute(_RUN_FACTS_VIEW.format(ended=_ENDED_V10))
    await conn.execute(_RUN_FINISHED_TRIGGER.format(ended=_ENDED_V10))


MIGRATIONS: list[Migration] = [
    # 1: loops and runs
    """
    CREATE TABLE loops (
        id             INTEGER PRIMARY KEY,
        name           TEXT NOT NULL UNIQUE,
        schedule_kind  TEXT NOT NULL CHECK (schedule_kind IN ('cron', 'every', 'at')),
        schedule_expr  TEXT NOT NULL,
        timezone       TEXT NOT NULL,
        backend        TEXT NOT NULL,
        command        TEXT,
        prompt         TEXT,
        prompt_file    TEXT,
        workdir        TEXT,
        env_json       TEXT NOT NULL DEFAULT '{}',
        timeout_s      REAL,
        catch_up       TEXT NOT NULL CHECK (catch_up IN ('once', 'skip')),
        output_cap     INTEGER NOT NULL,
        enabled        INTEGER NOT NULL DEFAULT 1,
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL,
        last_fire_at   TEXT,
        next_fire_at   TEXT
    );
    CREATE TABLE runs (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        loop            TEXT NOT NULL,
        trigger         TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'catch-up')),
        status          TEXT NOT NULL CHECK (status IN
                            ('running', 'succeeded', 'failed', 'timed_out', 'interrupted', 'skipped')),
        scheduled_at    TEXT NOT NULL,
        started_at      TEXT NOT NULL,
        finished_at     TEXT,
        exit_code       INTEGER,
        backend         TEXT NOT NULL,
        profile         TEXT NOT NULL DEFAULT '',
        log_path        TEXT,
        error           TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        pid             INTEGER,
        pid_create_time REAL
    );
    -- `runs list --loop X --limit N` walks this index newest first and stops after N rows.
    CREATE INDEX runs_by_loop ON runs (loop, id DESC);
    CREATE INDEX runs_by_started ON runs (started_at);
    CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
    """,
    # 2: auth profiles, per-attempt records, a loop's profile pool / model / extra agent arguments
    """
    CREATE TABLE profiles (
        id                INTEGER PRIMARY KEY,
        name              TEXT NOT NULL UNIQUE,
        backend           TEXT NOT NULL,
        tier              TEXT NOT NULL CHECK (tier IN ('local', 'subscription', 'metered')),
        config_dir        TEXT NOT NULL,
        base_url          TEXT,
        model             TEXT,
        price_input       REAL,  -- USD per million tokens
        price_output      REAL,
        price_cache_read  REAL,
        price_cache_write REAL,
        has_secret        INTEGER NOT NULL DEFAULT 0,  -- the secret itself lives in the keyring
        enabled           INTEGER NOT NULL DEFAULT 1,
        created_at        TEXT NOT NULL,
        updated_at        TEXT NOT NULL
    );
    CREATE TABLE attempts (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id             INTEGER NOT NULL REFERENCES runs (id),
        number             INTEGER NOT NULL,
        backend            TEXT NOT NULL,
        profile            TEXT NOT NULL DEFAULT '',
        model              TEXT,
        started_at         TEXT NOT NULL,
        finished_at        TEXT,
        exit_code          INTEGER,
        outcome            TEXT,
        error_class        TEXT,
        error              TEXT,
        reset_at           TEXT,
        input_tokens       INTEGER NOT NULL DEFAULT 0,
        output_tokens      INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd           REAL,
        session_id         TEXT,
        windows_json       TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX attempts_by_run ON attempts (run_id, number);
    CREATE INDEX attempts_by_profile ON attempts (profile, started_at);
    ALTER TABLE loops ADD COLUMN profiles_json TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE loops ADD COLUMN model TEXT;
    ALTER TABLE loops ADD COLUMN agent_args_json TEXT NOT NULL DEFAULT '[]';
    """,
    # 3: the usage heartbeat; runs may wait for a reset
    """
    ALTER TABLE profiles ADD COLUMN limits_json TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE usage_records (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        profile    TEXT NOT NULL,
        at         TEXT NOT NULL,
        source     TEXT NOT NULL CHECK (source IN ('attempt', 'agent')),
        session_id TEXT,
        dedupe_key TEXT,
        tokens     INTEGER NOT NULL,
        requests   INTEGER NOT NULL DEFAULT 1,
        cost_usd   REAL NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX usage_dedupe ON usage_records (profile, dedupe_key) WHERE dedupe_key IS NOT NULL;
    CREATE INDEX usage_by_profile ON usage_records (profile, at);
    CREATE TABLE profile_state (
        profile         TEXT PRIMARY KEY,
        state           TEXT NOT NULL,
        exhausted_until TEXT,
        reason          TEXT NOT NULL DEFAULT '',
        unconfirmed     INTEGER NOT NULL DEFAULT 0,
        reported_json   TEXT NOT NULL DEFAULT '[]',
        offsets_json    TEXT NOT NULL DEFAULT '{}',
        garbled_lines   INTEGER NOT NULL DEFAULT 0,
        updated_at      TEXT NOT NULL
    );
    CREATE TABLE backend_active (
        backend    TEXT PRIMARY KEY,
        profile    TEXT,
        pinned     INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE events (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        at        TEXT NOT NULL,
        type      TEXT NOT NULL,
        backend   TEXT,
        profile   TEXT,
        message   TEXT NOT NULL,
        data_json TEXT NOT NULL DEFAULT '{}'
    );
    -- SQLite cannot alter a CHECK constraint: rebuild runs with the `waiting` status (migrate() turns
    -- foreign keys off around this and checks them all before it commits).
    CREATE TABLE runs_v3 (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        loop            TEXT NOT NULL,
        trigger         TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'catch-up')),
        status          TEXT NOT NULL CHECK (status IN
                            ('running', 'waiting', 'succeeded', 'failed', 'timed_out', 'interrupted', 'skipped')),
        scheduled_at    TEXT NOT NULL,
        started_at      TEXT NOT NULL,
        finished_at     TEXT,
        exit_code       INTEGER,
        backend         TEXT NOT NULL,
        profile         TEXT NOT NULL DEFAULT '',
        log_path        TEXT,
        error           TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        pid             INTEGER,
        pid_create_time REAL,
        wait_until      TEXT
    );
    INSERT INTO runs_v3 (id, loop, trigger, status, scheduled_at, started_at, finished_at, exit_code, backend, profile,
                         log_path, error, attempts, pid, pid_create_time)
        SELECT id, loop, trigger, status, scheduled_at, started_at, finished_at, exit_code, backend, profile,
               log_path, error, attempts, pid, pid_create_time FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_v3 RENAME TO runs;
    CREATE INDEX runs_by_loop ON runs (loop, id DESC);
    CREATE INDEX runs_by_started ON runs (started_at);
    CREATE INDEX runs_running ON runs (status) WHERE status IN ('running', 'waiting');
    """,
    # 4: routing as policy: escalation chains, tiers, budgets, the route of each run, circuit breakers
    """
    ALTER TABLE loops ADD COLUMN chain_json TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE loops ADD COLUMN tiers_json TEXT NOT NULL DEFAULT '["local", "subscription"]';
    ALTER TABLE loops ADD COLUMN max_cost REAL;
    ALTER TABLE loops ADD COLUMN max_tokens INTEGER;
    ALTER TABLE loops ADD COLUMN daily_cost REAL;
    ALTER TABLE loops ADD COLUMN on_exhausted TEXT NOT NULL DEFAULT 'escalate';
    -- Loops made before tiers existed could use every profile of their backend: they keep that.
    UPDATE loops SET tiers_json = '["local", "subscription", "metered"]';
    ALTER TABLE runs ADD COLUMN route_json TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE attempts ADD COLUMN step INTEGER NOT NULL DEFAULT 1;  -- the chain step, from 1
    ALTER TABLE attempts ADD COLUMN role TEXT NOT NULL DEFAULT 'work';
    ALTER TABLE attempts ADD COLUMN duration_ms INTEGER;
    UPDATE attempts
        SET duration_ms = CAST(round((julianday(finished_at) - julianday(started_at)) * 86400000) AS INTEGER)
        WHERE finished_at IS NOT NULL;
    CREATE INDEX attempts_by_started ON attempts (started_at);
    ALTER TABLE profiles ADD COLUMN daily_cost REAL;
    ALTER TABLE profiles ADD COLUMN default_reset_s REAL;
    CREATE TABLE circuits (
        profile     TEXT PRIMARY KEY,
        state       TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
        failures    INTEGER NOT NULL DEFAULT 0,
        open_until  TEXT,
        cooldown_s  REAL NOT NULL DEFAULT 0,
        updated_at  TEXT NOT NULL
    );
    """,
    # 5: windows leave out the agent's records of a session an attempt's record already counts
    # (UsageStore.since): this index answers "has this profile an attempt record of session S?"
    """
    CREATE INDEX usage_attempt_sessions ON usage_records (profile, session_id)
        WHERE source = 'attempt' AND session_id IS NOT NULL;
    """,
    # 6: `fleetd stats`: per-day and per-hour rollups that triggers keep as attempts and runs end (store/stats.py)
    f"""
    -- What one finished attempt adds to the figures. Its duration is rounded to two significant digits:
    -- rounding is monotonic, so a percentile of the rounded values is the exact percentile, rounded.
    CREATE VIEW stats_attempt_facts AS
    SELECT a.id AS attempt_id, a.started_at, r.loop, a.backend, a.profile,
           coalesce(a.model, '') AS model, a.step, a.role, a.input_tokens, a.output_tokens, a.cache_read_tokens,
           a.cache_write_tokens, coalesce(a.cost_usd, 0) AS cost_usd,
           CASE WHEN a.duration_ms IS NULL THEN NULL
                WHEN a.duration_ms < 100 THEN max(a.duration_ms, 0)
                ELSE (a.duration_ms + a.digit / 2) / a.digit * a.digit END AS duration_ms
    FROM (SELECT id, run_id, started_at, finished_at, backend, profile, model, step, role, input_tokens, output_tokens,
                 cache_read_tokens, cache_write_tokens, cost_usd, duration_ms,
                 -- the place value of the second significant digit, e.g. 1000 for 36392
                 CAST(substr('1000000000000000000', 1, length(duration_ms) - 1) AS INTEGER) AS digit
          FROM attempts) a
    JOIN runs r ON r.id = a.run_id
    WHERE a.finished_at IS NOT NULL;
    {_RUN_FACTS_VIEW.format(ended=_ENDED_V6)}
    {"".join(_ROLLUP_TABLE.format(table=table) for table, _ in _PERIODS)}
    CREATE TRIGGER stats_attempt_finished AFTER UPDATE OF finished_at ON attempts
    WHEN OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL
    BEGIN
        {_rollup((_ADD_ATTEMPTS,), "f.attempt_id = NEW.id")}
    END;
    {_RUN_FINISHED_TRIGGER.format(ended=_ENDED_V6)}
    {STATS_REBUILD}
    """,
    # 7: acceptance: a loop's verify command and repair rounds; what the gate said about each attempt
    """
    ALTER TABLE loops ADD COLUMN verify TEXT;
    ALTER TABLE loops ADD COLUMN verify_timeout_s REAL NOT NULL DEFAULT 600;
    ALTER TABLE loops ADD COLUMN repair INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE loops ADD COLUMN review_json TEXT;
    ALTER TABLE attempts ADD COLUMN verify_exit INTEGER;
    ALTER TABLE attempts ADD COLUMN verify_ms INTEGER;
    ALTER TABLE attempts ADD COLUMN accepted INTEGER;
    ALTER TABLE attempts ADD COLUMN findings TEXT;
    """,
    # 8: each attempt's final message (the agent's own account of its work; `runs result`), scrubbed, capped
    """
    ALTER TABLE attempts ADD COLUMN result_text TEXT;
    """,
    # 9: every `runs list` filter combination is an index search. The list is newest first by
    # (started_at, id) (store/runs.py), so each index ends in started_at (and the rowid after it):
    # the equality filters pick the index's prefix, `--since` is a range on started_at, and the walk
    # comes out in list order and stops at the limit. (loop, id DESC) served `--loop` alone; a status
    # filter, or `--since` with anything, scanned the table newest first. Retention prunes events by age.
    """
    DROP INDEX runs_by_loop;
    CREATE INDEX runs_by_loop ON runs (loop, started_at);
    CREATE INDEX runs_by_status ON runs (status, started_at);
    CREATE INDEX runs_by_loop_status ON runs (loop, status, started_at);
    CREATE INDEX events_by_at ON events (at);
    """,
    # 10: a run stopped by hand ends `cancelled` (`fleetd runs stop`)
    _runs_with_cancelled,
    # 11: why a fire did not start a run (`records.fire.SKIP_REASONS`), and how many fires one `skipped`
    # row stands for: fires skipped against the same run in progress share a row, missed fires are counted.
    """
    ALTER TABLE runs ADD COLUMN skip_reason TEXT;
    ALTER TABLE runs ADD COLUMN skipped_count INTEGER NOT NULL DEFAULT 0;
    UPDATE runs SET skipped_count = 1,
        skip_reason = CASE
            WHEN error LIKE 'budget:%' THEN 'over_daily_cost'
            WHEN error LIKE 'previous run %' THEN 'overlap'
            WHEN error = 'daemon is shutting down' THEN 'shutting_down'
        END
    WHERE status = 'skipped';
    """,
    # 12: hooks (fleetd/hooks/): the command or URL each is told about its events; the secret of a
    # webhook lives in the secret store. `hook_cursor` is the last event id whose deliveries all ended,
    # so a restart neither redelivers older events nor loses ones written while delivering.
    """
    CREATE TABLE hooks (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        on_json     TEXT NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('exec', 'webhook')),
        target      TEXT NOT NULL,
        timeout_s   REAL NOT NULL,
        has_secret  INTEGER NOT NULL DEFAULT 0,
        since_event INTEGER NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE hook_cursor (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        event_id   INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    # 13: empty for good. The gateway branch kept this number free while branches added migrations in
    # parallel, and no migration took it; the step stays because databases at version 14 passed through it.
    "",
    # 14: the gateway (fleetd/gateway/): routes (a model name over a chain of profiles), client keys (a
    # SHA-256 hash only), its listen setting, and one row per call (each try of its path, tokens, cost;
    # bodies only for a route with --log-bodies).
    """
    CREATE TABLE gateway_routes (
        name       TEXT PRIMARY KEY,
        api        TEXT NOT NULL,
        chain_json TEXT NOT NULL,
        timeout_s  REAL NOT NULL,
        log_bodies INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE gateway_keys (
        name        TEXT PRIMARY KEY,
        key_hash    TEXT NOT NULL UNIQUE,
        routes_json TEXT,
        daily_cost  REAL,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE gateway_settings (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        listen     TEXT,
        public     INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE gateway_calls (
        id                 INTEGER PRIMARY KEY,
        at                 TEXT NOT NULL,
        key_name           TEXT,
        route              TEXT NOT NULL,
        api                TEXT NOT NULL,
        streamed           INTEGER NOT NULL,
        outcome            TEXT NOT NULL,
        status             INTEGER,
        error              TEXT,
        path_json          TEXT NOT NULL,
        profile            TEXT,
        model              TEXT,
        ttft_ms            INTEGER,
        latency_ms         INTEGER NOT NULL,
        input_tokens       INTEGER NOT NULL DEFAULT 0,
        output_tokens      INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd           REAL NOT NULL DEFAULT 0,
        request_body       TEXT,
        response_body      TEXT
    );
    CREATE INDEX gateway_calls_at ON gateway_calls(at);
    CREATE INDEX gateway_calls_route_at ON gateway_calls(route, at);
    CREATE INDEX gateway_calls_key_at ON gateway_calls(key_name, at);
    """,
    # 15: a profile's 24 h spend (`--daily-cost`) sums its gateway calls too: an index search, not a walk
    # over every call of the day.
    """
    CREATE INDEX gateway_calls_profile_at ON gateway_calls(profile, at);
    """,
    # 16: a run's duration in whole milliseconds, written with its end (`RunStore.finish`, a skipped row's
    # insert): `runs list --limit 10000` answered it from the two ISO times of each row, ~a third of the
    # daemon's CPU for the whole answer (bench/runs_query.py).
    f"""
    ALTER TABLE runs ADD COLUMN duration_ms INTEGER;
    UPDATE runs SET duration_ms = {duration_ms_sql("finished_at", "started_at")} WHERE finished_at IS NOT NULL;
    """,
    # 17: `fleetd stats --source gateway`: per-day and per-hour rollups of the calls, which the store adds each
    # batch of calls to as it logs them (store/gateway_stats.py), filled here with the calls already logged.
    f"""
    {_GATEWAY_CALL_FACTS_VIEW_V17}
    {"".join(_GATEWAY_ROLLUP_TABLES.format(period=period) for period, _ in GATEWAY_PERIODS)}
    {_gateway_rebuild(GATEWAY_SUMS_V17, GATEWAY_FACTS_V17)}
    """,
    # 18: the stats triggers again (`_add_attempt_v18`, `_add_run_v18`), the same figures for less: in SQL alone
    # an attempt's end took ~110 µs more with its trigger than without, a run's ~240 µs; now ~35 and ~40. The
    # ended statuses are compared one by one: an IN list of more than two constants is a temporary b-tree.
    f"""
    DROP TRIGGER stats_attempt_finished;
    CREATE TRIGGER stats_attempt_finished AFTER UPDATE OF finished_at ON attempts
    WHEN OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL
    BEGIN
        {"".join(_add_attempt_v18(table, width) for table, width in _PERIODS)}
    END;
    DROP TRIGGER stats_run_finished;
    CREATE TRIGGER stats_run_finished AFTER UPDATE OF status ON runs
    WHEN OLD.status IN ('running', 'waiting') AND ({" OR ".join(f"NEW.status = {s}" for s in _ENDED_V10.split(", "))})
    BEGIN
        {"".join(_add_run_v18(table, width) for table, width in _PERIODS)}
    END;
    """,
    # 19: each hook's own delivery cursor: the last event id up to which its deliveries all ended (NULL: none
    # past `hook_cursor`). `hook_cursor` stays where the log is read from (the oldest of them); a hook past it
    # is not sent again what it got before a stop, however far behind another hook is.
    """
    ALTER TABLE hooks ADD COLUMN delivered_upto INTEGER;
    """,
    # 20: an exhaustion fleetd counted against the profile's own --limit (1), not one the provider reported
    # (0): only the first is judged again at every beat, so raising or clearing the limit frees the profile.
    """
    ALTER TABLE profile_state ADD COLUMN counted INTEGER NOT NULL DEFAULT 0;
    """,
    # 21: a gateway try's usage record says which it is (its call's id and the try's number): the journal a kill -9
    # leaves is replayed at the next start (gateway/journal.py), and what was written before the kill is skipped. The
    # index also gives the largest call id any record holds: ids go on from there after the calls are pruned.
    """
    ALTER TABLE usage_records ADD COLUMN gateway_call INTEGER;
    ALTER TABLE usage_records ADD COLUMN gateway_try INTEGER;
    CREATE UNIQUE INDEX usage_gateway_try ON usage_records (gateway_call, gateway_try) WHERE gateway_call IS NOT NULL;
    """,
    # 22: when a paused loop was paused (`why not`'s `since`): its updated_at, which it was, moves with every edit.
    # A loop paused before this has only that to go on.
    """
    ALTER TABLE loops ADD COLUMN paused_at TEXT;
    UPDATE loops SET paused_at = updated_at WHERE enabled = 0;
    """,
    # 23: the stats facts of runs pruned by count (`runs prune --keep-per-loop`), as the views gave them: a window's
    # first, partial hour is read from the raw rows (store/stats.py), and those runs were missing from it. Runs
    # pruned by age leave none (a window that starts before the retention may miss its first partial hour), and
    # these go by age too (store/retention.py).
    """
    CREATE TABLE stats_pruned_attempts (
        started_at TEXT NOT NULL, loop TEXT, backend TEXT, profile TEXT,
        model TEXT, step INTEGER, role TEXT, input_tokens INTEGER,
        output_tokens INTEGER, cache_read_tokens INTEGER, cache_write_tokens INTEGER, cost_usd REAL,
        duration_ms INTEGER
    );
    CREATE INDEX stats_pruned_attempts_at ON stats_pruned_attempts (started_at);
    CREATE TABLE stats_pruned_runs (
        started_at TEXT NOT NULL, loop TEXT, succeeded INTEGER,
        first_backend TEXT, first_profile TEXT, first_model TEXT,
        first_step INTEGER, first_role TEXT, last_backend TEXT,
        last_profile TEXT, last_model TEXT, last_step INTEGER, last_role TEXT,
        fallback INTEGER, escalated INTEGER
    );
    CREATE INDEX stats_pruned_runs_at ON stats_pruned_runs (started_at);
    """,
    # 24: how long one attempt of a loop's run may take (`--attempt-timeout`): a provider that hangs is then a
    # transient failure the chain moves past, not the whole run's --timeout spent on its first step.
    "ALTER TABLE loops ADD COLUMN attempt_timeout_s REAL;",
    # 25: an interrupted gateway call (cut by a crash or a stop) or a refused one has no latency in `stats --source
    # gateway`: taken out of the latency histograms it was added to, for the calls still logged (a pruned one's stays).
    f"""
    {"".join(_UNCOUNT_UNKNOWN_LATENCY.format(period=period, width=width) for period, width in GATEWAY_PERIODS)}
    DROP VIEW gateway_call_facts;
    {_GATEWAY_CALL_FACTS_VIEW_V25}
    """,
    # 26: `stats --source gateway` counts the calls fleetd refused for their key's own --daily-cost apart: they were
    # calls that failed, and its success rate blamed the providers for the user's cap. Filled from the calls still
    # logged (a pruned one's stays a failed call).
    f"""
    {"".join(_COUNT_REJECTED.format(period=period, width=width) for period, width in GATEWAY_PERIODS)}
    DROP VIEW gateway_call_facts;
    {_GATEWAY_CALL_FACTS_VIEW}
    """,
]

# What a pruned run leaves for the raw part of a stats window (migration 23), `{ids}` its run ids' marks.
PRUNED_ATTEMPT_COLUMNS = (
    "started_at, loop, backend, profile, model, step, role, input_tokens, output_tokens, cache_read_tokens, "
    "cache_write_tokens, cost_usd, duration_ms"
)
PRUNED_RUN_COLUMNS = (
    "started_at, loop, succeeded, first_backend, first_profile, first_model, first_step, first_role, last_backend, "
    "last_profile, last_model, last_step, last_role, fallback, escalated"
)
KEEP_PRUNED_FACTS = (
    f"INSERT INTO stats_pruned_attempts ({PRUNED_ATTEMPT_COLUMNS}) SELECT {PRUNED_ATTEMPT_COLUMNS} "
    "FROM stats_attempt_facts WHERE attempt_id IN (SELECT id FROM attempts WHERE run_id IN ({ids}))",
    f"INSERT INTO stats_pruned_runs ({PRUNED_RUN_COLUMNS}) SELECT {PRUNED_RUN_COLUMNS} "
    "FROM stats_run_facts WHERE run_id IN ({ids})",
)
