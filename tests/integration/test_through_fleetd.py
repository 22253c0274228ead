"""The pinned real agent CLIs driven through a real fleetd daemon against the loopback fake
provider: success with the server's usage, a 429 seen by fleetd within seconds, a lone 529 retried
into a success, and a provider that keeps answering 529 on one profile while another is healthy. Skips (with the
reason) when a CLI is not installed; `make test` installs them where node is available."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.harness import Daemon, wait_until
from tests.integration import fake_provider as fp
from tests.integration.agents import AGENT_BIN, FAKE_API_KEY, prepare_profile, require_agent


@dataclass(frozen=True)
class Case:
    cli: str
    backend: str
    model: str
    tokens: dict[str, int]  # what fleetd must record for the server's fixed usage
    api: str


CASES = [
    Case("claude", "claude_code", "claude-opus-5-5",
         {"input": fp.ANTHROPIC_INPUT_TOKENS, "output": fp.ANTHROPIC_OUTPUT_TOKENS,
          "cache_read": fp.ANTHROPIC_CACHE_READ_INPUT_TOKENS, "cache_write": fp.ANTHROPIC_CACHE_CREATION_INPUT_TOKENS},
         fp.API_ANTHROPIC),
    Case("codex", "codex", "gpt-5.5",
         {"input": fp.RESPONSES_INPUT_TOKENS - fp.RESPONSES_CACHED_INPUT_TOKENS, "output": fp.RESPONSES_OUTPUT_TOKENS,
          "cache_read": fp.RESPONSES_CACHED_INPUT_TOKENS, "cache_write": 0},
         fp.API_RESPONSES),
    Case("gemini", "gemini", "gemini-2.5-flash",
         {"input": fp.GEMINI_PROMPT_TOKENS, "output": fp.GEMINI_CANDIDATES_TOKENS, "cache_read": 0, "cache_write": 0},
         fp.API_GEMINI),
    Case("aider", "aider", "openai/fake",
         {"input": fp.CHAT_PROMPT_TOKENS, "output": fp.CHAT_COMPLETION_TOKENS, "cache_read": 0, "cache_write": 0},
         fp.API_CHAT),
]  # fmt: skip


@pytest.fixture(scope="module")
def provider() -> Iterator[fp.FakeProvider]:
    with fp.running_fake_provider("ok") as server:
        yield server


@pytest.fixture(scope="module")
def overloaded() -> Iterator[fp.FakeProvider]:
    """A second provider that answers every generation request with 529 Overloaded."""
    with fp.running_fake_provider("529") as server:
        yield server


@pytest.fixture(scope="module")
def daemon(provider: fp.FakeProvider) -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="flr-", dir="/tmp"))
    (root / "user-home").mkdir()
    d = Daemon(root / "home", "--kill-grace", "0.5s", "--stop-grace", "1s", "--backoff-base", "0.1s")
    d.env.update(
        PATH=f"{AGENT_BIN}:{os.environ['PATH']}",
        HOME=str(root / "user-home"),  # the CLIs write dotfiles; keep them out of the real home
        FLEETD_SECRET_STORE="file",
        # A trap: anything that tries to leave the machine goes to the fake server, which records it.
        HTTP_PROXY=provider.base_url, HTTPS_PROXY=provider.base_url,
        http_proxy=provider.base_url, https_proxy=provider.base_url,
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
    )  # fmt: skip
    d.start()
    d.workdir = root / "work"  # type: ignore[attr-defined]
    d.workdir.mkdir()  # type: ignore[attr-defined]
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def add_profile(d: Daemon, case: Case, name: str, base_url: str) -> Path:
    base = f"{base_url}/v1" if case.cli in ("aider", "codex") else base_url
    d.cli("profile", "add", name, "--backend", case.backend, "--base-url", base, "--api-key-stdin",
          input=FAKE_API_KEY)  # fmt: skip
    config_dir = Path(d.json("profile", "show", name)["config_dir"])
    prepare_profile(case.cli, base_url, config_dir)
    return config_dir


def setup_loop(
    d: Daemon, case: Case, base_url: str, *, pool: str | None = None, name: str | None = None, prompt: str = "say hi"
) -> str:
    config_dir = (
        add_profile(d, case, case.cli, base_url)
        if pool is None
        else Path(d.json("profile", "show", pool.split(",")[-1])["config_dir"])
    )
    extra: list[str] = []
    # Claude Code needs nothing here: fleetd turns its nonessential traffic off itself.
    if case.cli == "codex":
        extra = ["--env", f"FAKE_PROVIDER_API_KEY={FAKE_API_KEY}"]
    elif case.cli == "gemini":
        extra = ["--env", "GEMINI_CLI_TRUST_WORKSPACE=true", "--env", "GEMINI_TELEMETRY_ENABLED=false"]
    elif case.cli == "aider":
        extra = ["--env", "LITELLM_LOCAL_MODEL_COST_MAP=True", "--agent-arg=--no-stream", "--agent-arg=--no-git",
                 f"--agent-arg=--model-metadata-file={config_dir / 'model-metadata.json'}"]  # fmt: skip
    loop = name or f"real_{case.cli}"
    d.cli("loop", "add", loop, "--every", "1h", "--backend", case.backend, "--profile", pool or case.cli,
          f"--prompt={prompt}", "--model", case.model, "--timeout", "2m", "--dir", str(d.workdir), *extra)  # type: ignore[attr-defined]  # fmt: skip
    return loop


def run(d: Daemon, loop: str) -> dict:
    return d.wait_run(d.json("loop", "run", loop)["id"], timeout=150)


@pytest.mark.parametrize("case", CASES, ids=[c.cli for c in CASES])
def test_real_cli_through_fleetd(daemon: Daemon, provider: fp.FakeProvider, case: Case) -> None:
    require_agent(case.cli)
    provider.mode = "ok"
    loop = setup_loop(daemon, case, provider.base_url)
    ok = run(daemon, loop)
    log = daemon.cli("runs", "logs", str(ok["id"])).stdout
    assert ok["status"] == "succeeded", log[-3000:]
    (attempt,) = ok["attempt_list"]
    assert attempt["tokens"] == case.tokens, log[-3000:]
    assert FAKE_API_KEY not in log  # scrubbed, whatever the CLI printed

    provider.mode = "429"
    before = len(provider.requests_for(case.api))
    run_id = daemon.json("loop", "run", loop)["id"]
    attempt = wait_until(
        lambda: next((a for a in daemon.json("runs", "show", str(run_id))["attempt_list"] if a["finished_at"]), None),
        timeout=150,
        what=f"the first attempt of run {run_id} to end",
    )
    assert attempt["error_class"] == "rate_limited", attempt
    if case.cli == "codex":  # its final error line ends the attempt; its own exit 1 follows within the grace
        assert attempt["exit_code"] == 1, attempt
    first_429 = provider.requests_for(case.api)[before]
    wall_of = time.time() - time.monotonic()
    seen = datetime.fromisoformat(attempt["finished_at"]).timestamp() - (first_429.at + wall_of)
    print(f"\n{case.cli}: first 429 → fleetd saw the attempt end: {seen:.2f} s")
    assert seen < 15, seen  # seconds, not the minutes the CLI's own retries would take
    # Its only profile is exhausted: the run waits for the reset instead of retrying in a loop.
    waiting = wait_until(lambda: (r := daemon.json("runs", "show", str(run_id)))["status"] == "waiting" and r,
                         what="the run to wait")  # fmt: skip
    assert waiting["wait_until"] is not None
    # Stopped here: at its reset it would call the provider again, in the middle of a later test of this module
    # (an Aider retry once took the 529 that the lone-529 test had set up for Codex).
    daemon.cli("runs", "stop", str(run_id))
    provider.mode = "ok"
    assert provider.proxy_attempts == []  # nothing tried to leave the machine


@pytest.mark.parametrize("case", CASES, ids=[c.cli for c in CASES])
def test_a_prompt_that_starts_with_a_dash_reaches_the_model(
    daemon: Daemon, provider: fp.FakeProvider, case: Case
) -> None:
    """A prompt file may open with front matter or a list; the CLIs once took such a prompt for their own
    options (Claude Code: "error: unknown option", Codex: "unexpected argument", Aider: its usage)."""
    require_agent(case.cli)
    provider.mode = "ok"
    prompt = "--fix-the-lint-errors"  # (Aider's argparse takes a value with a space in it as a value)
    add_profile(daemon, case, f"{case.cli}-dash", provider.base_url)
    loop = setup_loop(daemon, case, provider.base_url, pool=f"{case.cli}-dash", name=f"dash_{case.cli}", prompt=prompt)
    seen = len(provider.requests)
    result = run(daemon, loop)
    log = daemon.cli("runs", "logs", str(result["id"])).stdout
    assert result["status"] == "succeeded", log[-3000:]
    asked = [r for r in provider.requests[seen:] if r.api == case.api]
    assert asked and any(prompt in json.dumps(r.body) for r in asked), log[-3000:]


@pytest.mark.parametrize("case", CASES, ids=[c.cli for c in CASES])
def test_real_cli_lone_529_is_retried_into_a_success(daemon: Daemon, provider: fp.FakeProvider, case: Case) -> None:
    """With the CLIs' own retries turned down, one 529 used to fail the run; fleetd retries it."""
    require_agent(case.cli)
    provider.mode = "ok"
    loop = f"lone529_{case.cli}"
    add_profile(daemon, case, f"{case.cli}-once", provider.base_url)
    setup_loop(daemon, case, provider.base_url, pool=f"{case.cli}-once", name=loop)
    seen = len(provider.requests)
    provider.fail_first(1, "529")
    result = run(daemon, loop)
    log = daemon.cli("runs", "logs", str(result["id"])).stdout
    assert result["status"] == "succeeded", log[-3000:]
    classes = [a["error_class"] for a in result["attempt_list"]]
    requests = [(r.method, r.path, r.api) for r in provider.requests[seen:]]  # what the provider was asked, in order
    log = f"{requests}\n{log[-3000:]}"
    # Aider's OpenAI client and Gemini CLI get past one overloaded answer inside their own attempt;
    # Claude Code and Codex end at once (their retries are turned down) and fleetd retries.
    assert classes in (["transient", None], [None]), (classes, log)
    if case.cli in ("claude", "codex"):
        assert classes == ["transient", None], (classes, log)
        assert any(e["kind"] == "retry" for e in result["route"])
    assert provider.failures_left == 0


