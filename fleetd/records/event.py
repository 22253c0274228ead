"""The event types fleetd writes to its event log (`fleetd events`), defined once: hooks validate `--on`
against this table, and a test checks that every type the code emits is listed here.

Invariant: a type is `<family>.<name>`. The `hook` family is fleetd's account of its own hooks: it is
never delivered to a hook (a failing hook would otherwise trigger itself), so no `--on` may name it
and `*` does not include it.
"""

from __future__ import annotations

from fleetd.errors import InvalidArgument, shown

EVENT_TYPES: dict[str, str] = {
    # a run's lifecycle
    "run.started": "a run started",
    "run.succeeded": "a run succeeded",
    "run.failed": "a run failed",
    "run.timed_out": "a run hit its --timeout",
    "run.waiting": "a run waits for headroom (a profile's reset, or room under its limits)",
    "run.cancelled": "a run was stopped by hand",
    "run.interrupted": "a run was cut short by a daemon stop or crash",
    # fires that started no run
    "loop.fire_skipped": "a fire came due and started no run (overlap, budget, paused, ...)",
    "loop.fire_missed": "fires fell while the daemon could not fire them (down, asleep)",
    # profiles, as the heartbeat judges them
    "profile.exhausted": "a profile reached a limit until its reset",
    "profile.near_limit": "a profile is close to a limit",
    "profile.quota": "a profile's quota is used up (parked)",
    "profile.disabled": "a profile was disabled",
    "profile.recovered": "a profile is usable again",
    "profile.available": "a profile is no longer near a limit",
    "profile.switched": "a backend's active profile changed",
    "profile.auto": "a backend's active profile is chosen automatically again",
    # circuit breakers
    "circuit.opened": "a profile's circuit opened after repeated failures",
    "circuit.half_open": "an open circuit lets one probe through",
    "circuit.closed": "a circuit closed again",
    # routing and budgets
    "budget.exceeded": "a fire was skipped: the loop spent its daily cost",
    "candidate.unavailable": "a run passed over a profile",
    # hooks themselves: written to the log, never delivered to hooks
    "hook.failed": "a hook's delivery failed or was dropped",
    "hook.test": "`fleetd hook test`: delivered to one hook, never written to the log",
}
HOOK_FAMILY = "hook"
FAMILIES = tuple(sorted({t.split(".", 1)[0] for t in EVENT_TYPES}))
MAX_PATTERNS = 64


def is_hook_event(event_type: str) -> bool:
    return event_type.split(".", 1)[0] == HOOK_FAMILY


def parse_patterns(value: object) -> tuple[str, ...]:
    """`--on`: a comma-separated list (or a JSON list) of event types, `family.*` or `*`; in order,
    duplicates dropped. Raises InvalidArgument naming the first bad entry."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [part for v in value for part in v.split(",")]
    else:
        raise InvalidArgument("--on must name event types, e.g. --on run.failed,circuit.opened")
    patterns = [item.strip() for item in items if item.strip()]
    if not patterns:
        raise InvalidArgument("--on must name at least one event type, e.g. --on run.failed")
    if len(patterns) > MAX_PATTERNS:
        raise InvalidArgument(f"--on names {len(patterns)} event types; at most {MAX_PATTERNS}")
    for pattern in patterns:
        _check_pattern(pattern)
    return tuple(dict.fromkeys(patterns))


def _check_pattern(pattern: str) -> None:
    if pattern == "*":
        return
    family = pattern.split(".", 1)[0]
    if family == HOOK_FAMILY:
        raise InvalidArgument(
            f"--on {shown(pattern)}: hook events are not delivered to hooks (a failing hook would trigger itself)"
        )
    if pattern.endswith(".*") and pattern.count(".") == 1:
        if family in FAMILIES:
            return
        raise InvalidArgument(
            f"unknown event family in --on {shown(pattern)} "
            f"(one of: {', '.join(f'{f}.*' for f in FAMILIES if f != HOOK_FAMILY)})"
        )
    if pattern not in EVENT_TYPES:
        known = ", ".join(t for t in EVENT_TYPES if not is_hook_event(t))
        raise InvalidArgument(f"unknown event type {shown(pattern)} in --on (one of: {known}; or family.*, or *)")


def matches(patterns: tuple[str, ...], event_type: str) -> bool:
    """Whether a hook subscribed to `patterns` receives `event_type`. Hook events never match."""
    if is_hook_event(event_type):
        return False
    family = event_type.split(".", 1)[0]
    return any(p == "*" or p == event_type or p == f"{family}.*" for p in patterns)
