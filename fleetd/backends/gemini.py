"""Gemini CLI: `gemini -p PROMPT -o json -m MODEL` under GEMINI_CLI_HOME.

Its own retries (~5 minutes) stop only with `general.maxAttempts=1` in settings.json AND an explicit
model, so fleetd sets both. A quota error exits 173 (429 mod 256) with the JSON error on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING

from fleetd.backends.agents import AgentCli
from fleetd.backends.base import AttemptContext, EnvChange, ProcessOutput, ProcessSpec
from fleetd.backends.parsers import gemini as parser
from fleetd.records.result import ParsedOutput

if TYPE_CHECKING:
    from fleetd.records.profile import Profile

DEFAULT_MODEL = "gemini-2.5-pro"


class GeminiAdapter(AgentCli):
    name = "gemini"
    executable = "gemini"
    uses_config_dir = True

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        env = {"GEMINI_CLI_HOME": profile.config_dir}
        if profile.base_url:
            env["GOOGLE_GEMINI_BASE_URL"] = profile.base_url
        if secret is not None:
            env["GEMINI_API_KEY"] = secret
            return EnvChange(env, ("GOOGLE_API_KEY",))
        return EnvChange(env, ("GEMINI_API_KEY", "GOOGLE_API_KEY"))

    def login_argv(self, profile: Profile) -> list[str] | None:
        return [self.executable]

    def login_problem(self, profile: Profile, env: Mapping[str, str]) -> str | None:
        if profile.has_secret:
            return None  # GEMINI_API_KEY from fleetd's secret store
        gemini_dir = Path(profile.config_dir) / ".gemini"
        if (gemini_dir / "oauth_creds.json").is_file():
            return None
        # Vertex AI, Cloud Shell or a key from elsewhere: settings.json names another auth type; no telling.
        selected = _selected_auth(gemini_dir / "settings.json")
        if selected not in (None, "oauth-personal"):
            return None
        return f"never logged in: no .gemini/oauth_creds.json in {profile.config_dir}"

    def log_renderer(self) -> Callable[[str], str | None] | None:
        return parser.render_line

    def build(self, ctx: AttemptContext) -> ProcessSpec:
        assert ctx.profile is not None
        limit_own_retries(Path(ctx.profile.config_dir))
        change = self.profile_env(ctx.profile, ctx.secret)
        # --prompt=TEXT: a prompt that starts with "-" stays the prompt (as "-p TEXT" it was an unknown option).
        argv = [self.executable, f"--prompt={ctx.prompt or ''}", "-o", "json", "-m", ctx.model or DEFAULT_MODEL]
        env = {**change.set, "GEMINI_CLI_NO_RELAUNCH": "true"}
        return ProcessSpec(argv=[*argv, *ctx.task.agent_args], env=env, unset_env=change.unset, cwd=ctx.task.workdir)

    def interpret(self, ctx: AttemptContext, out: ProcessOutput, now: datetime, tz: tzinfo) -> ParsedOutput:
        return parser.parse_json(out.stdout, out.stderr, out.exit_code, now, tz)


def limit_own_retries(gemini_home: Path) -> None:
    """Merge general.maxAttempts=1 into the profile's settings.json, keeping everything else."""
    path = gemini_home / ".gemini" / "settings.json"
    settings: dict[str, object] = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            settings = loaded
    general = settings.get("general")
    general = dict(general) if isinstance(general, dict) else {}
    if general.get("maxAttempts") == 1:
        return
    general["maxAttempts"] = 1
    settings["general"] = general
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".fleetd-tmp")
    tmp.write_text(json.dumps(settings, indent=2))
    os.replace(tmp, path)


def _selected_auth(path: Path) -> str | None:
    """settings.json's `security.auth.selectedType` (older CLIs: top-level `selectedAuthType`)."""
    try:
        settings = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError):
        return None
    if not isinstance(settings, dict):
        return None
    auth = (settings.get("security") or {}).get("auth") if isinstance(settings.get("security"), dict) else None
    selected = auth.get("selectedType") if isinstance(auth, dict) else settings.get("selectedAuthType")
    return selected if isinstance(selected, str) else None
