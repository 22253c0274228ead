"""The real agent CLIs pointed at fleetd's gateway instead of a provider (issue 11, "Real clients").

One daemon runs the gateway on loopback (`fleetd daemon run --gateway 127.0.0.1:PORT`); three fake providers
(tests/integration/fake_provider.py) stand for the providers behind it. Each client is configured the way a user
would point it at the gateway, with one gateway key (`fleetd gateway key add`):

* Claude Code: ``ANTHROPIC_BASE_URL=http://127.0.0.1:PORT`` and ``ANTHROPIC_API_KEY=fk-…`` (sent as
  ``x-api-key`` to ``POST /v1/messages?beta=true``), ``--model ROUTE``;
* Codex: a custom ``[model_providers.X]`` with ``base_url = "http://127.0.0.1:PORT/v1"``,
  ``env_key = "FLEETD_GATEWAY_KEY"``, ``wire_api = "responses"``, and ``model = ROUTE``;
* Aider: ``--openai-api-base http://127.0.0.1:PORT/v1 --openai-api-key fk-… --model openai/ROUTE`` (plus a
  model-metadata file for ``openai/ROUTE`` so it does not fetch litellm's price list).

For each: the first step of the route fails (429 on every call, or 529 once) and the client still succeeds (on the
next step, or the same one retried after a 529), with the tokens the provider sent in the gateway's per-call log; a
400 on every step reaches the client unchanged and no other step is tried. Aider takes seconds to start, so its 429
and 529 share one call (a three-step route), and that call streams (as fleetd runs Aider), so the tokens recorded
are the provider's usage, not Aider's estimate.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, wait_until
from tests.integration import agents
from tests.integration import fake_provider as fp

PROMPT = "say hi"
RUN_TIMEOUT = 120.0  # seconds, per child
GATEWAY_KEY_ENV = "FLEETD_GATEWAY_KEY"  # Codex's env_key for the gateway provider


@dataclass(frozen=True)
class Client:
    cli: str
    api: str  # the route's --api
    fake_api: str  # the fake provider's counter for that API
    backend: str  # a profile backend whose steps speak `api`
    upstream_model: str  # the model each step asks the provider for (the route name is rewritten to it)
    tokens: dict[str, int]  # what the gateway must record (`gateway calls --json`) for the fake's fixed usage


CLIENTS = {
    "claude": Client("claude", "messages", fp.API_ANTHROPIC, "claude_code", "claude-opus-5-5",
                     {"input": fp.ANTHROPIC_INPUT_TOKENS, "output": fp.ANTHROPIC_OUTPUT_TOKENS,
                      "cache_read": fp.ANTHROPIC_CACHE_READ_INPUT_TOKENS,
                      "cache_write": fp.ANTHROPIC_CACHE_CREATION_INPUT_TOKENS}),
    "codex": Client("codex", "responses", fp.API_RESPONSES, "codex", "gpt-5.5",
                    {"input": fp.RESPONSES_INPUT_TOKENS - fp.RESPONSES_CACHED_INPUT_TOKENS,
                     "output": fp.RESPONSES_OUTPUT_TOKENS, "cache_read": fp.RESPONSES_CACHED_INPUT_TOKENS,
                     "cache_write": 0}),
    "aider": Client("aider", "chat", fp.API_CHAT, "openai_compat", "fake-upstream",
                    {"input": fp.CHAT_PROMPT_TOKENS, "output": fp.CHAT_COMPLETION_TOKENS, "cache_read": 0,
                     "cache_write": 0}),
}  # fmt: skip

# (client, how the steps before the last fail): "429" answers every request with a rate limit (the gateway must
# move on), "529" overloads once (the gateway retries or moves on). The last step is healthy.
FALLOVER_CASES = [("claude", ("429",)), ("claude", ("529",)), ("codex", ("429",)), ("codex", ("529",)),
                  ("aider", ("429", "529"))]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def providers() -> Iterator[list[fp.FakeProvider]]:
    """Three providers: a route's step i goes to providers[i]."""
    with fp.running_fake_provider() as a, fp.running_fake_provider() as b, fp.running_fake_provider() as c:
        yield [a, b, c]


@pytest.fixture(autouse=True)
def _healthy(providers: list[fp.FakeProvider]) -> None:
    for provider in providers:
        provider.reset("ok")


@dataclass
class Gateway:
    daemon: Daemon
    url: str  # http://127.0.0.1:PORT
    key: str  # the client key, shown once by `gateway key add`
    root: Path


