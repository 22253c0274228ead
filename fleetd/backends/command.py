"""The `command` backend: a shell command; the prompt arrives on stdin and in FLEETD_PROMPT."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Literal

from fleetd.backends.base import AttemptContext, ProcessOutput, ProcessSpec
from fleetd.backends.defaults import AdapterDefaults
from fleetd.errors import InvalidArgument
from fleetd.records.loop import Loop
from fleetd.records.result import ParsedOutput


class CommandAdapter(AdapterDefaults):
    name = "command"
    kind: Literal["process"] = "process"
    needs_profile = False
    end_on_live_failure = False
    stderr_apart = False  # its outcome is its exit status; its output, both streams, is only logged

    def validate(self, loop: Loop) -> None:
        if not loop.command or not loop.command.strip():
            raise InvalidArgument("the command backend needs --command")
        if loop.profiles:
            raise InvalidArgument("the command backend takes no --profile")
        if loop.model:
            raise InvalidArgument("the command backend takes no --model")
        if loop.agent_args:
            raise InvalidArgument("the command backend takes no --agent-arg")

    def build(self, ctx: AttemptContext) -> ProcessSpec:
        env = {"FLEETD_PROMPT": ctx.prompt} if ctx.prompt is not None else {}
        return ProcessSpec(
            argv=["/bin/sh", "-c", ctx.task.command or ""],
            env=env,
            stdin=(ctx.prompt or "").encode(),
            cwd=ctx.task.workdir,
        )

    def interpret(self, ctx: AttemptContext, out: ProcessOutput, now: datetime, tz: tzinfo) -> ParsedOutput:
        if out.exit_code == 0:
            return ParsedOutput("succeeded")
        if out.exit_code is not None and out.exit_code < 0:
            return ParsedOutput("failed", message=f"killed by signal {-out.exit_code}")
        return ParsedOutput("failed", message=f"exit code {out.exit_code}")
