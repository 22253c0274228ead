"""What an adapter answers when its backend has nothing to say on a point: no login command, no
usage files, no live failures to watch for, output that is text already. Adapters override only
what their CLI does."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from fleetd.backends.base import AuthKind, EnvChange, UsageReader
from fleetd.records.profile import is_loopback
from fleetd.records.result import ErrorClass

if TYPE_CHECKING:
    from fleetd.records.profile import Profile


class AdapterDefaults:
    name = ""
    executable: str | None = None  # nothing to find on PATH
    auth: AuthKind = "login"
    stderr_apart = True  # a CLI's errors and its answer are told apart (ProcessAdapter.stderr_apart)
    takes_cost_cap = False  # (Adapter.takes_cost_cap)

    def auth_problem(self, profile: Profile) -> str | None:
        if profile.has_secret or self.auth == "login":
            return None  # a login cannot be checked without running the CLI: `doctor` and the first run tell
        if self.auth == "key_unless_local":
            if is_loopback(profile.base_url):
                return None
            return "no API key (its --base-url is not on this host)"
        return "no API key"

    def auth_state(self, profile: Profile) -> str:
        if profile.has_secret:
            return "key"
        if self.auth_problem(profile):
            return "missing"
        return "login" if self.auth == "login" else "none"

    def auth_hint(self, profile: Profile) -> str | None:
        problem = self.auth_problem(profile)
        if problem is not None:
            return f"{problem}: add one with `fleetd profile set-key {profile.name} --api-key-stdin < key.txt`"
        if self.auth == "login" and not profile.has_secret:
            return f"log in with `fleetd profile login {profile.name}`"
        return None

    def setup_hint(self) -> str:
        """How to add a profile of this backend: commands in backticks, each copyable as it stands."""
        add = f"fleetd profile add NAME --backend {self.name}"
        if self.auth == "login":
            return f"`{add}`, then `fleetd profile login NAME`"
        if self.auth == "key":
            return f"`{add} --api-key-stdin < key.txt`"
        return f"`{add} --base-url URL` (with `--api-key-stdin < key.txt` unless the URL is on this host)"

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        return EnvChange()

    def login_argv(self, profile: Profile) -> list[str] | None:
        return None

    def unavailable(self, profile: Profile) -> str | None:
        return None

    def setup_problem(self, profile: Profile) -> str | None:
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