@pytest.mark.parametrize("case", CASES, ids=[c.cli for c in CASES])
def test_real_cli_529_on_one_profile_fails_over_to_the_healthy_one(
    daemon: Daemon, provider: fp.FakeProvider, overloaded: fp.FakeProvider, case: Case
) -> None:
    require_agent(case.cli)
    provider.mode = "ok"
    add_profile(daemon, case, f"{case.cli}-down", overloaded.base_url)
    add_profile(daemon, case, f"{case.cli}-up", provider.base_url)
    loop = setup_loop(daemon, case, provider.base_url, pool=f"{case.cli}-down,{case.cli}-up", name=f"over_{case.cli}")
    result = run(daemon, loop)
    log = daemon.cli("runs", "logs", str(result["id"])).stdout
    assert result["status"] == "succeeded" and result["profile"] == f"{case.cli}-up", log[-3000:]
    tried = [(a["profile"], a["error_class"]) for a in result["attempt_list"]]
    assert tried == [(f"{case.cli}-down", "transient")] * 3 + [(f"{case.cli}-up", None)], tried
    circuit = daemon.json("profile", "show", f"{case.cli}-down")["circuit"]
    assert circuit["state"] == "open"  # the next run skips it without spending a timeout
    if case.cli != "aider":  # (Aider takes seconds to start; the skip itself is the same for every CLI)
        again = run(daemon, loop)
        assert [a["profile"] for a in again["attempt_list"]] == [f"{case.cli}-up"]
    assert overloaded.proxy_attempts == [] and provider.proxy_attempts == []


