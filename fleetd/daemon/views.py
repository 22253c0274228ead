"""The JSON shapes of the API: the contract between CLI and daemon (documented in the README)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fleetd.backends.registry import get_adapter
from fleetd.hooks.dispatch import LastDelivery
from fleetd.records.circuit import Circuit
from fleetd.records.hook import Hook
from fleetd.records.loop import Loop
from fleetd.records.profile import PRICE_FIELDS, Profile
from fleetd.records.run import Attempt, Pruned, Run
from fleetd.store.schema import duration_ms_sql
from fleetd.store.stats import Stats, StatsRow
from fleetd.timefmt import to_iso


def loop_json(
    loop: Loop, last_run: Run | None = None, running_run_id: int | None = None, waiting_until: datetime | None = None
) -> dict[str, Any]:
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
        "profiles": loop.profiles,
        "model": loop.model,
        "agent_args": loop.agent_args,
        "routed": get_adapter(loop.backend).needs_profile,
        "chain": [step.describe() for step in loop.chain],
        "tiers": list(loop.tiers),
        "max_cost": loop.max_cost,
        "max_tokens": loop.max_tokens,
        "daily_cost": loop.daily_cost,
        "on_exhausted": loop.on_exhausted,
        "verify": loop.verify,
        "verify_timeout_s": loop.verify_timeout_s,
        "attempt_timeout_s": loop.attempt_timeout_s,
        "repair": loop.repair,
        "review": loop.review.describe() if loop.review else None,
        "last_run": None
        if last_run is None
        else {"id": last_run.id, "status": last_run.status, "started_at": to_iso(last_run.started_at)},
        "running_run_id": running_run_id,
        "waiting_until": to_iso(waiting_until),
    }


def _auth_hint(profile: Profile, key_missing: str | None, logged_in: bool) -> str | None:
    """What the user does next for `profile` to authenticate, or None."""
    if key_missing:
        return (
            f"its API key is not in the secret store ({key_missing}): add it again with "
            f"`fleetd profile set-key {profile.name} --api-key-stdin < key.txt`"
        )
    return None if logged_in else get_adapter(profile.backend).auth_hint(profile)


def profile_json(profile: Profile, key_missing: str | None = None, logged_in: bool = False) -> dict[str, Any]:
    """`key_missing`: where its key should be and is not (the secret store's description); `logged_in`: its
    CLI's credentials are where the CLI keeps them (no login to ask for)."""
    adapter = get_adapter(profile.backend)
    return {
        "name": profile.name,
        "backend": profile.backend,
        "tier": profile.tier,
        "config_dir": profile.config_dir,
        "base_url": profile.base_url,
        "model": profile.model,
        "prices_per_mtok": {key.removeprefix("price_"): getattr(profile, key) for key in PRICE_FIELDS},
        "has_api_key": profile.has_secret,
        # key, login, none (a server on this host), or missing (it needs a key, or its key is gone from the store)
        "auth": "missing" if key_missing else adapter.auth_state(profile),
        "auth_hint": _auth_hint(profile, key_missing, logged_in),
        "enabled": profile.enabled,
        "limits": [limit.describe() for limit in profile.limits],
        "default_reset_s": profile.default_reset_s,
        "daily_cost": profile.daily_cost,
        "created_at": to_iso(profile.created_at),
    }


def circuit_json(circuit: Circuit) -> dict[str, Any]:
    return {
        "state": circuit.state,
        "open_until": to_iso(circuit.open_until) if circuit.state == "open" else None,
        "failures": circuit.failures,
        "cooldown_s": circuit.cooldown_s,
    }


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "backend": attempt.backend,
        "profile": attempt.profile,
        "model": attempt.model,
        "started_at": to_iso(attempt.started_at),
        "finished_at": to_iso(attempt.finished_at),
        "exit_code": attempt.exit_code,
        "outcome": attempt.outcome,
        "error_class": attempt.error_class,
        "error": attempt.error,
        "reset_at": to_iso(attempt.reset_at),
        "tokens": {
            "input": attempt.input_tokens,
            "output": attempt.output_tokens,
            "cache_read": attempt.cache_read_tokens,
            "cache_write": attempt.cache_write_tokens,
        },
        "cost_usd": attempt.cost_usd,
        "step": attempt.step,
        "role": attempt.role,
        "duration_ms": attempt.duration_ms,
        "verify_exit": attempt.verify_exit,
        "verify_ms": attempt.verify_ms,
        "accepted": attempt.accepted,
        "findings": attempt.findings,
        "session_id": attempt.session_id,
        "windows": attempt.windows,
        "result_text": attempt.result_text,
    }