@pytest.fixture(scope="module")
def gateway(providers: list[fp.FakeProvider]) -> Iterator[Gateway]:
    if not any(agents.find_agent(cli) for cli in CLIENTS):
        agents.require_agent("claude")  # skips with the reason, or fails under CI=true: no daemon for nothing
    root = Path(tempfile.mkdtemp(prefix="flgw-", dir="/tmp"))
    port = _free_port()
    d = Daemon(root / "home", "--gateway", f"127.0.0.1:{port}")
    trap = providers[0].base_url  # anything that tries to leave the machine is refused and recorded there
    d.env.update(FLEETD_SECRET_STORE="file", HTTP_PROXY=trap, HTTPS_PROXY=trap, http_proxy=trap, https_proxy=trap,
                 NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")  # fmt: skip
    d.start()
    try:
        wait_until(lambda: _accepts(port), timeout=10, what=f"the gateway to listen on 127.0.0.1:{port}")
        created = d.json("gateway", "key", "add", "clients")
        yield Gateway(d, f"http://127.0.0.1:{port}", created["key"], root)
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def add_route(gw: Gateway, client: Client, name: str, providers: list[fp.FakeProvider]) -> list[str]:
    """Route `name` over one profile per provider (in order); the profiles' names."""
    profiles = []
    for index, provider in enumerate(providers):
        profile = f"{name}-{index}"
        base = provider.base_url + "/v1" if client.api in ("chat", "responses") else provider.base_url
        gw.daemon.cli("profile", "add", profile, "--backend", client.backend, "--base-url", base,
                      "--model", client.upstream_model, "--api-key-stdin", input=agents.FAKE_API_KEY)  # fmt: skip
        profiles.append(profile)
    chain = ",".join(f"{profile}@{client.upstream_model}" for profile in profiles)
    gw.daemon.cli("route", "add", name, "--chain", chain, "--api", client.api)
    return profiles


@dataclass
class ClientRun:
    returncode: int
    stdout: str
    stderr: str
    wall: float

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip().startswith("{")]


def run_client(gw: Gateway, cli: str, route: str, tmp_path: Path, *, stream: bool = False) -> ClientRun:
    """The real CLI, pointed at the gateway with the gateway key, asking for model `route`. `stream`: Aider
    streams (as fleetd runs it) instead of agents.agent_argv's --no-stream."""
    exe = agents.require_agent(cli)
    profile_dir, workdir, child_tmp = tmp_path / "profile", tmp_path / "work", tmp_path / "tmp"
    workdir.mkdir(parents=True)
    child_tmp.mkdir()
    # The same recipes as against a provider, with the gateway's URL, key and route: that is the whole change.
    agents.prepare_profile(cli, gw.url, profile_dir, route, key_env=GATEWAY_KEY_ENV)
    env = agents.agent_env(cli, gw.url, profile_dir, child_tmp, api_key=gw.key, key_env=GATEWAY_KEY_ENV)
    argv = agents.agent_argv(cli, PROMPT, route, base_url=gw.url, profile_dir=profile_dir, executable=exe,
                             api_key=gw.key)  # fmt: skip
    if stream:
        argv.remove("--no-stream")
    start = time.monotonic()
    process = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                               start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{cli} did not exit within {RUN_TIMEOUT:.0f} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # leftovers of the process group, if any
    return ClientRun(process.returncode, stdout, stderr, time.monotonic() - start)


def gateway_calls(gw: Gateway, route: str) -> list[dict[str, Any]]:
    """The route's logged calls, once there are any: the gateway writes them in batches after answering."""
    calls: list[dict[str, Any]] = wait_until(
        lambda: gw.daemon.json("gateway", "calls", "--route", route), timeout=10, what=f"calls of route {route}"
    )
    return calls


def assert_upstream_requests(client: Client, provider: fp.FakeProvider, gw: Gateway) -> None:
    """What reached a provider: its own model name and the profile's key, never the client's gateway key."""
    for request in provider.requests_for(client.fake_api):
        assert request.body["model"] == client.upstream_model
        assert gw.key not in json.dumps(request.headers)
        if client.api == "messages":
            assert request.headers.get("x-api-key") == agents.FAKE_API_KEY
            # The protocol's own headers pass on (Claude Code needs its betas).
            assert request.headers.get("anthropic-version") == "2023-06-01"
            assert "claude-code-20250219" in request.headers.get("anthropic-beta", "")
        else:
            assert request.headers.get("authorization") == f"Bearer {agents.FAKE_API_KEY}"


def assert_succeeded(client: Client, run: ClientRun) -> None:
    if client.cli == "claude":
        assert run.returncode == 0, run.describe()
        result = run.json_lines()[-1]
        assert (result["type"], result["is_error"], result["result"]) == ("result", False, fp.REPLY_TEXT)
        assert (result["usage"]["input_tokens"], result["usage"]["output_tokens"]) == (
            fp.ANTHROPIC_INPUT_TOKENS,
            fp.ANTHROPIC_OUTPUT_TOKENS,
        )
    elif client.cli == "codex":
        assert run.returncode == 0, run.describe()
        events = [e for e in run.json_lines() if not (e["type"] == "item.completed" and e["item"]["type"] == "error")]
        assert [e["type"] for e in events][-2:] == ["item.completed", "turn.completed"], run.describe()
        assert events[-2]["item"]["text"] == fp.REPLY_TEXT
        assert events[-1]["usage"]["input_tokens"] == fp.RESPONSES_INPUT_TOKENS
        assert events[-1]["usage"]["output_tokens"] == fp.RESPONSES_OUTPUT_TOKENS
    else:
        assert run.returncode == 0, run.describe()
        lines = [line.rstrip() for line in run.stdout.splitlines()]
        assert fp.REPLY_TEXT in lines, run.describe()
        # Streamed, Aider prints its own estimate of the tokens; the server's usage is the gateway's to record.
        assert any(line.startswith("Tokens: ") for line in lines), run.describe()
        assert "Error" not in run.stdout, run.describe()