def test_a_codex_profiles_base_url_is_where_its_runs_go(daemon: Daemon, provider: fp.FakeProvider) -> None:
    """A codex profile's --base-url with no provider block of the user's own: the work went to api.openai.com with
    the profile's key (`OPENAI_BASE_URL` does not move Codex's built-in provider), while `profile show` named the
    local URL."""
    require_agent("codex")
    provider.mode = "ok"
    daemon.cli("profile", "add", "codex-url", "--backend", "codex", "--base-url", f"{provider.base_url}/v1",
               "--api-key-stdin", input=FAKE_API_KEY)  # fmt: skip
    config_dir = Path(daemon.json("profile", "show", "codex-url")["config_dir"])
    prepare_profile("codex", None, config_dir)  # its extras off, and no provider of its own
    daemon.cli("loop", "add", "codex_url", "--every", "1h", "--backend", "codex", "--profile", "codex-url",
               "--prompt", "say hi", "--model", "gpt-5.5", "--timeout", "2m", "--dir", str(daemon.workdir))  # type: ignore[attr-defined]  # fmt: skip
    seen = len(provider.requests_for(fp.API_RESPONSES))
    result = run(daemon, "codex_url")
    log = daemon.cli("runs", "logs", str(result["id"])).stdout
    assert result["status"] == "succeeded", log[-3000:]
    asked = provider.requests_for(fp.API_RESPONSES)[seen:]
    assert asked and all(r.headers.get("authorization") == f"Bearer {FAKE_API_KEY}" for r in asked), asked
    assert provider.proxy_attempts == []  # nothing went to api.openai.com (the trap records it)
