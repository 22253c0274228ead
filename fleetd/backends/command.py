"""The `command` backend: a shell command; the prompt arrives on stdin and in FLEETD_PROMPT."""

from __future__ import annotations

from fleetd.backends.base import AttemptResult, ProcessSpec, Task
from fleetd.errors import InvalidArgument
from fleetd.loops.model import Loop


class CommandAdapter:
    name = "command"

    def validate(self, loop: Loop) -> None:
        if not loop.command or not loop.command.strip():
            raise InvalidArgument("the command backend needs --command")

    def build(self, task: Task) -> ProcessSpec:
        env = {"FLEETD_PROMPT": task.prompt} if task.prompt is not None else {}
        return ProcessSpec(
            argv=["/bin/sh", "-c", task.loop.command or ""],
            env=env,
            stdin=(task.prompt or "").encode(),
            cwd=task.loop.workdir,
        )

    def interpret(self, exit_code: int, output_tail: bytes) -> AttemptResult:
        if exit_code == 0:
            return AttemptResult("succeeded")
        if exit_code < 0:
            return AttemptResult("failed", f"killed by signal {-exit_code}")
        return AttemptResult("failed", f"exit code {exit_code}")
