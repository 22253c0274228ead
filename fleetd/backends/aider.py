"""Aider: `aider --message PROMPT --yes-always`, usage from `--analytics-log`.

Aider has no setting for its own rate-limit retries (~85 s) and exits 0 after giving up, so the
attempt ends on the first rate-limit line of live output and exit 0 alone is never success.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING

from fleetd.backends.agents import AgentCli
from fleetd.backends.base import AttemptContext, EnvChange, ProcessOutput, ProcessSpec
from fleetd.backends.parsers import aider as parser
from fleetd.records.result import ErrorClass, ParsedOutput

if TYPE_CHECKING:
    from fleetd.records.profile import Profile

ANALYTICS_LOG = "aider-analytics.jsonl"


def key_variable(model: str | None) -> str:
    """litellm reads the provider's usual variable; the model name says which provider."""
    name = (model or "").lower()
    if name.startswith("anthropic/") or name.startswith("claude"):
        return "ANTHROPIC_API_KEY"
    if name.startswith("gemini"):
        return "GEMINI_API_KEY"
    return "OPENAI_API_KEY"


class AiderAdapter(AgentCli):
    name = "aider"
    executable = "aider"
    auth = "key"  # litellm's provider key (any placeholder for a local server): Aider has no login of its own
    end_on_live_failure = True

    def gateway_apis(self, profile: Profile) -> dict[str, str]:
        # An OpenAI-style model on its --base-url (or OpenAI's): the chat API; others litellm alone speaks.
        if key_variable(profile.model) != "OPENAI_API_KEY" or not (profile.has_secret or profile.base_url):
            return {}
        return {"chat": profile.base_url or "https://api.openai.com/v1"}

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        env: dict[str, str] = {}
        if profile.base_url:
            env["OPENAI_API_BASE"] = profile.base_url
        if secret is not None:
            env[key_variable(profile.model)] = secret
        return EnvChange(env)

    def live_failure(self, line: str) -> ErrorClass | None:
        return parser.live_failure(line)

    def build(self, ctx: AttemptContext) -> ProcessSpec:
        assert ctx.profile is not None
        argv = [
            # --message=TEXT: a prompt that starts with "-" stays the message (argparse took "--fix" for an option).
            self.executable, f"--message={ctx.prompt or ''}", "--yes-always", "--no-pretty",
            "--no-check-update", "--no-analytics", "--analytics-log", str(Path(ctx.tmpdir) / ANALYTICS_LOG),
        ]  # fmt: skip
        if ctx.model:
            argv += ["--model", ctx.model]
        if ctx.role == "review":
            # Aider applies any fenced block it is answered with as a file edit (--yes-always): a reviewer
            # only answers. Measured on 0.86.2: the verdict's ```json block became a file in the workdir.
            argv += ["--chat-mode", "ask", "--chat-history-file", str(Path(ctx.tmpdir) / "chat.history.md"),
                     "--input-history-file", str(Path(ctx.tmpdir) / "input.history")]  # fmt: skip
        change = self.profile_env(ctx.profile, ctx.secret)
        if ctx.secret is not None and ctx.model:
            change.set[key_variable(ctx.model)] = ctx.secret
        return ProcessSpec(argv=[*argv, *ctx.task.agent_args], env=change.set, cwd=ctx.task.workdir)

    def interpret(self, ctx: AttemptContext, out: ProcessOutput, now: datetime, tz: tzinfo) -> ParsedOutput:
        analytics = None
        with contextlib.suppress(OSError):
            analytics = (Path(ctx.tmpdir) / ANALYTICS_LOG).read_text(errors="replace")
        return parser.parse_output(out.stdout, out.stderr, out.exit_code, analytics, now, tz)
