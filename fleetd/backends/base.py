"""The adapter seam: what every backend turns a task into, and what it makes of the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from fleetd.loops.model import Loop

AttemptOutcome = Literal["succeeded", "failed", "unknown"]


@dataclass(frozen=True)
class Task:
    """One attempt's worth of work, as the loop defines it."""

    run_id: int
    loop: Loop
    prompt: str | None


@dataclass
class ProcessSpec:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the daemon's environment
    unset_env: tuple[str, ...] = ()
    stdin: bytes | None = None
    cwd: str | None = None


@dataclass
class AttemptResult:
    outcome: AttemptOutcome
    error: str | None = None
    error_class: str | None = None


class Adapter(Protocol):
    name: str

    def validate(self, loop: Loop) -> None:
        """Raise InvalidArgument when the loop lacks what this backend needs."""

    def build(self, task: Task) -> ProcessSpec: ...

    def interpret(self, exit_code: int, output_tail: bytes) -> AttemptResult: ...
