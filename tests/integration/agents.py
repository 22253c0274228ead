"""Recipes for running the real agent CLIs headless against a loopback server (tests/integration/fake_provider.py).

For each CLI (``claude``, ``codex``, ``gemini``, ``aider``):

* ``find_agent(name)``: the executable installed by ``scripts/install-agents.sh`` under ``.cache/agents/bin``;
* ``prepare_profile(name, base_url, profile_dir)``: writes the config files the CLI needs inside its profile
  directory (points it at ``base_url``, turns its own retries down and all outside traffic off);
* ``agent_env(name, base_url, profile_dir, tmpdir)``: the complete, clean environment for the child (private
  ``TMPDIR`` and ``HOME`` under ``tmpdir``, fake API keys, profile variables);
* ``agent_argv(name, prompt, model, ...)``: the headless command line fleetd uses.

The settings follow shared/agent-clis.md section 7 (checked against Claude Code 2.1.330, Codex 0.169.0,
Gemini CLI 0.61.0 and Aider 0.86.2). Run every child with ``stdin=subprocess.DEVNULL`` (Codex waits for stdin to
close) and a timeout. Stdlib only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT_BIN = REPO / ".cache" / "agents" / "bin"
AGENTS = ("claude", "codex", "gemini", "aider")

# Pinned by scripts/install-agents.sh.
VERSIONS = {"claude": "2.1.330", "codex": "0.169.0", "gemini": "0.61.0", "aider": "0.86.2"}

# Default models for the fake provider: any name works for the server; these give the captures' output.
# For Codex a model its catalog knows: with an unknown one ("fake-model") it adds an item.completed of type "error"
# ("Model metadata for `fake-model` not found. Defaulting to fallback metadata; ...") before turn.started.
DEFAULT_MODELS = {"claude": "claude-opus-5-5", "codex": "gpt-5.5", "gemini": "gemini-2.5-flash", "aider": "fake"}

FAKE_API_KEY = "sk-fake-0123456789"
CODEX_PROVIDER_ID = "fakeprovider"
CODEX_KEY_ENV = "FAKE_PROVIDER_API_KEY"
AIDER_METADATA_FILE = "model-metadata.json"
AIDER_ANALYTICS_FILE = "analytics.jsonl"

# Variables passed through from the parent environment; everything else is dropped so that no real credential,
# proxy or config of the machine leaks into a child.
_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "SYSTEMROOT")


def find_agent(name: str) -> Path | None:
    """The installed executable for ``name`` (a symlink in AGENT_BIN), or None when it is not installed."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}")
    path = AGENT_BIN / name
    return path if path.exists() and os.access(path, os.X_OK) else None


def require_agent(name: str) -> Path:
    """The installed CLI. Missing: a skip on a machine without node, but a failure in CI (CI=true) where
    `make test` installs them, so the real-program tests can never silently stop running there."""
    import pytest

    path = find_agent(name)
    if path is not None:
        return path
    if os.environ.get("CI") == "true" and (name == "aider" or shutil.which("node")):
        pytest.fail(f"{missing_reason(name)} (CI must run the real-program tests)")
    pytest.skip(missing_reason(name))


def missing_reason(name: str) -> str:
    """Why ``find_agent(name)`` is None, for pytest.skip."""
    if name != "aider" and shutil.which("node") is None:
        return f"{name} needs node, which is not installed"
    return f"{name} not installed: run scripts/install-agents.sh"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _codex_config(base_url: str | None, model: str, key_env: str = CODEX_KEY_ENV) -> str:
    """`base_url` None: no provider block (the profile's --base-url, which fleetd passes, says where)."""
    provider = [
        f"[model_providers.{CODEX_PROVIDER_ID}]",
        'name = "Fake provider"',
        f"base_url = {_toml_str(base_url.rstrip('/') + '/v1')}",
        f"env_key = {_toml_str(key_env)}",
        'wire_api = "responses"',
        "stream_max_retries = 0",
        "request_max_retries = 0",
        "supports_websockets = false",
        "",
    ] if base_url is not None else []  # fmt: skip
    lines = [
        "# Written by tests/integration/agents.py: a local provider, no retries, no outside traffic.",
        f"model = {_toml_str(model)}",
        *([f"model_provider = {_toml_str(CODEX_PROVIDER_ID)}"] if base_url is not None else []),
        "check_for_update_on_startup = false",
        'approval_policy = "never"',
        'sandbox_mode = "read-only"',
        "",
        *provider,
        "[analytics]",
        "enabled = false",
        "",
        "[feedback]",
        "enabled = false",
        "",
        "[features]",
        "plugins = false",
        "remote_plugin = false",
        "apps = false",
        "",
    ]
    return "\n".join(lines)


