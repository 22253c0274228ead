"""Schema migrations, applied in order by `PRAGMA user_version`.

Each script runs inside its own transaction together with its version bump, so a failing step
leaves the database exactly at the previous version.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
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
    ALTER TABLE attempts ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
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
]