@pytest.mark.parametrize(("cli", "failures"), FALLOVER_CASES, ids=[f"{c}-{'-'.join(f)}" for c, f in FALLOVER_CASES])
def test_real_client_through_the_gateway_survives_a_failing_first_step(
    cli: str, failures: tuple[str, ...], gateway: Gateway, providers: list[fp.FakeProvider], tmp_path: Path
) -> None:
    client = CLIENTS[cli]
    agents.require_agent(cli)
    route = f"{cli}-{'-'.join(failures)}"
    steps = providers[: len(failures) + 1]
    profiles = add_route(gateway, client, route, steps)
    for provider, failure in zip(steps, failures, strict=False):
        if failure == "429":
            provider.mode = "429"  # every request: retrying this step cannot help
        else:
            provider.fail_first(1, failure)

    # Aider streams here, as fleetd runs it, without asking for usage: the gateway must still count the tokens.
    run = run_client(gateway, cli, route, tmp_path, stream=cli == "aider")
    print(f"\n[{route}] exit {run.returncode}, wall {run.wall:.2f} s")
    assert_succeeded(client, run)

    for provider, failure in zip(steps, failures, strict=False):
        assert provider.calls[client.fake_api] >= 1, f"step {failure} was never tried"
    assert steps[-1].calls[client.fake_api] <= 1
    for provider in steps:
        assert_upstream_requests(client, provider, gateway)
        assert provider.proxy_attempts == []

    calls = gateway_calls(gateway, route)
    assert len(calls) == 1, calls  # one client request, however many tries
    (call,) = calls
    assert call["outcome"] == "succeeded", call
    assert call["key"] == "clients"
    assert call["tokens"] == client.tokens, call
    tries = call["path"]
    assert tries[0]["profile"] == profiles[0], tries
    # The fake's "529" is Anthropic's 529 overloaded_error and the OpenAI APIs' 503.
    overloaded = 529 if client.api == "messages" else 503
    assert tries[0]["status"] == {"429": 429, "529": overloaded}[failures[0]], tries
    assert (tries[-1]["status"], call["profile"]) == (200, tries[-1]["profile"]), tries
    if "429" in failures:  # a rate-limited step is not retried: the next profile answers
        assert call["profile"] != profiles[failures.index("429")], tries


BAD_REQUEST_CLIENTS = ["claude", "codex", "aider"]


@pytest.mark.parametrize("cli", BAD_REQUEST_CLIENTS)
def test_real_client_gets_the_providers_400_unchanged(
    cli: str, gateway: Gateway, providers: list[fp.FakeProvider], tmp_path: Path
) -> None:
    client = CLIENTS[cli]
    agents.require_agent(cli)
    route = f"{cli}-400"
    steps = providers[:2]
    profiles = add_route(gateway, client, route, steps)
    for provider in steps:
        provider.mode = "bad_request"

    run = run_client(gateway, cli, route, tmp_path)
    print(f"\n[{route}] exit {run.returncode}, wall {run.wall:.2f} s")
    if cli == "claude":
        assert run.returncode == 1, run.describe()
        result = run.json_lines()[-1]
        assert (result["api_error_status"], result["api_error_type"]) == (400, "invalid_request_error"), result
        assert result["result"] == f"API Error: 400 {fp.ANTHROPIC_BAD_REQUEST_MESSAGE}", result
    elif cli == "codex":
        assert run.returncode == 1, run.describe()
        failed = run.json_lines()[-1]
        assert failed["type"] == "turn.failed", run.describe()
        # Codex shows the provider's error body as it came: it must be the provider's, field for field.
        assert json.loads(failed["error"]["message"]) == fp.openai_error("bad_request").body
    else:
        text = " ".join(run.stdout.split())
        assert f"litellm.BadRequestError: OpenAIException - {fp.OPENAI_BAD_REQUEST_MESSAGE}" in text, run.describe()
        assert "Tokens:" not in run.stdout

    # A contract error is the client's: no other step is tried.
    assert steps[0].calls[client.fake_api] >= 1
    assert steps[1].calls[client.fake_api] == 0
    assert_upstream_requests(client, steps[0], gateway)
    calls = gateway_calls(gateway, route)
    for call in calls:  # Claude Code re-sends a 400 a few times by itself
        assert call["status"] == 400, call
        assert [t["profile"] for t in call["path"]] == [profiles[0]], call
        assert call["path"][0]["class"] == "contract", call
