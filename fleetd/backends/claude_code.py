"""Claude Code: `claude -p PROMPT --output-format stream-json --verbose` under CLAUDE_CONFIG_DIR.

stream-json shows rate_limit_event and api_retry lines live. With -p an ANTHROPIC_API_KEY in the
environment always wins over the login, so subscription profiles have it removed. The CLI's own
429 retries (~3 minutes) are turned off: fleetd decides what a rate limit means. Nonessential
traffic is off too: an attempt talks to its provider and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetd.backends.agents import AgentCli
from fleetd.backends.base import AttemptContext, EnvChange, ProcessOutput, ProcessSpec, UsageReader
from fleetd.backends.parsers import claude_code as parser
from fleetd.records.result import ParsedOutput

if TYPE_CHECKING:
    from fleetd.records.profile import Profile

ANTHROPIC_API = "https://api.anthropic.com"
CREDENTIAL_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")


class ClaudeCodeAdapter(AgentCli):
    name = "claude_code"
    executable = "claude"
    uses_config_dir = True
    takes_cost_cap = True  # `--max-budget-usd` (build)

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        env = {"CLAUDE_CONFIG_DIR": profile.config_dir}
        if profile.base_url:
            env["ANTHROPIC_BASE_URL"] = profile.base_url
        if secret is not None:
            env["ANTHROPIC_API_KEY"] = secret
            return EnvChange(env, ("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"))
        return EnvChange(env, CREDENTIAL_VARS)

    def gateway_apis(self, profile: Profile) -> dict[str, str]:
        # A subscription login belongs to the CLI; only an API-key profile can be called directly.
        return {"messages": profile.base_url or ANTHROPIC_API} if profile.has_secret else {}

    def gateway_auth(self, secret: str | None) -> dict[str, str]:
        return {"x-api-key": secret} if secret else {}

    def usage_reader(self, profile: Profile, offsets: Mapping[str, Any]) -> UsageReader | None:
        from fleetd.backends import usage_files

        start = {path: usage_files.FileOffset.from_json(value) for path, value in offsets.items()}
        return usage_files.ClaudeTranscripts(Path(profile.config_dir), start)

    def login_argv(self, profile: Profile) -> list[str] | None:
        return [self.executable, "/login"]

    def login_problem(self, profile: Profile, env: Mapping[str, str]) -> str | None:
        if profile.has_secret:
            return None  # an API-key profile: the key is its login
        config = Path(profile.config_dir)
        if (config / ".credentials.json").is_file():
            return None
        # On macOS the token lives in the Keychain, not in the directory; the account record that a login
        # writes into .claude.json is what the directory shows of it.
        if _json_has(config / ".claude.json", "oauthAccount"):
            return None
        return f"never logged in: no .credentials.json in {config}"

    def log_renderer(self) -> Callable[[str], str | None] | None:
        return parser.render_line

    def build(self, ctx: AttemptContext) -> ProcessSpec:
        assert ctx.profile is not None
        argv = [self.executable, "-p", "--output-format", "stream-json", "--verbose"]
        if ctx.model:
            argv += ["--model", ctx.model]
        if ctx.resume_session:  # a repair round continues the session it repairs
            argv += ["--resume", ctx.resume_session]
        if ctx.cost_left is not None:  # the run's budget: Claude Code stops itself when it is spent
            argv += ["--max-budget-usd", f"{ctx.cost_left:.4f}"]
        change = self.profile_env(ctx.profile, ctx.secret)
        # No connections but to the provider: without this Claude Code 2.1.330 also contacted
        # api.anthropic.com 3 times a run (telemetry and the like), even with ANTHROPIC_BASE_URL elsewhere.
        env = {
            **change.set,
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        # The prompt last, after "--": one that starts with "-" (front matter, a list) is not an option, and a
        # variadic agent arg (--add-dir A B) does not swallow it.
        argv += [*ctx.task.agent_args, "--", ctx.prompt or ""]
        return ProcessSpec(argv=argv, env=env, unset_env=change.unset, cwd=ctx.task.workdir)

    def interpret(self, ctx: AttemptContext, out: ProcessOutput, now: datetime, tz: tzinfo) -> ParsedOutput:
        return parser.parse_stream_json(out.stdout, out.stderr, out.exit_code, now, tz)


def _json_has(path: Path, key: str) -> bool:
    try:
        data = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get(key))
