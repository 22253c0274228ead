"""Candidate order and failure handling, as plain functions over plain data."""

from __future__ import annotations

from typing import Literal

from fleetd.errors import InvalidArgument
from fleetd.profiles.model import Profile

Action = Literal["next_profile", "stop"]
# A rate limit or a dead login is the profile's problem, not the task's: another profile may do it.
# Anything else (bad arguments, a failing task) would fail the same way under another login.
NEXT_PROFILE_CLASSES = frozenset({"rate_limited", "auth"})


def candidates(pool: list[str], profiles: list[Profile], backend: str) -> list[Profile]:
    """The loop's pool in its order, or (empty pool) every profile of the backend by name; only
    enabled ones."""
    if not pool:
        return [p for p in profiles if p.backend == backend and p.enabled]
    by_name = {p.name: p for p in profiles}
    return [by_name[name] for name in pool if name in by_name and by_name[name].enabled]


def check_pool(pool: list[str], profiles: list[Profile], backend: str) -> None:
    """When a loop is added: every named profile exists and belongs to the loop's backend."""
    by_name = {p.name: p for p in profiles}
    for name in pool:
        profile = by_name.get(name)
        if profile is None:
            raise InvalidArgument(f"unknown profile {name!r} in --profile")
        if profile.backend != backend:
            raise InvalidArgument(f"profile {name!r} is for backend {profile.backend}, not {backend}")


def after_failure(error_class: str | None, has_next: bool) -> Action:
    return "next_profile" if has_next and error_class in NEXT_PROFILE_CLASSES else "stop"
