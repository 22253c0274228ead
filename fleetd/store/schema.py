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
]
