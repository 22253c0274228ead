"""What the four agent-CLI adapters share: a prompt is required, the profile is required, the
CLI is found on PATH, and extra arguments pass through."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Literal

from fleetd.backends.defaults import AdapterDefaults
from fleetd.errors import InvalidArgument
from fleetd.records.loop import Loop

if TYPE_CHECKING:
    from fleetd.records.profile import Profile


class AgentCli(AdapterDefaults):
    name = ""
    executable = ""
    kind: Literal["process"] = "process"
    needs_profile = True
    end_on_live_failure = False
    uses_config_dir = False  # the CLI keeps the profile's login in its config directory

    def unavailable(self, profile: Profile) -> str | None:
        """Why this profile cannot run here at all, before trying (the router skips it)."""
        if shutil.which(self.executable) is None:
            return f"{self.executable} not found on the daemon's PATH"
        return self.setup_problem(profile)

    def setup_problem(self, profile: Profile) -> str | None:
        if self.uses_config_dir and not os.path.isdir(profile.config_dir):
            return f"its config directory {profile.config_dir} is gone"
        return None

    def validate(self, loop: Loop) -> None:
        if loop.prompt is None and loop.prompt_file is None:
            raise InvalidArgument(f"the {self.name} backend needs --prompt or --prompt-file")
        if loop.command:
            raise InvalidArgument(f"the {self.name} backend takes no --command")
