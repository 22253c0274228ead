"""What the four agent-CLI adapters share: a prompt is required, the profile is required, the
CLI is found on PATH, and extra arguments pass through."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from fleetd.backends.base import EnvChange, UsageReader
from fleetd.errors import InvalidArgument
from fleetd.records.loop import Loop
from fleetd.records.result import ErrorClass

if TYPE_CHECKING:
    from fleetd.records.profile import Profile


class AgentCli:
    name = ""
    executable = ""
    kind: Literal["process"] = "process"
    needs_profile = True
    end_on_rate_limit_line = False
    uses_config_dir = False  # the CLI keeps the profile's login in its config directory

    def unavailable(self, profile: Profile) -> str | None:
        """Why this profile cannot run here at all, before trying (the router skips it)."""
        if shutil.which(self.executable) is None:
            return f"{self.executable} not found on the daemon's PATH"
        if self.uses_config_dir and not os.path.isdir(profile.config_dir):
            return f"its config directory {profile.config_dir} is gone"
        return None

    def validate(self, loop: Loop) -> None:
        if loop.prompt is None and loop.prompt_file is None:
            raise InvalidArgument(f"the {self.name} backend needs --prompt or --prompt-file")
        if loop.command:
            raise InvalidArgument(f"the {self.name} backend takes no --command")

    def validate_profile(self, profile: Profile) -> None:
        pass

    def usage_reader(self, profile: Profile, offsets: Mapping[str, Any]) -> UsageReader | None:
        return None

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        return EnvChange()

    def login_argv(self, profile: Profile) -> list[str] | None:
        return None

    def log_renderer(self) -> Callable[[str], str | None] | None:
        return None  # its output is text already

    def live_failure(self, line: str) -> ErrorClass | None:
        return None  # the CLI stops retrying by itself (its retries are turned off): nothing to cut short
