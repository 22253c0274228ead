"""Codex CLI: `codex exec --json --skip-git-repo-check PROMPT` under CODEX_HOME, stdin closed (it
waits for stdin to close). Window state is read afterwards from the thread's rollout file."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetd.backends.agents import AgentCli
from fleetd.backends.base import AttemptContext, EnvChange, ProcessOutput, ProcessSpec, UsageReader
from fleetd.backends.parsers import codex as parser
from fleetd.records.result import ErrorClass, ParsedOutput

if TYPE_CHECKING:
    from fleetd.records.profile import Profile

OPENAI_API = "https://api.openai.com/v1"
PROVIDER_ID = "fleetd"  # the custom provider block a profile's --base-url makes


class CodexAdapter(AgentCli):
    name = "codex"
    executable = "codex"
    uses_config_dir = True
    # Only a custom provider block takes `stream_max_retries = 0`; the built-in `openai` provider
    # cannot be overridden (Codex 0.169 exits 1 on `-c model_providers.openai.…`), and it reconnects
    # up to 5 times honouring retry-after. Its "Reconnecting... 1/5 (… 429 …)" line ends the attempt.
    end_on_live_failure = True

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        env = {"CODEX_HOME": profile.config_dir}
        if secret is not None:
            env["CODEX_API_KEY"] = secret  # overrides the key for `codex exec` only
            return EnvChange(env)
        return EnvChange(env, ("CODEX_API_KEY", "OPENAI_API_KEY"))

    def gateway_apis(self, profile: Profile) -> dict[str, str]:
        # A ChatGPT login belongs to the CLI; only an API-key profile can be called directly.
        return {"responses": profile.base_url or OPENAI_API} if profile.has_secret else {}

    def usage_reader(self, profile: Profile, offsets: Mapping[str, Any]) -> UsageReader | None:
        from fleetd.backends import usage_files

        start = {path: usage_files.FileOffset.from_json(value) for path, value in offsets.items()}
        return usage_files.CodexRollouts(Path(profile.config_dir), start)

    def login_argv(self, profile: Profile) -> list[str] | None:
        return [self.executable, "login"]

    def login_problem(self, profile: Profile, env: Mapping[str, str]) -> str | None:
        if profile.has_secret:
            return None  # CODEX_API_KEY from fleetd's secret store
        home = Path(profile.config_dir)
        if (home / "auth.json").is_file():
            return None
        # `cli_auth_credentials_store = "keyring"` (or "auto") keeps the login outside the directory: no telling.
        if _credentials_store(home / "config.toml") not in ("file", None):
            return None
        return f"never logged in: no auth.json in {home}"

    def log_renderer(self) -> Callable[[str], str | None] | None:
        return parser.render_line

    def live_failure(self, line: str) -> ErrorClass | None:
        return parser.live_failure(line)

    def build(self, ctx: AttemptContext) -> ProcessSpec:
        assert ctx.profile is not None
        # A repair round continues the session it repairs: `codex exec resume [OPTIONS] SESSION PROMPT`.
        resume = ["resume"] if ctx.resume_session else []
        argv = [self.executable, "exec", *resume, "--json", "--skip-git-repo-check"]
        # The user's own provider block wins (its query params, headers, timeouts): theirs already says where to go.
        config = Path(ctx.profile.config_dir) / "config.toml"
        if ctx.profile.base_url and _config_value(config, "model_provider") is None:
            argv += _provider_overrides(ctx.profile.base_url, ctx.secret is not None)
        if ctx.model:
            argv += ["-m", ctx.model]
        change = self.profile_env(ctx.profile, ctx.secret)
        session = [ctx.resume_session] if ctx.resume_session else []
        return ProcessSpec(
            # After "--", a prompt that starts with "-" is not taken for an option ("unexpected argument").
            argv=[*argv, *ctx.task.agent_args, "--", *session, ctx.prompt or ""],
            env=change.set,
            unset_env=change.unset,
            cwd=ctx.task.workdir,
        )

    def interpret(self, ctx: AttemptContext, out: ProcessOutput, now: datetime, tz: tzinfo) -> ParsedOutput:
        parsed = parser.parse_exec_jsonl(out.stdout, out.stderr, out.exit_code, now, tz)
        if ctx.profile is None or not parsed.session_id:
            return parsed
        rollout = find_rollout(Path(ctx.profile.config_dir), parsed.session_id)
        if rollout is None:
            return parsed
        try:
            windows = parser.parse_rollout(rollout.read_text(errors="replace"), now, tz)
        except OSError:
            return parsed
        reset_at = parsed.reset_at
        if parsed.error_class == "rate_limited":
            # The rollout's snapshot is Codex's own window state to the second; the message's
            # "try again at 3:28 PM" is the same time rounded to the minute.
            reset_at = parser.blocked_until(windows) or reset_at
        return replace(parsed, windows=windows or parsed.windows, reset_at=reset_at)


def _provider_overrides(base_url: str, keyed: bool) -> list[str]:
    """`-c` options that send the work to `base_url` through a custom provider block: `OPENAI_BASE_URL` does not move
    the built-in provider, which would take the profile's key and prompt to api.openai.com. No retries of its own in
    the block (fleetd retries); the key, if any, is the `CODEX_API_KEY` fleetd sets."""
    block = f"model_providers.{PROVIDER_ID}"
    values = {
        "model_provider": PROVIDER_ID,
        f"{block}.name": "fleetd profile",
        f"{block}.base_url": base_url,
        f"{block}.wire_api": "responses",
        f"{block}.stream_max_retries": 0,
        f"{block}.request_max_retries": 0,
    }
    if keyed:
        values[f"{block}.env_key"] = "CODEX_API_KEY"
    # A TOML value: JSON's quoting of a string is a valid TOML basic string.
    return [arg for key, value in values.items() for arg in ("-c", f"{key}={json.dumps(value)}")]


def find_rollout(codex_home: Path, thread_id: str) -> Path | None:
    """`sessions/YYYY/MM/DD/rollout-<time>-<thread id>.jsonl`; newest first, archived ones too."""
    for root in (codex_home / "sessions", codex_home / "archived_sessions"):
        if root.is_dir():
            matches = sorted(root.rglob(f"rollout-*{thread_id}.jsonl"), reverse=True)
            if matches:
                return matches[0]
    return None


def _credentials_store(config: Path) -> str | None:
    return _config_value(config, "cli_auth_credentials_store")


def _config_value(config: Path, key: str) -> str | None:
    """A top-level string of a Codex `config.toml`; None when it has none (or cannot be read)."""
    import tomllib

    try:
        data = tomllib.loads(config.read_text(errors="replace"))
    except (OSError, ValueError):
        return None
    value = data.get(key)
    return value if isinstance(value, str) else None