def result_json(run: Run, attempt: Attempt) -> dict[str, Any]:
    """`runs result`: the final message of the attempt whose work the run accepted."""
    return {
        "run": run.id,
        "loop": run.loop,
        "status": run.status,
        "attempt": attempt.number,
        "step": attempt.step,
        "backend": attempt.backend,
        "profile": attempt.profile,
        "model": attempt.model,
        "session_id": attempt.session_id,
        "result_text": attempt.result_text,
    }


def run_json(
    run: Run, attempts: list[Attempt] | None = None, route: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
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
        "wait_until": to_iso(run.wait_until),
        "skip_reason": run.skip_reason,
        "skipped_count": run.skipped_count,
        **({"attempt_list": [attempt_json(a) for a in attempts]} if attempts is not None else {}),
        **({"route": route} if route is not None else {}),
    }


# `run_json(run)` without attempt_list and route, as SQLite builds it from a row of `runs`: what `runs list`
# answers. 10,000 runs as Run objects, then dicts, then json.dumps cost the daemon ~400 ms on this 2-core
# machine; one JSON text per row straight from the index search, joined into the answer's array by SQLite too
# (RunStore.list_array), a tenth of that (bench/runs_query.py).
# tests/daemon/test_views.py pins the same keys, order and values as run_json on awkward rows.
# Invariant: `runs` holds every time as `to_iso` wrote it, YYYY-MM-DDTHH:MM:SS.mmm+00:00 (so since the first
# schema), which is also what the API says: the stored text is the answer, and a duration is a whole number of
# milliseconds (`duration_ms`, written with the run's end), so ms / 1000.0 is exactly run_json's
# round((finished_at - started_at).total_seconds(), 3). A row some other writer ended without it is worked out
# from its times (only then: coalesce stops at the first value that is not NULL).
_DURATION_SQL = (
    f"coalesce(duration_ms, CASE WHEN finished_at IS NULL THEN NULL "
    f"ELSE {duration_ms_sql('finished_at', 'started_at')} END) / 1000.0"
)
_RUN_JSON_COLUMNS = (
    ("id", "id"),
    ("loop", "loop"),
    ("trigger", "trigger"),
    ("status", "status"),
    ("exit_code", "exit_code"),
    ("scheduled_at", "scheduled_at"),
    ("started_at", "started_at"),
    ("finished_at", "finished_at"),
    ("duration_s", _DURATION_SQL),
    ("backend", "backend"),
    ("profile", "profile"),
    ("error", "error"),
    ("attempts", "attempts"),
    ("log_path", "log_path"),
    ("pid", "pid"),
    ("wait_until", "wait_until"),
    ("skip_reason", "skip_reason"),
    ("skipped_count", "skipped_count"),
)
RUN_JSON_SQL = "json_object(" + ", ".join(f"'{key}', {column}" for key, column in _RUN_JSON_COLUMNS) + ")"


def pruned_json(freed: Pruned, *, older_than_s: float | None, keep_per_loop: int | None) -> dict[str, Any]:
    """What `runs prune` freed, and by which criteria."""
    return {**freed.to_json(), "older_than_s": older_than_s, "keep_per_loop": keep_per_loop}


def _amount(value: float, unit: str) -> float | int:
    """A window's amount in its unit: tokens and requests are counts (`2451`, not `2451.0`), dollars rounded to the
    micro-dollar (a sum's float tail, 0.015066000000000001, said nothing more)."""
    return round(value, 6) if unit == "usd" else round(value)


