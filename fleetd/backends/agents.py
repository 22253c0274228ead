"""What the four agent-CLI adapters share: a prompt is required, the profile is required, the
CLI is found on PATH, and extra arguments pass through."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from fleetd.backends.base import EnvChange
from fleetd.backends.result import ErrorClass
from fleetd.errors import InvalidArgument
from fleetd.loops.model import Loop

if TYPE_CHECKING:
    from fleetd.profiles.model import Profile


class AgentCli:
    name = ""
    executable = ""
    kind: Literal["process"] = "process"
    needs_profile = True
    end_on_rate_limit_line = False

    def validate(self, loop: Loop) -> None:
        if loop.prompt is None and loop.prompt_file is None:
            raise InvalidArgument(f"the {self.name} backend needs --prompt or --prompt-file")
        if loop.command:
            raise InvalidArgument(f"the {self.name} backend takes no --command")

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        return EnvChange()

    def login_argv(self, profile: Profile) -> list[str] | None:
        return None

    def live_failure(self, line: str) -> ErrorClass | None:
        return None  # the CLI stops retrying by itself (its retries are turned off): nothing to cut short
