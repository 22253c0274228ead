"""A repair round continues the session it repairs, where the CLI can: the argv each adapter builds."""

from __future__ import annotations

from pathlib import Path

from fleetd.backends.base import AttemptContext
from fleetd.backends.claude_code import ClaudeCodeAdapter
from fleetd.backends.codex import CodexAdapter
from fleetd.records.loop import Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.records.task import Task


def context(tmp_path: Path, backend: str, resume: str | None) -> AttemptContext:
    loop = Loop(name="fix", schedule=Schedule("every", "1h", "UTC"), backend=backend, prompt="fix it")
    profile = Profile("p", backend, "subscription", str(tmp_path / "p"))
    return AttemptContext(1, Task.of(loop), "fix it", profile, None, "m1", str(tmp_path), resume_session=resume)


def test_codex_resumes_with_exec_resume_session_then_prompt(tmp_path: Path) -> None:
    fresh = CodexAdapter().build(context(tmp_path, "codex", None)).argv
    assert fresh == ["codex", "exec", "--json", "--skip-git-repo-check", "-m", "m1", "--", "fix it"]
    resumed = CodexAdapter().build(context(tmp_path, "codex", "0199a-thread")).argv
    assert resumed == [
        "codex",
        "exec",
        "resume",
        "--json",
        "--skip-git-repo-check",
        "-m",
        "m1",
        "--",
        "0199a-thread",
        "fix it",
    ]


def test_claude_code_resumes_with_resume_session(tmp_path: Path) -> None:
    argv = ClaudeCodeAdapter().build(context(tmp_path, "claude_code", "44ce97b6")).argv
    assert argv[argv.index("--resume") + 1] == "44ce97b6"
    assert "--resume" not in ClaudeCodeAdapter().build(context(tmp_path, "claude_code", None)).argv


def test_an_aider_reviewer_only_answers(tmp_path: Path) -> None:
    from dataclasses import replace

    from fleetd.backends.aider import AiderAdapter

    work = context(tmp_path, "aider", None)
    assert "--chat-mode" not in AiderAdapter().build(work).argv
    argv = AiderAdapter().build(replace(work, role="review")).argv
    assert argv[argv.index("--chat-mode") + 1] == "ask"


def test_a_codex_profiles_base_url_is_a_provider_block_unless_its_config_has_its_own(tmp_path: Path) -> None:
    profile = Profile(
        "p", "codex", "metered", str(tmp_path / "p"), base_url="http://127.0.0.1:8000/v1", has_secret=True
    )
    ctx = AttemptContext(1, context(tmp_path, "codex", None).task, "fix it", profile, "sk-x", "m1", str(tmp_path))
    argv = CodexAdapter().build(ctx).argv
    overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-c"]
    assert overrides == ['model_provider="fleetd"', 'model_providers.fleetd.name="fleetd profile"',
                         'model_providers.fleetd.base_url="http://127.0.0.1:8000/v1"',
                         'model_providers.fleetd.wire_api="responses"', "model_providers.fleetd.stream_max_retries=0",
                         "model_providers.fleetd.request_max_retries=0",
                         'model_providers.fleetd.env_key="CODEX_API_KEY"']  # fmt: skip
    # A provider block of the user's own says where to go, with what it needs there (query params, headers): it wins.
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.toml").write_text('model_provider = "azure"\n[model_providers.azure]\nname = "Azure"\n')
    assert "-c" not in CodexAdapter().build(ctx).argv
