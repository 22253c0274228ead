"""The task an adapter receives: the loop's work, and its --agent-arg only on the loop's own backend."""

from __future__ import annotations

from fleetd.records.loop import Loop, Schedule
from fleetd.records.task import Task

LOOP = Loop(
    name="fix", schedule=Schedule("every", "1h", "UTC"), backend="claude_code", prompt="hi", workdir="/srv/repo",
    env={"A": "1"}, timeout_s=60.0, agent_args=["--verbose"], profiles=["cc"],
)  # fmt: skip


def test_a_task_carries_what_an_adapter_reads() -> None:
    assert Task.of(LOOP) == Task("fix", None, "/srv/repo", {"A": "1"}, ("--verbose",), 60.0)


def test_an_attempt_on_another_backend_drops_the_agent_args() -> None:
    assert Task.of(LOOP, agent_args=False).agent_args == ()


def test_the_task_does_not_share_the_loops_env() -> None:
    loop = Loop(name="l", schedule=Schedule("every", "1h", "UTC"), backend="command", command="true", env={"A": "1"})
    task = Task.of(loop)
    loop.env["B"] = "2"
    assert task.env == {"A": "1"}
