"""Any OpenAI-compatible model server (Ollama, vLLM, llama.cpp, a gateway): one chat completion
over httpx. 429 / insufficient_quota / retry-after / x-ratelimit-reset-* are mapped by the parser."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Literal

from fleetd.backends.base import AttemptContext, EnvChange, LogSink
from fleetd.backends.defaults import AdapterDefaults
from fleetd.backends.parsers import openai_compat as parser
from fleetd.errors import InvalidArgument
from fleetd.records.loop import Loop
from fleetd.records.result import ParsedOutput

if TYPE_CHECKING:
    from fleetd.records.profile import Profile


class OpenAICompatAdapter(AdapterDefaults):
    name = "openai_compat"
    kind: Literal["http"] = "http"
    needs_profile = True
    end_on_live_failure = False
    auth = "key_unless_local"  # a bearer token; a model server on this host usually takes none

    def validate(self, loop: Loop) -> None:
        if loop.prompt is None and loop.prompt_file is None:
            raise InvalidArgument("the openai_compat backend needs --prompt or --prompt-file")
        if loop.command:
            raise InvalidArgument("the openai_compat backend takes no --command")
        if loop.agent_args:
            raise InvalidArgument("the openai_compat backend takes no --agent-arg (it runs no CLI)")

    def profile_env(self, profile: Profile, secret: str | None) -> EnvChange:
        env = {"OPENAI_BASE_URL": profile.base_url or ""}
        if secret is not None:
            env["OPENAI_API_KEY"] = secret
        return EnvChange(env)

    def validate_profile(self, profile: Profile) -> None:
        if not profile.base_url:
            raise InvalidArgument("an openai_compat profile needs --base-url")

    def gateway_apis(self, profile: Profile) -> dict[str, str]:
        return {"chat": profile.base_url, "responses": profile.base_url} if profile.base_url else {}

    async def call(
        self, ctx: AttemptContext, log: LogSink, timeout: float | None, now: datetime, tz: tzinfo
    ) -> ParsedOutput:
        import httpx

        profile = ctx.profile
        if profile is None or not profile.base_url:
            return ParsedOutput("failed", "contract", message="the profile has no --base-url")
        if not ctx.model:
            return ParsedOutput("failed", "contract", message="no model: give the loop --model or the profile --model")
        url = profile.base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {ctx.secret}"} if ctx.secret else {}
        body: dict[str, object] = {"model": ctx.model, "messages": [{"role": "user", "content": ctx.prompt or ""}]}
        if ctx.tokens_left is not None:  # the run's token budget, enforced by the server
            body["max_tokens"] = ctx.tokens_left
        log(f"POST {url} model={ctx.model}\n".encode())
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.post(url, json=body, headers=headers)
        except httpx.TimeoutException:
            return ParsedOutput("failed", "transient", message=f"no answer from {url} in time")
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
            # The profile's --base-url cannot be called at all: this worker is unusable, not the task wrong.
            return ParsedOutput("failed", "unavailable", message=f"cannot call {url}: {e}")
        except httpx.HTTPError as e:  # refused, reset, DNS, a broken response: the server or the network
            return ParsedOutput("failed", "transient", message=f"cannot reach {url}: {e}")
        parsed = parser.parse_chat_response(response.status_code, dict(response.headers), response.text, now, tz)
        log(f"HTTP {response.status_code}\n".encode())
        log(((parsed.final_text or parsed.message or response.text[:2000]) + "\n").encode())
        return parsed
