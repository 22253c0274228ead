"""The JSON shapes of the API: the contract between CLI and daemon (documented in the README)."""

from __future__ import annotations

from typing import Any

from fleetd.loops.model import Loop
from fleetd.store.runs import Run
from fleetd.timefmt import to_iso


def loop_json(loop: Loop, last_run: Run | None = None, running_run_id: int | None = None) -> dict[str, Any]:
    return {
        "name": loop.name,
        "schedule": {
            "kind": loop.schedule.kind,
            "expr": loop.schedule.expr,
            "timezone": loop.schedule.timezone,
        },
        "backend": loop.backend,
        "command": loop.command,
        "prompt": loop.prompt,
        "prompt_file": loop.prompt_file,
        "dir": loop.workdir,
        "env": loop.env,
        "timeout_s": loop.timeout_s,
        "catch_up": loop.catch_up,
        "output_cap_bytes": loop.output_cap,
        "enabled": loop.enabled,
        "next_fire_at": to_iso(loop.next_fire_at),
        "last_fire_at": to_iso(loop.last_fire_at),
        "created_at": to_iso(loop.created_at),
        "updated_at": to_iso(loop.updated_at),
        "last_run": None
        if last_run is None
        else {"id": last_run.id, "status": last_run.status, "started_at": to_iso(last_run.started_at)},
        "running_run_id": running_run_id,
    }


def run_json(run: Run) -> dict[str, Any]:
    duration = None
    if run.finished_at is not None:
        duration = round((run.finished_at - run.started_at).total_seconds(), 3)
    return {
        "id": run.id,
        "loop": run.loop,
        "trigger": run.trigger,
        "status": run.status,
        "exit_code": run.exit_code,
        "scheduled_at": to_iso(run.scheduled_at),
        "started_at": to_iso(run.started_at),
        "finished_at": to_iso(run.finished_at),
        "duration_s": duration,
        "backend": run.backend,
        "profile": run.profile,
        "error": run.error,
        "attempts": run.attempts,
        "log_path": run.log_path,
        "pid": run.pid,
    }
