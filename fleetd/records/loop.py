"""A loop and its schedule and escalation chain, as stored and as the scheduler and executor read them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

ScheduleKind = Literal["cron", "every", "at"]
CatchUp = Literal["once", "skip"]

# The tiers (records.profile.TIERS) a backend step may expand to unless the loop says otherwise:
# metered only when a loop says so.
DEFAULT_TIERS = ("local", "subscription")
ON_EXHAUSTED = ("escalate", "wait")
DEFAULT_ON_EXHAUSTED = "escalate"
DEFAULT_OUTPUT_CAP = 10 * 1024 * 1024
MIN_OUTPUT_CAP = 1024
# 1 TiB: far beyond any useful log tail, and well inside what SQLite's INTEGER column holds.
MAX_OUTPUT_CAP = 1024**4
DEFAULT_VERIFY_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Schedule:
    kind: ScheduleKind
    expr: str  # as the user gave it: cron fields, a duration, or an ISO time
    timezone: str

    def describe(self) -> str:
        return f"{self.kind} {self.expr}"


@dataclass(frozen=True)
class ChainStep:
    """One step of a loop's escalation chain (routing/chain.py parses and explains them)."""

    backend: str
    profiles: tuple[str, ...] = ()  # named profiles (any tier); empty: every allowed profile of the backend
    model: str | None = None

    @property
    def explicit(self) -> bool:
        return bool(self.profiles)

    def describe(self) -> str:
        who = ",".join(self.profiles) if self.profiles else self.backend
        return f"{who}@{self.model}" if self.model else who

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "profiles": list(self.profiles), "model": self.model}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChainStep:
        return cls(str(data["backend"]), tuple(data.get("profiles") or ()), data.get("model"))


@dataclass
class Loop:
    name: str
    schedule: Schedule
    backend: str
    command: str | None = None
    prompt: str | None = None
    prompt_file: str | None = None
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    attempt_timeout_s: float | None = None  # one attempt of a routed run: past it, a transient failure (it hung)
    catch_up: CatchUp = "once"
    output_cap: int = DEFAULT_OUTPUT_CAP
    enabled: bool = True
    profiles: list[str] = field(default_factory=list)  # the pool; empty = every enabled profile of the backend
    model: str | None = None
    agent_args: list[str] = field(default_factory=list)
    # Routing (agent backends): an escalation chain (empty: one step, `backend` over `profiles` with
    # `model`), the tiers a backend step may expand to, and what a run / a day may spend.
    chain: list[ChainStep] = field(default_factory=list)
    tiers: tuple[str, ...] = DEFAULT_TIERS
    max_cost: float | None = None  # USD per run
    max_tokens: int | None = None  # per run
    daily_cost: float | None = None  # USD per rolling 24 h, for the loop
    on_exhausted: str = DEFAULT_ON_EXHAUSTED  # or "wait" for the step's reset
    # Acceptance: a command whose exit 0 accepts an attempt's work, and how many repair rounds a
    # rejected worker gets before the next step takes over.
    verify: str | None = None
    verify_timeout_s: float = DEFAULT_VERIFY_TIMEOUT_S
    repair: int = 0
    review: ChainStep | None = None  # a cheap reviewer agent that must accept the work too
    created_at: datetime | None = None
    updated_at: datetime | None = None
    paused_at: datetime | None = None  # when it was last paused, while it is (an edit meanwhile moves updated_at)
    last_fire_at: datetime | None = None
    next_fire_at: datetime | None = None

    @property
    def instance(self) -> tuple[str, datetime | None]:
        """This loop as it was added. A loop removed and added again under its name is another instance:
        it inherits none of the old one's runs (runs of an instance started at or after its `created_at`).
        An edit keeps the instance."""
        return (self.name, self.created_at)


def paused_since(enabled: bool, was: datetime | None, now: datetime) -> datetime | None:
    """A loop's `paused_at` after a change at `now`: none while enabled; else `was`, when it was paused already (a
    change while paused keeps when the pause began), or `now`. `LoopStore.set_state` writes the same rule in SQL."""
    return None if enabled else was or now
