"""The adapter seam: what every backend turns an attempt into, and what it makes of the result.

A process backend turns (task, profile) into argv/env/stdin/cwd and parses what came back; an HTTP
backend makes the call itself. Either way the result is a `ParsedOutput`. Nothing here decides
routing: that is `fleetd.routing`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fleetd.records.loop import Loop
from fleetd.records.result import ErrorClass, ParsedOutput
from fleetd.records.task import Task

if TYPE_CHECKING:
    from fleetd.records.profile import Profile


@dataclass(frozen=True)
class AttemptContext:
    run_id: int
    task: Task
    prompt: str | None
    profile: Profile | None
    secret: str | None  # the profile's API key, if it has one; never logged
    model: str | None  # the chain step's model, else the profile's default
    tmpdir: str  # private TMPDIR for this attempt, removed afterwards (made with its process: `build` only names paths)
    timeout_s: float | None = None  # what is left of the run's --timeout
    cost_left: float | None = None  # what the run's budget still allows, for backends that can enforce it
    tokens_left: int | None = None
    resume_session: str | None = None  # a repair round: continue this session of the CLI, where it can
    role: str = "work"  # `review`: the acceptance gate's reviewer agent, which must only answer, never edit


@dataclass
class EnvChange:
    set: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()


@dataclass
class ProcessSpec:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the daemon's environment
    unset_env: tuple[str, ...] = ()
    stdin: bytes | None = None  # None: stdin is closed at once
    cwd: str | None = None


@dataclass
class ProcessOutput:
    exit_code: int | None
    stdout: str
    stderr: str


class UsageReader(Protocol):
    """Reads a CLI's own usage records incrementally (`usage_files`)."""

    watch_root: Path
    offsets: Mapping[str, Any]

    def scan(self, now: datetime) -> Any: ...


# How a profile of a backend authenticates: "login" (the CLI's own login, kept in the profile's config
# directory; an API key may stand in for it), "key" (an API key), "key_unless_local" (an API key, unless the
# profile's --base-url is on this host: a local model server needs none).
AuthKind = Literal["login", "key", "key_unless_local"]


class Adapter(Protocol):
    name: str
    kind: Literal["process", "http"]
    needs_profile: bool
    auth: AuthKind
    # True where the CLI has no setting to stop its own retrying: the attempt then ends at the first
    # line of live output that proves a failure (`live_failure`) instead of sitting out minutes of retries.
    end_on_live_failure: bool
    # True where the CLI stops itself at the budget it is given (`AttemptContext.cost_left`): a run's --max-cost holds
    # there whatever an attempt would cost, so the router need not look ahead for it.
    takes_cost_cap: bool
    # The program that must be on the daemon's PATH (`fleetd doctor`, `loop add`'s warning); None: none.
    executable: str | None

    def validate(self, loop: Loop) -> None:
        """Raise InvalidArgument when the loop lacks what this backend needs."""

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        """The environment that makes the CLI use this profile's login or key."""
        ...

    def login_argv(self, profile: Profile) -> list[str] | None:
        """The CLI's own interactive login, or None when the backend logs in by API key only."""

    def auth_problem(self, profile: Profile) -> str | None:
        """What keeps `profile` from authenticating that fleetd can see (no key where one is needed), or None."""

    def auth_state(self, profile: Profile) -> str:
        """How `profile` authenticates now: "key", "login", "none" (a server on this host) or "missing"."""
        ...

    def auth_hint(self, profile: Profile) -> str | None:
        """What the user does next so that `profile` can authenticate (a login, a key), or None: nothing."""

    def setup_hint(self) -> str:
        """How to add a profile of this backend that can run, as a command line for messages."""

    def unavailable(self, profile: Profile) -> str | None:
        """Why `profile` cannot run on this host at all (its CLI is missing, ...), or None."""

    def setup_problem(self, profile: Profile) -> str | None:
        """Why `profile`'s own setup cannot run here (its config directory is gone), its CLI aside; None when it can.
        Part of `unavailable`; `fleetd doctor` asks it alone (the CLI has a check of its own)."""

    def login_problem(self, profile: Profile, env: Mapping[str, str]) -> str | None:
        """Why the CLI would find no login for `profile` (never logged in: no credentials file where the CLI
        keeps them), for `fleetd doctor`; None when it has one, logs in by key, or this cannot be told from
        the files. `env` is the daemon's environment. Reads files, never the network; never raises."""

    def validate_profile(self, profile: Profile) -> None:
        """Raise InvalidArgument when a new profile lacks what this backend needs."""

    def usage_reader(self, profile: Profile, offsets: Mapping[str, Any]) -> UsageReader | None:
        """The reader of the CLI's own usage records in the profile's directory, resuming at
        `offsets` (its last `offsets`), or None when the CLI keeps none."""

    def live_failure(self, line: str) -> ErrorClass | None:
        """The failure one line of live output already proves, for a CLI that would otherwise sit out its own
        retries (Codex reconnecting without end on a refused connection, Aider retrying a 503 for 90 s): the
        attempt can end there. Never raises. The attempt's class is still interpret()'s reading of the whole
        output, which contains that line; this answer is the fallback when interpret() says "unknown"."""
        ...

    def log_renderer(self) -> Callable[[str], str | None] | None:
        """The pure `render_line` that shows one line of this backend's output readably (None: leave the line
        out), for `runs logs`; None when the output is already text (a command, aider, an HTTP call's log)."""
        ...

    def gateway_apis(self, profile: Profile) -> dict[str, str]:
        """The provider APIs (`chat`, `messages`, `responses`) the gateway can reach this profile's provider
        by, each with its base URL (the profile's --base-url, else the provider's own); empty when none
        (a subscription login the CLI alone can use)."""
        ...

    def gateway_auth(self, secret: str | None) -> dict[str, str]:
        """The headers that authenticate a gateway call with the profile's key (none without a key)."""
        ...


class ProcessAdapter(Adapter, Protocol):
    # Whether `interpret` reads stderr apart from stdout. False: the child's stderr shares its stdout pipe
    # (one pipe and one reader less per attempt), and `ProcessOutput.stdout` holds both, as the run log does.
    stderr_apart: bool

    def build(self, ctx: AttemptContext) -> ProcessSpec: ...

    def interpret(self, ctx: AttemptContext, out: ProcessOutput, now: datetime, tz: tzinfo) -> ParsedOutput: ...


class LogSink(Protocol):
    def __call__(self, data: bytes) -> None: ...


class HttpAdapter(Adapter, Protocol):
    async def call(
        self, ctx: AttemptContext, log: LogSink, timeout: float | None, now: datetime, tz: tzinfo
    ) -> ParsedOutput: ...
