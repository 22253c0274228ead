"""What an attempt asks a backend to do: the loop's work, without its schedule, pool or routing."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetd.records.loop import Loop


@dataclass(frozen=True)
class Task:
    """An adapter builds its process or call from this (and the profile); it never sees the Loop, so
    it cannot come to depend on scheduling or routing fields."""

    loop: str  # the loop's name
    command: str | None = None
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # the loop's --env, applied over the adapter's
    agent_args: tuple[str, ...] = ()  # passed through to the CLI (only on the loop's own backend)
    timeout_s: float | None = None  # the run's whole --timeout (AttemptContext.timeout_s is what is left)

    @classmethod
    def of(cls, loop: Loop, *, agent_args: bool = True) -> Task:
        """The loop's task; `agent_args=False` drops its --agent-arg (an attempt on another backend's CLI)."""
        return cls(
            loop=loop.name,
            command=loop.command,
            workdir=loop.workdir,
            env=dict(loop.env),
            agent_args=tuple(loop.agent_args) if agent_args else (),
            timeout_s=loop.timeout_s,
        )
