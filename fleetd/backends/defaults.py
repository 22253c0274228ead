"""What an adapter answers when its backend has nothing to say on a point: no login command, no
usage files, no live failures to watch for, output that is text already. Adapters override only
what their CLI does."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from fleetd.backends.base import EnvChange, UsageReader
from fleetd.records.result import ErrorClass

if TYPE_CHECKING:
    from fleetd.records.profile import Profile


class AdapterDefaults:
    executable: str | None = None  # nothing to find on PATH

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        return EnvChange()

    def login_argv(self, profile: Profile) -> list[str] | None:
        return None

    def unavailable(self, profile: Profile) -> str | None:
        return None

    def login_problem(self, profile: Profile, env: Mapping[str, str]) -> str | None:
        return None  # a key (kept by fleetd's secret store), or no login at all

    def validate_profile(self, profile: Profile) -> None:
        return None

    def usage_reader(self, profile: Profile, offsets: Mapping[str, Any]) -> UsageReader | None:
        return None

    def log_renderer(self) -> Callable[[str], str | None] | None:
        return None  # its output is text already

    def live_failure(self, line: str) -> ErrorClass | None:
        return None  # the CLI stops by itself (its retries are turned off): nothing to cut short

    def gateway_apis(self, profile: Profile) -> dict[str, str]:
        return {}  # the gateway cannot reach this backend's provider

    def gateway_auth(self, secret: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {secret}"} if secret else {}