def usage_json(row: dict[str, Any]) -> dict[str, Any]:
    """One row of `fleetd usage`: a profile's state, windows and whether it is its backend's active one."""
    profile, stored, now = row["profile"], row["stored"], row["now"]
    status = stored.status
    windows = []
    for w in row["windows"]:
        windows.append(
            {
                "window": w.limit.label,
                "unit": w.limit.unit,
                "used": _amount(w.used, w.limit.unit),
                "limit": _amount(w.limit.amount, w.limit.unit),
                "percent": round(100 * w.fraction, 1),
                "eases_at": to_iso(w.eases_at),
            }
        )
    # A reported window whose reset has passed says nothing about now: marked, so it is not shown as full.
    reported = [{**w.to_json(), "expired": w.resets_at is not None and w.resets_at <= now} for w in stored.reported]
    resets_in = None
    if status.exhausted_until is not None:
        resets_in = max(0.0, round((status.exhausted_until - now).total_seconds(), 1))
    return {
        "profile": profile.name,
        "backend": profile.backend,
        "tier": profile.tier,
        "state": status.state,
        "reason": status.reason,
        "unconfirmed": status.unconfirmed,
        "exhausted_until": to_iso(status.exhausted_until),
        "resets_in_s": resets_in,
        "windows": windows,
        "reported_windows": reported,
        "active": row["active"],
        "pinned": row["pinned"],
        "in_flight": row["in_flight"],
        "garbled_lines": stored.garbled_lines,
        "circuit": circuit_json(row["circuit"]),
        "daily_cost": None
        if profile.daily_cost is None or row.get("daily_cost_spent") is None
        else {
            "spent": round(row["daily_cost_spent"], 6),  # a sum of costs: 0.30000000000000004 said nothing more
            "cap": profile.daily_cost,
            "over": row["daily_cost_over"],  # passed over for it (its meaning since it was added)
            "reached": row["daily_cost_reached"],
            "room_at": to_iso(row["daily_cost_room_at"]),  # when spend leaving the 24 h window makes room again
        },
    }


def stats_json(stats: Stats, until: datetime) -> dict[str, Any]:
    """`fleetd stats --json`: the window, the grouping, one object per group and the total."""
    return {
        "since": to_iso(stats.since),
        "until": to_iso(until),
        "by": list(stats.by),
        "loop": stats.loop,
        "groups": [_stats_row_json(row) for row in stats.groups],
        "total": _stats_row_json(stats.total),
    }


def _stats_row_json(row: StatsRow) -> dict[str, Any]:
    def rate(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    def seconds(ms: int | None) -> float | None:
        return None if ms is None else ms / 1000

    return {
        "group": row.group,
        "runs_started": row.runs_started,
        "runs_ended": row.runs_ended,
        "attempts": row.attempts,
        "succeeded": row.succeeded,
        "fallbacks": row.fallbacks,
        "escalations": row.escalations,
        "success_rate": rate(row.success_rate),
        "fallback_rate": rate(row.fallback_rate),
        "escalation_rate": rate(row.escalation_rate),
        "p50_duration_s": seconds(row.p50_duration_ms),
        "p95_duration_s": seconds(row.p95_duration_ms),
        "tokens": {
            "input": row.input_tokens,
            "output": row.output_tokens,
            "cache_read": row.cache_read_tokens,
            "cache_write": row.cache_write_tokens,
        },
        "cost_usd": round(row.cost_usd, 6),
        "cost_per_success_usd": None if row.cost_per_success is None else round(row.cost_per_success, 6),
    }


def hook_json(hook: Hook, last: LastDelivery | None = None, pending: int = 0, dropped: int = 0) -> dict[str, Any]:
    """A hook, never its secret: `has_secret` says whether one is set."""
    return {
        "name": hook.name,
        "on": list(hook.on),
        "kind": hook.kind,
        "exec": hook.target if hook.kind == "exec" else None,
        "webhook": hook.target if hook.kind == "webhook" else None,
        "timeout_s": hook.timeout_s,
        "has_secret": hook.has_secret,
        "created_at": to_iso(hook.created_at),
        # since the daemon started (kept in its memory)
        "last_delivery": last.to_json() if last else None,
        "pending": pending,
        "dropped": dropped,
    }