def _gemini_settings() -> dict[str, object]:
    return {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        # Current key names (0.61 rewrites the older disableAutoUpdate/disableUpdateNag into these).
        "general": {"maxAttempts": 1, "enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False, "logPrompts": False},
        "ide": {"enabled": False},
    }


def _aider_metadata(model: str) -> dict[str, object]:
    # Known context window and zero prices: Aider does not fetch litellm's price list from GitHub for it.
    return {
        f"openai/{model}": {
            "max_tokens": 4096,
            "max_input_tokens": 128000,
            "max_output_tokens": 4096,
            "input_cost_per_token": 0,
            "output_cost_per_token": 0,
            "litellm_provider": "openai",
            "mode": "chat",
        }
    }


def prepare_profile(
    name: str, base_url: str | None, profile_dir: Path, model: str | None = None, *, key_env: str = CODEX_KEY_ENV
) -> None:
    """Write the config files ``name`` needs inside ``profile_dir`` (created if missing). ``key_env``: the variable
    Codex reads its key from (its provider block's ``env_key``); ``base_url`` None: Codex gets no provider block."""
    model = model or DEFAULT_MODELS[name]
    profile_dir = Path(profile_dir)
    profile_dir.mkdir(parents=True, exist_ok=True)
    if name == "claude":
        # CLAUDE_CONFIG_DIR: Claude Code creates its own files; the environment does the rest.
        return
    if name == "codex":
        (profile_dir / "config.toml").write_text(_codex_config(base_url, model, key_env))
    elif name == "gemini":
        settings_dir = profile_dir / ".gemini"
        settings_dir.mkdir(exist_ok=True)
        (settings_dir / "settings.json").write_text(json.dumps(_gemini_settings(), indent=2) + "\n")
    elif name == "aider":
        (profile_dir / AIDER_METADATA_FILE).write_text(json.dumps(_aider_metadata(model), indent=2) + "\n")
    else:
        raise ValueError(f"unknown agent {name!r}")


def agent_env(
    name: str,
    base_url: str,
    profile_dir: Path,
    tmpdir: Path,
    *,
    api_key: str = FAKE_API_KEY,
    key_env: str = CODEX_KEY_ENV,
) -> dict[str, str]:
    """The complete environment for running ``name`` against ``base_url`` (call prepare_profile first).

    ``tmpdir`` becomes the child's TMPDIR; its HOME is ``tmpdir/home``. Both are created. ``api_key`` is the key the
    CLI sends (a fleetd gateway key when ``base_url`` is the gateway); ``key_env`` as for prepare_profile.
    """
    tmpdir = Path(tmpdir)
    home = tmpdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {key: os.environ[key] for key in _PASSTHROUGH if key in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(
        {
            "HOME": str(home),
            "TMPDIR": str(tmpdir),
            "TMP": str(tmpdir),
            "TEMP": str(tmpdir),
            # Anything that honours the proxy variables and still wants an outside host ends up at the fake
            # server, which refuses it and records the attempt (FakeProvider.proxy_attempts).
            "HTTP_PROXY": base_url,
            "HTTPS_PROXY": base_url,
            "http_proxy": base_url,
            "https_proxy": base_url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    if name == "claude":
        env.update(
            {
                "CLAUDE_CONFIG_DIR": str(profile_dir),
                "ANTHROPIC_BASE_URL": base_url,
                "ANTHROPIC_API_KEY": api_key,
                "CLAUDE_CODE_MAX_RETRIES": "0",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_AUTOUPDATER": "1",
                "DISABLE_TELEMETRY": "1",
                "DISABLE_ERROR_REPORTING": "1",
            }
        )
    elif name == "codex":
        env.update({"CODEX_HOME": str(profile_dir), key_env: api_key})
    elif name == "gemini":
        env.update(
            {
                "GEMINI_CLI_HOME": str(profile_dir),
                "GOOGLE_GEMINI_BASE_URL": base_url,
                "GEMINI_API_KEY": api_key,
                "GEMINI_CLI_TRUST_WORKSPACE": "true",
                "GEMINI_CLI_NO_RELAUNCH": "true",
                "GEMINI_TELEMETRY_ENABLED": "false",
            }
        )
    elif name == "aider":
        env.update(
            {
                "OPENAI_API_BASE": base_url.rstrip("/") + "/v1",
                "OPENAI_API_KEY": api_key,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "AIDER_CHECK_UPDATE": "false",
                "AIDER_ANALYTICS": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
    else:
        raise ValueError(f"unknown agent {name!r}")
    return env


def agent_argv(
    name: str,
    prompt: str,
    model: str | None = None,
    *,
    base_url: str | None = None,
    profile_dir: Path | None = None,
    executable: Path | str | None = None,
    api_key: str = FAKE_API_KEY,
) -> list[str]:
    """The headless command line for one prompt.

    ``executable`` defaults to ``find_agent(name)`` (or the bare name). Aider takes the server and its files on the
    command line, so it also needs ``base_url`` and ``profile_dir`` (the same as for prepare_profile).
    """
    model = model or DEFAULT_MODELS[name]
    exe = str(executable or find_agent(name) or name)
    if name == "claude":
        return [exe, "-p", "--output-format", "stream-json", "--verbose", "--model", model, "--", prompt]
    if name == "codex":
        # Stdin must be closed (/dev/null): codex exec otherwise waits for more input.
        return [exe, "exec", "--json", "--skip-git-repo-check", "--model", model, "--", prompt]
    if name == "gemini":
        # An explicit -m skips Gemini CLI's model router (extra classifier calls, each with their own retries).
        return [exe, f"--prompt={prompt}", "-o", "json", "-m", model]
    if name == "aider":
        if base_url is None or profile_dir is None:
            raise ValueError("aider needs base_url and profile_dir")
        profile_dir = Path(profile_dir)
        return [
            exe,
            f"--message={prompt}",
            "--model",
            f"openai/{model}",
            "--openai-api-base",
            base_url.rstrip("/") + "/v1",
            "--openai-api-key",
            api_key,
            "--model-metadata-file",
            str(profile_dir / AIDER_METADATA_FILE),
            "--analytics-log",
            str(profile_dir / AIDER_ANALYTICS_FILE),
            "--yes-always",
            "--no-git",
            # Without --no-stream Aider reports token counts it estimated itself, not the server's usage.
            "--no-stream",
            "--no-check-update",
            "--analytics-disable",
            "--no-show-release-notes",
            "--no-pretty",
        ]
    raise ValueError(f"unknown agent {name!r}")
