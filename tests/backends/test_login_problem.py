"""Each adapter says when its CLI would find no login for a profile, from the files the CLI keeps
(agent-clis.md §1.5, §2.5; Gemini's .gemini/oauth_creds.json). Table-driven over a temp config dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.backends.registry import ADAPTERS, get_adapter
from fleetd.records.profile import Profile

FILES = dict[str, str]


@pytest.mark.parametrize(
    ("backend", "files", "has_key", "logged_in"),
    [
        ("claude_code", {}, False, False),
        ("claude_code", {".credentials.json": '{"claudeAiOauth": {}}'}, False, True),
        # macOS: the token is in the Keychain; .claude.json records the account.
        ("claude_code", {".claude.json": '{"oauthAccount": {"accountUuid": "u"}}'}, False, True),
        ("claude_code", {".claude.json": '{"hasCompletedOnboarding": true}'}, False, False),
        ("claude_code", {".claude.json": "not json"}, False, False),
        ("claude_code", {}, True, True),  # a key profile
        ("codex", {}, False, False),
        ("codex", {"auth.json": '{"tokens": {}}'}, False, True),
        ("codex", {"config.toml": 'cli_auth_credentials_store = "keyring"\n'}, False, True),  # no telling
        ("codex", {"config.toml": 'cli_auth_credentials_store = "file"\n'}, False, False),
        ("codex", {"config.toml": "this is = = not toml"}, False, False),
        ("codex", {}, True, True),
        ("gemini", {}, False, False),
        ("gemini", {".gemini/oauth_creds.json": "{}"}, False, True),
        ("gemini", {".gemini/settings.json": '{"security": {"auth": {"selectedType": "vertex-ai"}}}'}, False, True),
        (
            "gemini",
            {".gemini/settings.json": '{"security": {"auth": {"selectedType": "oauth-personal"}}}'},
            False,
            False,
        ),
        ("gemini", {".gemini/settings.json": '{"general": {"maxAttempts": 1}}'}, False, False),
        ("gemini", {}, True, True),
        # Key-only backends: a missing key is the doctor's secret-store check, never a "login".
        ("aider", {}, False, True),
        ("openai_compat", {}, False, True),
    ],
)
def test_login_problem(tmp_path: Path, backend: str, files: FILES, has_key: bool, logged_in: bool) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    profile = Profile("p", backend, "subscription", str(tmp_path), has_secret=has_key)
    problem = get_adapter(backend).login_problem(profile, {})
    if logged_in:
        assert problem is None
    else:
        assert problem is not None and problem.startswith("never logged in") and str(tmp_path) in problem


def test_login_problem_of_a_missing_config_dir_does_not_raise(tmp_path: Path) -> None:
    for name, adapter in ADAPTERS.items():
        profile = Profile("p", name, "subscription", str(tmp_path / "gone"))
        adapter.login_problem(profile, {})  # no exception, whatever the answer


def test_every_agent_cli_names_its_executable() -> None:
    executables = {name: adapter.executable for name, adapter in ADAPTERS.items()}
    assert executables == {
        "command": None,
        "claude_code": "claude",
        "codex": "codex",
        "gemini": "gemini",
        "aider": "aider",
        "openai_compat": None,
    }
