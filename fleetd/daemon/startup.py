"""The daemon's start-up checks: a home it may use, a database it can trust, a socket it can bind.

Each failure is a StartupError whose message is one line for the user; `run_daemon` prints it and
exits 1 (no traceback, no hang, the instance lock released).
"""

from __future__ import annotations

import logging

from fleetd.paths import Paths, UnsafeDirectory
from fleetd.store.db import Database, StoreError

log = logging.getLogger("fleetd.daemon")


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do, in one line."""


def prepare_home(paths: Paths) -> None:
    try:
        paths.ensure()
    except UnsafeDirectory as e:
        raise StartupError(str(e)) from None


async def open_store(paths: Paths) -> Database:
    _check_not_emptied(paths)
    try:
        return await Database.open(paths.db)
    except StoreError as e:
        raise StartupError(str(e)) from None


def _check_not_emptied(paths: Paths) -> None:
    """A 0-byte database file is a valid empty SQLite database, but fleetd never leaves one behind once it
    has started (the schema is written at once). So an empty file next to traces of earlier use means the
    data was lost, and starting would be worse than refusing: run ids would restart at 1 and overwrite the
    old runs' logs, and SQLite would reset the WAL that may still hold the last changes. Without such
    traces (a file created by hand, or a first start killed at once) it starts empty, with a warning."""
    db = paths.db
    try:
        if db.stat().st_size != 0:
            return
    except FileNotFoundError:
        return  # a first start
    except OSError as e:
        raise StartupError(f"cannot read the database {db}: {e.strerror or e}") from None
    traces = _earlier_state(paths)
    if traces:
        raise StartupError(
            f"the database {db} is an empty file, but this home was used before ({'; '.join(traces)}): it was"
            f" probably truncated. Restore a backup over it, or delete it to start afresh"
        )
    log.warning("the database %s is an empty file: starting with an empty database", db)


def _earlier_state(paths: Paths) -> list[str]:
    traces = []
    wal = paths.db.with_name(paths.db.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        traces.append(f"{wal.name} holds {wal.stat().st_size} bytes")
    backups = sorted(paths.db.parent.glob(f"{paths.db.name}.bak-v*"))
    if backups:
        traces.append(f"backup {backups[-1]}")
    if paths.run_logs.is_dir() and any(p.is_file() for p in paths.run_logs.rglob("*.log")):
        traces.append(f"run logs in {paths.run_logs}")
    return traces
