"""The gateway through a real daemon (`--gateway 127.0.0.1:0`), the official openai SDK and plain
httpx, against two loopback fake providers: failover on 429 and 529 (streaming and not), a 400 passed
back unchanged, tokens as the provider sent them, keys (401 in each API's shape, routes, daily cost),
a stream that breaks after its first byte, the body cap, and no provider key anywhere it should not be."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import openai
import pytest

from tests.harness import Daemon, wait_until
from tests.integration import fake_provider as fake
from tests.integration.fake_provider import FakeProvider

KEYS = {"1": "sk-gw-provider-one-0123456789abcdef", "2": "sk-gw-provider-two-0123456789abcdef"}
PRICE_IN, PRICE_OUT = 3.0, 15.0  # USD per million tokens
CHAT_COST = (fake.CHAT_PROMPT_TOKENS * PRICE_IN + fake.CHAT_COMPLETION_TOKENS * PRICE_OUT) / 1e6


class Gateway:
    def __init__(self, d: Daemon, p1: FakeProvider, p2: FakeProvider, url: str, key: str) -> None:
        self.d, self.p1, self.p2, self.url, self.key = d, p1, p2, url, key

    def pair(self, prefix: str, api: str = "chat", models: str = "") -> str:
        """Two profiles on the two providers and a route `prefix` over them, in that order."""
        for n, provider in (("1", self.p1), ("2", self.p2)):
            if api == "messages":
                backend, base = ["--backend", "claude_code"], provider.base_url
            else:
                backend, base = ["--backend", "openai_compat"], provider.base_url + "/v1"
            self.d.cli("profile", "add", f"{prefix}{n}", *backend, "--base-url", base, "--model", f"{prefix}-model-{n}",
                       "--price-input", str(PRICE_IN), "--price-output", str(PRICE_OUT), "--api-key-stdin",
                       input=KEYS[n] + "\n")  # fmt: skip
        self.d.cli("route", "add", prefix, "--chain", f"{prefix}1{models},{prefix}2", "--api", api)
        return prefix

    def lone(self, name: str, *args: str) -> str:
        """A profile `name` on the first provider and a route `name` over it alone."""
        self.d.cli("profile", "add", name, "--backend", "openai_compat", "--base-url", self.p1.base_url + "/v1",
                   "--model", "m", *args, "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
        self.d.cli("route", "add", name, "--chain", name)
        return name

    def first_answer(self, route: str, mode: str) -> tuple[int, str]:
        """Status and message of a call on `route` whose first provider answer is `mode`."""
        self.p1.fail_first(1, mode)
        try:
            status, _, message = _raw_call(self, route)
        finally:
            self.p1.fail_first(0, mode)
        return status, message

    def sdk(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.key, max_retries=0, timeout=30)

    def calls(self, *args: str) -> list[dict[str, Any]]:
        return self.d.json("gateway", "calls", "--limit", "500", *args)  # type: ignore[no-any-return]

    def call_of(self, route: str, count: int = 1) -> list[dict[str, Any]]:
        """The route's calls once `count` are recorded (recording follows the answer)."""
        return wait_until(lambda: c if len(c := self.calls("--route", route)) >= count else None,
                          what=f"{count} call(s) of {route}")  # fmt: skip


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    root = Path(tempfile.mkdtemp(prefix="flg-", dir="/tmp"))
    p1, p2 = FakeProvider().start(), FakeProvider().start()
    d = Daemon(root / "home", "--kill-grace", "0.5s", "--stop-grace", "1s", "--gateway", "127.0.0.1:0")
    d.env["FLEETD_SECRET_STORE"] = "file"
    d.start()
    try:
        key = d.json("gateway", "key", "add", "laptop")["key"]
        yield Gateway(d, p1, p2, d.json("gateway", "status")["url"], key)
    finally:
        d.stop()
        p1.stop()
        p2.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def lone_gateway(
    home: Path, name: str, *profile_args: str, daemon_args: tuple[str, ...] = ()
) -> Iterator[tuple[Daemon, FakeProvider]]:
    """A daemon of a test's own (it is stopped, restarted or killed) with a gateway, one profile `name` on a fake
    provider of its own and a route `name` over it."""
    provider = FakeProvider().start()
    d = Daemon(home / "home", "--gateway", "127.0.0.1:0", *daemon_args)
    d.env["FLEETD_SECRET_STORE"] = "file"
    d.start()
    try:
        d.cli("profile", "add", name, "--backend", "openai_compat", "--base-url", provider.base_url + "/v1",
              "--model", "m", *profile_args, "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
        d.cli("route", "add", name, "--chain", name)
        yield d, provider
    finally:
        d.stop()
        provider.stop()


def sdk_of(d: Daemon, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.json("gateway", "status")["url"] + "/v1", api_key=key, max_retries=0)


def in_background(call: Callable[[], object]) -> threading.Thread:
    """`call` in a thread, whatever error it gets (the daemon is killed or stopped under it)."""

    def quietly() -> None:
        with contextlib.suppress(openai.APIError):
            call()

    thread = threading.Thread(target=quietly)
    thread.start()
    return thread


def test_chat_falls_over_on_429_and_counts_the_tokens(gw: Gateway) -> None:
    route = gw.pair("rl")
    gw.p1.fail_first(1, "429")
    answer = gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == fake.REPLY_TEXT
    assert answer.model == "rl-model-2"  # the second step's model, rewritten
    [call] = gw.call_of(route)
    assert [(p["profile"], p["status"], p["class"]) for p in call["path"]] == [
        ("rl1", 429, "rate_limited"), ("rl2", 200, None)]  # fmt: skip
    assert call["outcome"] == "succeeded" and call["key"] == "laptop" and not call["streamed"]
    assert call["tokens"] == {"input": fake.CHAT_PROMPT_TOKENS, "output": fake.CHAT_COMPLETION_TOKENS,
                              "cache_read": 0, "cache_write": 0}  # fmt: skip
    assert call["cost_usd"] == pytest.approx(CHAT_COST)
    usage = {row["profile"]: row for row in gw.d.json("usage")}
    assert usage["rl1"]["state"] == "exhausted"


def test_a_hung_upstream_times_out_on_its_own_and_the_next_profile_answers(gw: Gateway) -> None:
    """`--timeout` is for one upstream's answer: it bounded the whole call, so a first profile that hung used all of
    it and the client got a 504 while the next profile was healthy, never tried."""
    gw.pair("hang")
    gw.d.cli("profile", "add", "hang1b", "--backend", "openai_compat", "--base-url", gw.p1.base_url + "/v1",
             "--model", "hang-model-1b", "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
    route = "hang-1s"
    # Two hang (each a try and its retry): the third still gets its turn within the call's time.
    gw.d.cli("route", "add", route, "--chain", "hang1,hang1b,hang2", "--timeout", "1s")
    gw.p1.latency = 5.0  # only the first two profiles' provider hangs
    try:
        answer = gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    finally:
        gw.p1.latency = 0.0
    assert answer.model == "hang-model-2"
    [call] = gw.call_of(route)
    assert [(p["profile"], p["class"]) for p in call["path"]] == [
        ("hang1", "transient"), ("hang1", "transient"), ("hang1b", "transient"), ("hang1b", "transient"),
        ("hang2", None)], call["path"]  # fmt: skip
    assert all(p["latency_ms"] < 2500 for p in call["path"][:4]), call["path"]


def test_a_streamed_chat_falls_over_on_529_and_honours_include_usage(gw: Gateway) -> None:
    route = gw.pair("ov")
    gw.p1.fail_first(2, "529")  # the first profile and its one retry
    stream = gw.sdk().chat.completions.create(
        model=route, messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake.REPLY_TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == fake.CHAT_PROMPT_TOKENS
    [call] = gw.call_of(route)
    assert [p["class"] for p in call["path"]] == ["transient", "transient", None]
    assert call["streamed"] and call["ttft_ms"] is not None and call["outcome"] == "succeeded"
    assert call["tokens"]["input"] == fake.CHAT_PROMPT_TOKENS


def test_a_stream_without_include_usage_is_still_counted_and_the_client_gets_no_usage_chunk(gw: Gateway) -> None:
    route = gw.pair("nu")
    chunks = list(gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "x"}],
                                                    stream=True))  # fmt: skip
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    sent = gw.p1.requests_for(fake.API_CHAT)[-1].body
    assert sent["stream_options"] == {"include_usage": True}
    [call] = gw.call_of(route)
    assert call["tokens"]["output"] == fake.CHAT_COMPLETION_TOKENS


def test_tools_pass_through_untouched_and_only_the_model_is_rewritten(gw: Gateway) -> None:
    route = gw.pair("tl", models="@special-model")
    tools = [{"type": "function", "function": {"name": "lookup", "description": "d",
              "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]  # fmt: skip
    messages = [{"role": "user", "content": "use the tool"}]
    gw.sdk().chat.completions.create(model=route, messages=messages, tools=tools, tool_choice="auto", temperature=0.3)
    sent = gw.p1.requests_for(fake.API_CHAT)[-1]
    assert sent.body == {"model": "special-model", "messages": messages, "tools": tools, "tool_choice": "auto",
                         "temperature": 0.3}  # fmt: skip
    assert sent.headers["authorization"] == f"Bearer {KEYS['1']}"  # the provider's key, not the gateway's


def test_a_key_set_with_set_key_is_the_one_the_provider_gets_next(gw: Gateway) -> None:
    route = gw.pair("rot")
    ask = {"model": route, "messages": [{"role": "user", "content": "hi"}]}
    gw.sdk().chat.completions.create(**ask)  # type: ignore[call-overload]
    assert gw.p1.requests_for(fake.API_CHAT)[-1].headers["authorization"] == f"Bearer {KEYS['1']}"
    rotated = "sk-gw-provider-rotated-0123456789ab"
    gw.d.cli("profile", "set-key", "rot1", "--api-key-stdin", input=rotated + "\n")
    gw.sdk().chat.completions.create(**ask)  # type: ignore[call-overload]
    assert gw.p1.requests_for(fake.API_CHAT)[-1].headers["authorization"] == f"Bearer {rotated}"


def test_a_400_reaches_the_client_unchanged_and_nothing_else_is_tried(gw: Gateway) -> None:
    route = gw.pair("br")
    before = gw.p2.calls[fake.API_CHAT]
    gw.p1.fail_first(1, "bad_request")
    with pytest.raises(openai.BadRequestError) as caught:
        gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body == fake.openai_error("bad_request").body["error"]
    assert gw.p2.calls[fake.API_CHAT] == before
    [call] = gw.call_of(route)
    assert call["status"] == 400 and call["outcome"] == "failed" and len(call["path"]) == 1


@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
@pytest.mark.parametrize("header", [None, "Bearer fk-wrong", "x-api-key"])
def test_401_without_a_valid_key_in_each_apis_shape(gw: Gateway, api: str, header: str | None) -> None:
    path = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}[api]
    headers = {}
    if header == "x-api-key":
        headers["x-api-key"] = "fk-not-a-key"
    elif header:
        headers["authorization"] = header
    answer = httpx.post(gw.url + path, json={"model": "x", "messages": []}, headers=headers)
    assert answer.status_code == 401
    body = answer.json()
    if api == "messages":
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"


def test_a_key_limited_to_routes(gw: Gateway) -> None:
    mine, other = gw.pair("lim"), gw.pair("oth")
    key = gw.d.json("gateway", "key", "add", "limited", "--routes", mine)["key"]
    assert [m.id for m in gw.sdk(key).models.list()] == [mine]
    gw.sdk(key).chat.completions.create(model=mine, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError, match="may not use route"):
        gw.sdk(key).chat.completions.create(model=other, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="no route named"):
        gw.sdk(key).chat.completions.create(model="nosuch", messages=[{"role": "user", "content": "hi"}])
    # Removed while the key named it, a new route of that name became the key's without a word.
    refused = gw.d.cli("route", "rm", mine, check=False)
    assert refused.returncode == 1, refused
    assert f"route '{mine}' is one of the routes of gateway key(s) limited" in refused.stderr
    assert mine in {r["name"] for r in gw.d.json("route", "list")}
    gw.d.cli("gateway", "key", "rm", "limited")
    gw.d.cli("route", "rm", mine)


def test_a_profile_edit_that_would_break_a_route_over_it_is_refused(gw: Gateway) -> None:
    route = gw.pair("edt")
    # Its model cleared, the route's step (no @MODEL) asked the provider for the route's own name.
    refused = gw.d.cli("profile", "edit", "edt1", "--clear-model", check=False)
    assert refused.returncode == 2, refused
    assert refused.stderr.strip() == (
        "fleetd: route edt would not work: chain step edt1 has no model: write edt1@MODEL or give the profile --model"
    )
    assert gw.d.json("profile", "show", "edt1")["model"] == "edt-model-1"
    gw.d.cli("profile", "edit", "edt1", "--model", "another")  # still a model: fine
    gw.d.cli("route", "rm", route)


def test_the_daily_cost_cap_answers_429(gw: Gateway) -> None:
    route = gw.pair("cap")
    key = gw.d.json("gateway", "key", "add", "capped", "--daily-cost", str(CHAT_COST / 2))["key"]
    gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    gw.call_of(route)
    with pytest.raises(openai.RateLimitError, match="daily cost cap"):
        gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    assert gw.call_of(route, 2)[0]["outcome"] == "rejected"


def test_the_daily_cost_cap_counts_the_calls_the_call_log_does_not_show_yet(gw: Gateway) -> None:
    # One client, one call after another: five got through a cap of about one and a half calls (the call
    # log is written a fifth of a second behind); then the second, which would pass it, was let in.
    route = gw.pair("seq")
    key = gw.d.json("gateway", "key", "add", "sequential", "--daily-cost", str(CHAT_COST * 1.5))["key"]
    gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    # What it has spent against its cap shows where a user looks at keys (it was only in `stats`), the call not yet
    # in the call log counted too, as the cap counts it.
    (shown,) = [k for k in gw.d.json("gateway", "key", "list") if k["name"] == "sequential"]
    assert shown["spent_24h"] == pytest.approx(CHAT_COST)
    assert re.search(r"sequential +\* +\$0\.\d+ of \$0\.\d+ ", gw.d.cli("gateway", "key", "list").stdout)
    with pytest.raises(openai.RateLimitError, match=r"daily cost cap in the last 24 h and a call costs about \$"):
        gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])


def test_a_key_removed_and_added_again_starts_its_daily_cost_afresh(gw: Gateway) -> None:
    # The cap counted calls by the key's name: a key added again under a removed key's name was refused with what the
    # removed key had spent.
    route = gw.pair("again")
    key = gw.d.json("gateway", "key", "add", "again", "--daily-cost", str(CHAT_COST * 1.5))["key"]
    gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    gw.call_of(route)
    gw.d.cli("gateway", "key", "rm", "again")
    key = gw.d.json("gateway", "key", "add", "again", "--daily-cost", str(CHAT_COST * 1.5))["key"]
    (shown,) = [k for k in gw.d.json("gateway", "key", "list") if k["name"] == "again"]
    assert shown["spent_24h"] == 0
    gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError, match="daily cost cap"):
        gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])


def test_calls_in_flight_together_hold_the_daily_cost_cap(gw: Gateway) -> None:
    # Twenty parallel calls each saw only what had been written before it came in: sixteen times a small cap.
    route = gw.pair("par")
    key = gw.d.json("gateway", "key", "add", "parallel", "--daily-cost", str(CHAT_COST * 2.5))["key"]
    gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])  # its cost known
    gw.p1.latency = 0.5  # all six are under way at once
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(lambda _: _outcome(gw, key, route), range(6)))
    finally:
        gw.p1.latency = 0.0
    # Spent 1 call, each admitted call held at that cost: one more fits under 2.5 calls, the rest wait for it.
    assert sorted(outcomes) == ["429", "429", "429", "429", "429", "ok"], outcomes
    # Once it ended, what it held is spent: a third call would pass the cap, and the refusal says so.
    with pytest.raises(openai.RateLimitError, match=r"daily cost cap in the last 24 h and a call costs about \$"):
        gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])


def _outcome(gw: Gateway, key: str, route: str) -> str:
    try:
        gw.sdk(key).chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    except openai.RateLimitError:
        return "429"
    return "ok"


def test_a_route_over_a_paid_profile_without_prices_warns_that_its_calls_count_at_nothing(gw: Gateway) -> None:
    # A claude_code key profile has no prices (Claude Code prices its own runs): its gateway calls were $0, under no
    # daily cost, its own or a key's, and `route add` said nothing.
    gw.d.cli("profile", "add", "unpriced", "--backend", "openai_compat", "--base-url", gw.p1.base_url + "/v1",
             "--model", "m", "--tier", "metered", "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
    added = gw.d.cli("route", "add", "unpriced-r", "--chain", "unpriced", "--json")
    assert json.loads(added.stdout)["warnings"] == [added.stderr.strip().removeprefix("warning: ")]
    assert added.stderr.startswith("warning: profile unpriced lacks an input or output price: its calls on this route "
                                   "are counted at $0 (or less than they cost)")  # fmt: skip
    # An input price alone leaves its output tokens at $0: warned of too.
    gw.d.cli("profile", "edit", "unpriced", "--price-input", "3")
    assert "lacks an input or output price" in gw.d.cli("route", "add", "unpriced-r2", "--chain", "unpriced").stderr
    # A local model's calls cost nothing indeed: no warning.
    gw.d.cli("profile", "add", "free", "--backend", "openai_compat", "--base-url", gw.p1.base_url + "/v1",
             "--model", "m", "--tier", "local")  # fmt: skip
    assert gw.d.cli("route", "add", "free-r", "--chain", "free").stderr == ""


def test_a_profile_over_its_daily_cost_through_the_gateway_is_passed_over(gw: Gateway) -> None:
    for n, provider, cap in (("1", gw.p1, ["--daily-cost", str(CHAT_COST / 2)]), ("2", gw.p2, [])):
        gw.d.cli("profile", "add", f"dc{n}", "--backend", "openai_compat", "--base-url", provider.base_url + "/v1",
                 "--model", "m", "--price-input", str(PRICE_IN), "--price-output", str(PRICE_OUT), *cap,
                 "--api-key-stdin", input=KEYS[n] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "dc", "--chain", "dc1,dc2")
    ask = {"model": "dc", "messages": [{"role": "user", "content": "hi"}]}
    gw.sdk().chat.completions.create(**ask)  # type: ignore[call-overload]
    assert gw.call_of("dc")[0]["profile"] == "dc1"  # its spend is recorded now: over its cap
    before = gw.p2.calls[fake.API_CHAT]

    def passed_over() -> bool:
        gw.sdk().chat.completions.create(**ask)  # type: ignore[call-overload]
        return gw.p2.calls[fake.API_CHAT] > before

    # A world read just before the record may serve for WORLD_TTL_S more: the next calls, not the very next.
    wait_until(passed_over, timeout=5, what="a call routed past dc1, over its daily cost")
    # With nowhere else to go the client is told to come back later, as for a key's cap (it was a 502, as if an
    # upstream had failed).
    # `usage` says so (it showed the profile `available`, and nothing of its spend).
    [row] = [u for u in gw.d.json("usage") if u["profile"] == "dc1"]
    room_at = row["daily_cost"].pop("room_at")
    assert row["daily_cost"] == {"spent": pytest.approx(CHAT_COST), "cap": CHAT_COST / 2, "over": True, "reached": True}
    # And when it is usable again, by itself (the table said "-" under RESETS IN, as if never).
    assert 86_000 < (datetime.fromisoformat(room_at) - datetime.now(UTC)).total_seconds() <= 86_400
    listed = next(line for line in gw.d.cli("usage").stdout.splitlines() if line.startswith("dc1 "))
    assert "over daily cost" in listed and "24h $0.00/$0.00" not in listed
    assert re.split(r"\s{2,}", listed)[5] in ("1d", "23h59m"), listed  # RESETS IN
    assert "passed over until " in gw.d.cli("usage", "show", "dc1").stdout
    gw.d.cli("route", "add", "dconly", "--chain", "dc1")
    with pytest.raises(openai.RateLimitError, match="over its daily cost") as refused:
        gw.sdk().chat.completions.create(**{**ask, "model": "dconly"})  # type: ignore[call-overload]
    # Told when its spend has left the 24 h window (it was always an hour).
    assert 86_000 < int(refused.value.response.headers["retry-after"]) <= 86_400
    # A run with nowhere else to go waits for that, as for a `--limit 1d=…usd` (it failed at once: "no usable
    # candidate"), and says so.
    gw.d.cli("loop", "add", "dcloop", "--every", "1h", "--backend", "openai_compat", "--profile", "dc1",
             "--prompt", "hi")  # fmt: skip
    run = gw.d.json("loop", "run", "dcloop")
    try:
        waiting = wait_until(lambda: r if (r := gw.d.json("runs", "show", str(run["id"])))["status"] == "waiting"
                             or r["status"] not in ("running",) else None, what="the run waiting")  # fmt: skip
        assert waiting["status"] == "waiting", waiting
        until = datetime.fromisoformat(waiting["wait_until"])
        assert 86_000 < (until - datetime.now(UTC)).total_seconds() <= 86_400
    finally:
        gw.d.cli("runs", "stop", str(run["id"]))
    # `loop show` no longer tells the user to enable or add a profile: the spend leaves by itself.
    shown = gw.d.json("loop", "show", "dcloop")
    assert (shown["not_firing"] or {}).get("reason") != "no_profile", shown["not_firing"]


def test_usage_tells_a_profile_with_no_room_in_its_daily_cost_from_one_over_it(gw: Gateway) -> None:
    # At $0.0276 of $0.03, each call about $0.0025, `usage` said "over daily cost", where the routes said "no room in
    # its daily cost"; its JSON had nothing to tell the two apart (`over`: passed over, keeps its meaning).
    gw.d.cli("profile", "add", "nr1", "--backend", "openai_compat", "--base-url", gw.p1.base_url + "/v1",
             "--model", "m", "--price-input", str(PRICE_IN), "--price-output", str(PRICE_OUT),
             "--daily-cost", str(CHAT_COST * 1.5), "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "nr", "--chain", "nr1")
    gw.sdk().chat.completions.create(model="nr", messages=[{"role": "user", "content": "hi"}])
    gw.call_of("nr")
    [row] = [u for u in gw.d.json("usage") if u["profile"] == "nr1"]
    assert row["daily_cost"] == {"spent": pytest.approx(CHAT_COST), "cap": CHAT_COST * 1.5, "over": True,
                                 "reached": False, "room_at": ANY}  # passed over, not spent  # fmt: skip
    listed = next(line for line in gw.d.cli("usage").stdout.splitlines() if line.startswith("nr1 "))
    assert "no room in daily cost" in listed and "over" not in listed, listed
    shown = gw.d.cli("usage", "show", "nr1").stdout
    assert "no room for another attempt" in shown and "over it" not in shown, shown
    # Amounts beside their cap keep the digits that tell them apart; a sub-cent cap is not "$0.00".
    spent, cap = re.search(r"24h (\$[\d.]+)/(\$[\d.]+)", listed).groups()  # type: ignore[union-attr]
    assert spent != cap and f"daily cost     {cap} per 24 h" in gw.d.cli("profile", "show", "nr1").stdout


def test_messages_pass_through_with_the_protocol_headers_streamed_and_not(gw: Gateway) -> None:
    route = gw.pair("an", api="messages", models="@claude-x")
    gw.p1.fail_first(1, "529")
    headers = {"x-api-key": gw.key, "anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024"}
    body = {"model": route, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(gw.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.json()["content"][0]["text"] == fake.REPLY_TEXT
    sent = gw.p1.requests_for(fake.API_ANTHROPIC)[-1]
    assert sent.query == {"beta": ["true"]} and sent.headers["x-api-key"] == KEYS["1"]
    assert sent.headers["anthropic-version"] == "2023-06-01" and sent.headers["anthropic-beta"] == "tools-2024"
    with httpx.stream("POST", gw.url + "/v1/messages", json={**body, "stream": True}, headers=headers) as s:
        raw = b"".join(s.iter_raw())
    assert b"message_stop" in raw
    counted = httpx.post(gw.url + "/v1/messages/count_tokens", json=body, headers=headers)
    assert counted.json() == {"input_tokens": fake.ANTHROPIC_COUNT_TOKENS}
    calls = gw.call_of(route, 2)  # count_tokens is not a model call
    assert len(calls) == 2
    assert calls[0]["tokens"] == {"input": fake.ANTHROPIC_INPUT_TOKENS, "output": fake.ANTHROPIC_OUTPUT_TOKENS,
                                  "cache_read": fake.ANTHROPIC_CACHE_READ_INPUT_TOKENS,
                                  "cache_write": fake.ANTHROPIC_CACHE_CREATION_INPUT_TOKENS}  # fmt: skip


def test_responses_stream_through_the_sdk_with_failover(gw: Gateway) -> None:
    route = gw.pair("rs", api="responses")
    gw.p1.fail_first(1, "429")
    with gw.sdk().responses.stream(model=route, input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == fake.REPLY_TEXT
    [call] = gw.call_of(route)
    assert [p["profile"] for p in call["path"]] == ["rs1", "rs2"]
    assert call["tokens"]["output"] == fake.RESPONSES_OUTPUT_TOKENS


def test_a_stream_that_breaks_after_its_first_byte_ends_with_an_error_event(gw: Gateway) -> None:
    port = _one_event_server(then=b"5\r\ndata:")
    gw.d.cli("profile", "add", "brk1", "--backend", "openai_compat", "--base-url", f"http://127.0.0.1:{port}/v1",
             "--model", "m", "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
    gw.d.cli("profile", "add", "brk2", "--backend", "openai_compat", "--base-url", gw.p2.base_url + "/v1",
             "--model", "m", "--api-key-stdin", input=KEYS["2"] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "brk", "--chain", "brk1,brk2")
    before = gw.p2.calls[fake.API_CHAT]
    body = {"model": "brk", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {gw.key}"}) as s:  # fmt: skip
        raw = b"".join(s.iter_raw())
    assert raw.startswith(b'data: {"first"')
    assert b"fleetd gateway: the upstream stream broke" in raw and b"server_error" in raw
    assert gw.p2.calls[fake.API_CHAT] == before  # never spliced onto another model's output
    [call] = gw.call_of("brk")
    assert call["outcome"] == "stream_error" and call["streamed"]


def test_a_body_over_16_mb_is_413_in_the_apis_shape(gw: Gateway) -> None:
    big = b'{"model": "x", "pad": "' + b"a" * (16 * 1024 * 1024 + 10) + b'"}'
    answer = httpx.post(gw.url + "/v1/messages", content=big, headers={"x-api-key": gw.key}, timeout=60)
    assert answer.status_code == 413 and answer.json()["error"]["type"] == "request_too_large"


def _nested(depth: int, route: str = "nd") -> bytes:
    return b'{"model": "%s", "messages": ' % route.encode() + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("api", ["chat", "messages"])
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[" * 200_000, 400),  # past Python's recursion limit in json.loads
        (_nested(5000), 400),
        (b'{"model": "\xff\xfe"}', 400),  # not UTF-8
        (b'[{"model": "nd"}]', 400),
        (b'{"model": 5}', 400),
        (b'{"model": "nd", "messages": [], "n": ' + b"9" * 5000 + b"}", 400),  # past int's digit limit
        (b"", 400),
        (b'{"model": "\\ud800"}', 404),  # a lone surrogate is no route's name
    ],
)
def test_malformed_bodies_are_4xx_in_the_apis_shape(gw: Gateway, api: str, body: bytes, status: int) -> None:
    if not any(r["name"] == "nd" for r in gw.d.json("route", "list")):
        gw.pair("nd")
    path = {"chat": "/v1/chat/completions", "messages": "/v1/messages"}[api]
    log = gw.d.home / "daemon-test.log"
    logged = log.stat().st_size
    answer = httpx.post(gw.url + path, content=body, headers={"x-api-key": gw.key}, timeout=30)
    assert answer.status_code == status, answer.text[:300]
    error = answer.json()["error"]
    assert error["type"] == ("invalid_request_error" if api == "chat" or status == 400 else "not_found_error")
    with log.open("rb") as f:
        f.seek(logged)
        assert b"Traceback" not in f.read()


def test_a_wrong_method_or_path_is_said_as_such_not_as_an_unknown_model(gw: Gateway) -> None:
    # GET /v1/chat/completions answered 404 "model_not_found".
    wrong = httpx.get(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}"}, timeout=30)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed", wrong.text
    assert "GET /v1/chat/completions: not allowed; use POST" in wrong.json()["error"]["message"]
    nowhere = httpx.post(gw.url + "/v1/nowhere", headers={"authorization": f"Bearer {gw.key}"}, timeout=30)
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "unknown_url", nowhere.text
    anthropic = httpx.get(gw.url + "/v1/messages", headers={"x-api-key": gw.key}, timeout=30)
    assert anthropic.status_code == 405 and anthropic.json()["error"]["type"] == "invalid_request_error"


def test_no_provider_key_in_calls_logs_or_answers(gw: Gateway) -> None:
    route = gw.pair("lk")
    gw.p1.fail_first(1, "bad_key")
    gw.p2.fail_first(1, "bad_request")
    with pytest.raises(openai.BadRequestError) as caught:
        gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    gw.call_of(route)
    seen = json.dumps(caught.value.body) + gw.d.cli("gateway", "calls", "--json").stdout + gw.d.log_text()
    seen += gw.d.cli("gateway", "key", "list", "--json").stdout + gw.d.cli("route", "list", "--json").stdout
    for secret in KEYS.values():
        assert secret not in seen
    assert gw.key not in gw.d.cli("gateway", "key", "list", "--json").stdout


def test_a_provider_key_quoted_in_an_answer_reaches_neither_the_client_nor_the_call_log(gw: Gateway) -> None:
    """A provider (or its model) can answer with the key it was sent; the gateway's client holds only the gateway's
    key, and the call log is fleetd's record: both get the answer with every key fleetd knows redacted, streamed or
    not; a client that pasted one into its question finds it redacted in the logged request too."""
    gw.pair("qk")
    gw.d.cli("route", "add", "qk-bodies", "--chain", "qk1,qk2", "--api", "chat", "--log-bodies")
    gw.p1.reply_text = f"you sent {KEYS['1']}; the other is {KEYS['2']}"
    # fleetd's own keys are kept only as hashes: the one the client pasted (its own, here) was stored in the clear.
    messages: Any = [{"role": "user", "content": f"which key? not {KEYS['2']}? mine is {gw.key}"}]
    try:
        plain = gw.sdk().chat.completions.create(model="qk-bodies", messages=messages).choices[0].message.content
        chunks = gw.sdk().chat.completions.create(model="qk-bodies", messages=messages, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finally:
        gw.p1.reply_text = fake.REPLY_TEXT
    assert plain == streamed == "you sent [REDACTED]; the other is [REDACTED]"
    calls = gw.call_of("qk-bodies", 2)
    assert all("[REDACTED]" in call["response_body"] for call in calls), calls
    assert all("which key? not [REDACTED]? mine is [REDACTED]" in call["request_body"] for call in calls), calls
    stored = b"".join(p.read_bytes() for p in gw.d.home.glob("fleetd.db*"))
    seen = json.dumps(calls) + gw.d.log_text()
    for secret in [*KEYS.values(), gw.key]:
        assert secret not in seen
        assert secret.encode() not in stored


def test_a_gateway_key_an_upstream_error_quotes_back_is_not_stored(gw: Gateway) -> None:
    """A server whose 400 quotes the request it got (a client pasted its gateway key into its question) had that
    key stored in the clear as the call's error and the profile's last error: fleetd keeps gateway keys only as
    hashes, so only their form finds them. The client still gets the provider's answer as it was."""
    route = gw.lone("echo")
    gw.p1.echo_errors = True
    gw.p1.fail_first(1, "bad_request")
    messages: Any = [{"role": "user", "content": f"my key is {gw.key}"}]
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            gw.sdk().chat.completions.create(model=route, messages=messages)
    finally:
        gw.p1.echo_errors = False
    assert gw.key in caught.value.message  # its own question, quoted back to it
    [call] = gw.call_of(route)
    assert call["status"] == 400 and "[REDACTED]" in call["error"], call
    stored = b"".join(p.read_bytes() for p in gw.d.home.glob("fleetd.db*"))
    seen = json.dumps(call) + gw.d.log_text() + gw.d.cli("events", "--json", "--limit", "1000").stdout
    seen += gw.d.cli("usage", "--json").stdout + gw.d.cli("profile", "show", "echo", "--json").stdout
    assert gw.key not in seen
    assert gw.key.encode() not in stored


def test_bad_cli_input_exits_2_and_saves_nothing(gw: Gateway) -> None:
    gw.pair("bad")
    gw.d.cli("profile", "add", "bad-nokey", "--backend", "openai_compat", "--base-url", "https://llm.example/v1",
             "--model", "m")  # fmt: skip
    cases = [
        ("route", "add", "x1", "--chain", "nosuch"),
        ("route", "add", "x2", "--chain", "bad1", "--api", "messages"),  # an openai_compat profile
        ("route", "add", "x3", "--chain", "bad1,claude_code"),  # a backend is not a named step
        ("route", "add", "x4 y", "--chain", "bad1"),
        ("route", "add", "x5", "--chain", "bad1", "--timeout", "0s"),
        ("route", "add", "x6", "--chain", "bad-nokey"),  # every call was the provider's 401, then a disabled profile
        ("route", "add", "bad", "--chain", "bad1"),  # exists: a conflict, not a usage error
        ("gateway", "key", "add", "k1", "--routes", "nosuch"),
        ("gateway", "key", "add", "k2", "--daily-cost", "-1"),
        ("gateway", "key", "add", "bad key"),
        ("gateway", "enable", "--listen", "0.0.0.0:4141"),
        ("gateway", "enable", "--listen", "nonsense"),
        ("daemon", "run", "--gateway", "10.1.2.3:4141"),  # not loopback, without --gateway-public
        ("daemon", "start", "--gateway", "nonsense"),
    ]
    for args in cases:
        result = gw.d.cli(*args, check=False)
        assert result.returncode == (1 if args[:3] == ("route", "add", "bad") else 2), (args, result.stderr)
        assert result.stderr.startswith("fleetd: ") and result.stderr.count("\n") == 1
    assert {r["name"] for r in gw.d.json("route", "list")} & {"x1", "x2", "x3", "x4 y", "x5", "x6"} == set()
    # A backend named as a step was "unknown backend or profile 'openai_compat'": it is a known backend.
    backend = gw.d.cli("route", "add", "x8", "--chain", "openai_compat", check=False).stderr
    assert backend == ("fleetd: 'openai_compat' is a backend: a route's --chain names profiles, the ones to try in "
                       "order (fleetd profile list)\n")  # fmt: skip
    # A Gemini profile with its key was said to have "no key or base URL":
    gw.d.cli("profile", "add", "bad-gem", "--backend", "gemini", "--api-key-stdin", input="gem-key-0123456789\n")
    gem = gw.d.cli("route", "add", "x7", "--chain", "bad-gem@gemini-2.5-flash", check=False)
    assert (gem.returncode, gem.stderr) == (2, "fleetd: profile bad-gem (gemini) cannot serve a chat route: the "
                                            "gateway cannot call its provider (it speaks the chat, messages and "
                                            "responses APIs only)\n")  # fmt: skip
    nokey = gw.d.cli("route", "add", "x6", "--chain", "bad-nokey", check=False).stderr
    assert nokey == (
        "fleetd: profile bad-nokey (openai_compat) cannot serve a route: no API key (its --base-url is not on this "
        "host): add one with `fleetd profile set-key bad-nokey --api-key-stdin < key.txt`\n"
    )
    # A typo's empty list, exit 0, read as "no calls yet":
    typo = gw.d.cli("gateway", "calls", "--route", "bda", check=False)
    assert (typo.returncode, typo.stderr) == (1, "fleetd: no route named 'bda', and no calls of one on record\n")
    assert gw.d.json("gateway", "calls", "--route", "bad") == []  # a route with no calls yet
    assert not {"k1", "k2"} & {k["name"] for k in gw.d.json("gateway", "key", "list")}
    assert gw.d.json("gateway", "status")["url"] == gw.url


def test_an_enable_on_a_busy_port_leaves_the_running_gateway_listening(gw: Gateway) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        result = gw.d.cli("gateway", "enable", "--listen", f"127.0.0.1:{port}", check=False)
        assert result.returncode == 2 and "cannot listen on 127.0.0.1:" in result.stderr, result.stderr
    finally:
        busy.close()
    status = gw.d.json("gateway", "status")
    assert status["enabled"] and status["url"] == gw.url and status["problem"] is None
    assert status["source"] == "flag"  # the daemon's --gateway, until an enable
    assert httpx.get(gw.url + "/v1/models", headers={"x-api-key": gw.key}).status_code == 200
    # Its own address again is no busy port: it keeps listening there, now as the stored setting says (status
    # said "flag" still).
    enabled = gw.d.json("gateway", "enable", "--listen", status["address"])
    assert (enabled["url"], enabled["source"]) == (gw.url, "setting")
    assert httpx.get(gw.url + "/v1/models", headers={"x-api-key": gw.key}).status_code == 200
    # A free address: the new listener serves, the old one is closed; and back.
    anywhere = gw.d.cli("gateway", "enable", "--listen", "127.0.0.1:0", "--json")
    moved = json.loads(anywhere.stdout)["url"]
    # Port 0 is a new free port at each start: said, with the port to give for an address clients can keep.
    port = moved.rsplit(":", 1)[1]
    assert anywhere.stderr == (f"fleetd: warning: port 0 is a new free port at every daemon start (now {port}); "
                               f"`--listen 127.0.0.1:{port}` keeps this one\n")  # fmt: skip
    assert moved != gw.url and httpx.get(moved + "/v1/models", headers={"x-api-key": gw.key}).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(gw.url + "/v1/models", headers={"x-api-key": gw.key})
    assert gw.d.json("gateway", "enable", "--listen", status["address"])["url"] == gw.url


def test_json_contracts(gw: Gateway) -> None:
    route = gw.pair("js")
    gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    gw.call_of(route)
    assert set(gw.d.json("route", "show", route)) == {"name", "api", "chain", "chain_text", "timeout_s", "log_bodies",
                                                      "created_at"}  # fmt: skip
    assert set(gw.d.json("gateway", "key", "add", "contract")) == {"name", "routes", "daily_cost", "created_at", "key"}
    assert set(gw.d.json("gateway", "key", "list")[0]) == {"name", "routes", "daily_cost", "spent_24h", "created_at"}
    assert set(gw.d.json("gateway", "status")) == {"enabled", "listen", "address", "url", "public", "source",
                                                   "problem", "routes", "keys"}  # fmt: skip
    [call] = gw.calls("--route", route, "--since", "1h")
    assert set(call) == {"id", "at", "key", "route", "api", "streamed", "outcome", "status", "error", "path",
                         "profile", "model", "ttft_ms", "latency_ms", "tokens", "cost_usd"}  # fmt: skip
    assert set(call["path"][0]) == {"profile", "model", "status", "class", "latency_ms"}
    stats = gw.d.json("stats", "--source", "gateway", "--by", "route,profile")
    assert set(stats) == {"since", "until", "source", "by", "groups", "total"}
    row = next(g for g in stats["groups"] if g["group"] == {"route": route, "profile": "js1"})
    assert row["calls"] == 1 and row["tokens"]["input"] == fake.CHAT_PROMPT_TOKENS
    assert "CALLS" in gw.d.cli("stats", "--source", "gateway", "--by", "route,profile").stdout


def _one_event_server(then: bytes = b"", hold_s: float = 0.0, later: tuple[bytes, ...] = ()) -> int:
    """A provider that answers a stream's first event, then `then` (a chunk's start: the connection dropped
    mid-answer), then holds the connection `hold_s` seconds (a long answer); then, if there are `later` chunks, sends
    each after `hold_s` more and ends the stream (else it closes the connection)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), b"0"))  # fmt: skip
                while len(rest) < length:
                    rest += conn.recv(65536)
                event = b'data: {"first": true}\n\n'
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                             + b"%x\r\n%s\r\n" % (len(event), event) + then)  # fmt: skip
                time.sleep(hold_s)
                with contextlib.suppress(OSError):
                    for chunk in later:
                        conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        time.sleep(hold_s)
                    if later:
                        conn.sendall(b"0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return int(server.getsockname()[1])


def test_a_stream_the_stops_grace_cuts_ends_with_an_error_event_and_no_traceback(short_home: Path) -> None:
    # uvicorn cancelled it and logged "Exception in ASGI application" with a CancelledError's traceback.
    port = _one_event_server(hold_s=30)
    d = Daemon(short_home / "home", "--gateway", "127.0.0.1:0", "--stop-grace", "1s", "--kill-grace", "0.5s")
    d.env["FLEETD_SECRET_STORE"] = "file"
    d.start()
    try:
        d.cli("profile", "add", "stall", "--backend", "openai_compat", "--base-url", f"http://127.0.0.1:{port}/v1",
              "--model", "m", "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
        d.cli("route", "add", "stall", "--chain", "stall", "--timeout", "60s")
        key = d.json("gateway", "key", "add", "st")["key"]
        url = d.json("gateway", "status")["url"]
        body = {"model": "stall", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        got: list[bytes] = []
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {key}"}) as s:  # fmt: skip
            chunks = s.iter_raw()
            got.append(next(chunks))  # the first event: the stream is under way
            stopper = threading.Thread(target=d.stop)
            stopper.start()
            with contextlib.suppress(httpx.HTTPError):
                got.extend(chunks)
            stopper.join(15)
        raw = b"".join(got)
        assert raw.startswith(b'data: {"first"') and b"fleetd gateway: the daemon is stopping" in raw, raw
        assert "Traceback" not in d.log_text() and "Exception in ASGI application" not in d.log_text(), d.log_text()
        d.start()
        [row] = d.json("gateway", "calls")
        assert row["outcome"] == "interrupted", row
        assert row["latency_ms"] is None  # not known: the journal has no end for it (it said 0 ms)
    finally:
        d.stop()


def test_a_profiles_request_limit_counts_the_calls_under_way(gw: Gateway) -> None:
    # Calls in flight together each saw the limit as it was before any of them ended: a `1d=30req` profile took 31.
    for n, provider, limit in (("1", gw.p1, ["--limit", "1d=2req"]), ("2", gw.p2, [])):
        gw.d.cli("profile", "add", f"rql{n}", "--backend", "openai_compat", "--base-url", provider.base_url + "/v1",
                 "--model", "m", *limit, "--api-key-stdin", input=KEYS[n] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "rql", "--chain", "rql1,rql2")
    before = len(gw.p1.requests_for(fake.API_CHAT))
    gw.p1.latency = gw.p2.latency = 0.5  # all five are under way at once
    try:
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            outcomes = list(pool.map(lambda _: _outcome(gw, gw.key, "rql"), range(5)))
    finally:
        gw.p1.latency = gw.p2.latency = 0.0
    assert outcomes == ["ok"] * 5
    assert len(gw.p1.requests_for(fake.API_CHAT)) - before == 2  # its limit; the other three went to rql2
    calls = gw.call_of("rql", 5)
    assert sorted(c["profile"] for c in calls) == ["rql1", "rql1", "rql2", "rql2", "rql2"]


def test_back_to_back_calls_stay_within_a_profiles_request_and_token_limits(gw: Gateway) -> None:
    # The call log and the windows are written a moment after each answer: a `1d=1req` profile answered two calls
    # back to back. And one at 2,451 of 3,000 tokens was let in though each call used 817.
    tokens = fake.CHAT_PROMPT_TOKENS + fake.CHAT_COMPLETION_TOKENS
    for name, limit in (("bbreq", "1d=1req"), ("bbtok", f"1d={int(tokens * 2.5)}tok")):
        gw.d.cli("profile", "add", name, "--backend", "openai_compat", "--base-url", gw.p1.base_url + "/v1",
                 "--model", "m", "--limit", limit, "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
        gw.d.cli("route", "add", name, "--chain", name)
    assert [_outcome(gw, gw.key, "bbreq") for _ in range(3)] == ["ok", "429", "429"]
    status, _, message = _raw_call(gw, "bbreq")  # when, as every other message says a time (it was ISO 8601)
    assert status == 429 and "no profile has room before" in message and not re.search(r"\dT\d", message), message
    reasons = message.partition(" (")[2].removesuffix(")").split("; ")  # no room, or exhausted once a beat said so
    assert reasons[0].startswith("bbreq: ") and len(reasons) == len(set(reasons)), message  # each reason once
    assert [_outcome(gw, gw.key, "bbtok") for _ in range(3)] == ["ok", "ok", "429"]  # a third would pass it
    used = lambda: [w["used"] for row in gw.d.json("usage") if row["profile"] == "bbtok" for w in row["windows"]]  # noqa: E731
    wait_until(lambda: used() == [tokens * 2], what="both calls in the window")


def _hammer(gw: Gateway, key: str, route: str, clients: int, seconds: float) -> list[int]:
    """`clients` clients calling `route` with `key` one call after another, as fast as they can: every status."""
    end = time.monotonic() + seconds

    def client(_: int) -> list[int]:
        statuses = []
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
            while time.monotonic() < end:
                body = {"model": route, "messages": [{"role": "user", "content": "hi"}]}
                statuses.append(http.post("/v1/chat/completions", json=body).status_code)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return [code for codes in pool.map(client, range(clients)) for code in codes]


def test_clients_calling_in_a_tight_loop_get_exactly_a_profiles_request_limit(gw: Gateway) -> None:
    # Two clients calling as fast as they could took a `1d=3req` profile to 11: a call routed by a world read a moment
    # before the profile was exhausted went through, and its success took the exhaustion back.
    gw.d.cli("profile", "add", "tight", "--backend", "openai_compat", "--base-url", gw.p1.base_url + "/v1",
             "--model", "m", "--limit", "1d=3req", "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "tight", "--chain", "tight")
    statuses = _hammer(gw, gw.key, "tight", 2, 3)
    assert statuses.count(200) == 3 and set(statuses) == {200, 429}, (statuses.count(200), len(statuses))
    requests = lambda: [w["used"] for row in gw.d.json("usage") if row["profile"] == "tight" for w in row["windows"]]  # noqa: E731
    wait_until(lambda: requests() == [3], what="three requests in the window")


def test_clients_calling_in_a_tight_loop_get_exactly_a_keys_daily_cost(gw: Gateway) -> None:
    # Three clients of a key capped at 2.5 calls got 3: a call that ended while the cap's read of the call log was
    # under way had left the calls under way and joined the calls not written yet after that list was read.
    gw.d.cli("profile", "add", "slowcap", "--backend", "openai_compat", "--base-url", gw.p2.base_url + "/v1",
             "--model", "m", "--price-input", str(PRICE_IN), "--price-output", str(PRICE_OUT),
             "--api-key-stdin", input=KEYS["2"] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "slowcap", "--chain", "slowcap")
    assert _outcome(gw, gw.key, "slowcap") == "ok"  # what a call costs is known
    key = gw.d.json("gateway", "key", "add", "hammered", "--daily-cost", str(CHAT_COST * 2.5))["key"]
    gw.p2.latency = 0.3
    try:
        statuses = _hammer(gw, key, "slowcap", 3, 3)
    finally:
        gw.p2.latency = 0.0
    assert statuses.count(200) == 2 and set(statuses) == {200, 429}, (statuses.count(200), len(statuses))


def test_a_profile_disabled_by_hand_is_not_called_again(gw: Gateway) -> None:
    # The gateway routes by a world it read up to a quarter of a second before: a call right after `profile disable`
    # went to the disabled profile.
    route = gw.pair("dis")
    gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    gw.d.cli("profile", "disable", "dis1")
    try:
        gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
        assert [c["profile"] for c in gw.call_of(route, 2)] == ["dis2", "dis1"]  # newest first
    finally:
        gw.d.cli("profile", "enable", "dis1")


def test_doctor_names_a_route_whose_every_profile_is_out_of_rotation(gw: Gateway) -> None:
    gw.d.cli("profile", "add", "docp", "--backend", "openai_compat", "--base-url", gw.p1.base_url + "/v1",
             "--model", "m", "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "docr", "--chain", "docp")
    gw.d.cli("profile", "disable", "docp")
    try:
        report = json.loads(gw.d.cli("doctor", "--json", check=False).stdout)
        [finding] = [f for f in report["findings"] if f["check"] == "rotation" and f["subject"] == "docr"]
        assert finding["severity"] == "error"
        assert finding["message"] == "route docr: every profile it may use is out of rotation (docp)"
        # A call on it: nothing could be tried, so no upstream failed (it was a 502).
        status, _, message = _raw_call(gw, "docr")
        assert status == 503 and "docp: disabled" in message
    finally:
        gw.d.cli("profile", "enable", "docp")


def test_parallel_calls_on_a_fresh_token_limited_profile_go_one_at_a_time_and_are_told_why(gw: Gateway) -> None:
    # Before one of its calls had ended what a call uses was not known, so none was held back: eight parallel calls
    # took 6.5k tokens of a 3k limit. Now the first call holds all that is left; the others come back in a second.
    tokens = fake.CHAT_PROMPT_TOKENS + fake.CHAT_COMPLETION_TOKENS
    limit = f"1d={int(tokens * 3.5)}tok"
    gw.d.cli("profile", "add", "fresh", "--backend", "openai_compat", "--base-url", gw.p2.base_url + "/v1",
             "--model", "m", "--limit", limit, "--api-key-stdin", input=KEYS["2"] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "fresh", "--chain", "fresh")
    answers = _four_at_once_reach_one(gw, "fresh")
    refused = [(retry, message) for status, retry, message in answers if status == 429]
    assert all(retry == "1" for retry, _ in refused), refused
    assert all("no room for another attempt: 1d=" in message for _, message in refused), refused


def _four_at_once_reach_one(gw: Gateway, route: str) -> list[tuple[int, str | None, str]]:
    """Four calls at once on `route` (over p2, answering slowly): one reaches the provider, three get 429."""
    before = gw.p2.calls[fake.API_CHAT]
    gw.p2.latency = 0.5
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _raw_call(gw, route), range(4)))
    finally:
        gw.p2.latency = 0.0
    assert sorted(status for status, _, _ in answers) == [200, 429, 429, 429], answers
    assert gw.p2.calls[fake.API_CHAT] - before == 1
    return answers


def _raw_call(gw: Gateway, route: str) -> tuple[int, str | None, str]:
    answer = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}"},
                        json={"model": route, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)  # fmt: skip
    message = answer.json().get("error", {}).get("message", "") if answer.status_code != 200 else ""
    return answer.status_code, answer.headers.get("retry-after"), message


def test_parallel_calls_on_a_fresh_profile_with_a_daily_cost_go_one_at_a_time(gw: Gateway) -> None:
    # Eight parallel calls spent $2.61 of a $1 cap: what a call costs was not known before one had ended.
    gw.d.cli("profile", "add", "freshcost", "--backend", "openai_compat", "--base-url", gw.p2.base_url + "/v1",
             "--model", "m", "--price-input", str(PRICE_IN), "--price-output", str(PRICE_OUT),
             "--daily-cost", str(CHAT_COST * 3.5), "--api-key-stdin", input=KEYS["2"] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "freshcost", "--chain", "freshcost")
    answers = _four_at_once_reach_one(gw, "freshcost")
    assert all(retry == "1" for status, retry, _ in answers if status == 429), answers


def test_a_keys_cap_expects_each_routes_own_cost(gw: Gateway) -> None:
    # Calls on a cheap route made a call on a dear one look cheap: it was let in and passed the key's cap.
    for name, scale in (("cheapr", 1), ("dearr", 40)):
        gw.d.cli("profile", "add", name, "--backend", "openai_compat", "--base-url", gw.p1.base_url + "/v1",
                 "--model", "m", "--price-input", str(PRICE_IN * scale), "--price-output", str(PRICE_OUT * scale),
                 "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
        gw.d.cli("route", "add", name, "--chain", name)
    dear = CHAT_COST * 40
    key = gw.d.json("gateway", "key", "add", "mixed", "--daily-cost", str(dear * 2.5))["key"]
    assert [_outcome(gw, key, "dearr") for _ in range(2)] == ["ok", "ok"]
    assert [_outcome(gw, key, "cheapr") for _ in range(3)] == ["ok", "ok", "ok"]
    assert _outcome(gw, key, "dearr") == "429"  # 2.075 dear spent: one more would pass 2.5
    assert _outcome(gw, key, "cheapr") == "ok"  # a cheap one still fits


def test_a_keys_first_call_on_a_route_expects_what_the_route_costs(gw: Gateway) -> None:
    # At $0.005022 of a $0.006 cap, the key's first call on another route was let in (its cost not known for that
    # key) though that route's calls cost $0.002511 for every other key: it spent $0.007533.
    gw.d.cli("profile", "add", "newr", "--backend", "openai_compat", "--base-url", gw.p1.base_url + "/v1",
             "--model", "m", "--price-input", str(PRICE_IN), "--price-output", str(PRICE_OUT),
             "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
    for route in ("newr-a", "newr-b"):
        gw.d.cli("route", "add", route, "--chain", "newr")
    assert _outcome(gw, gw.key, "newr-b") == "ok"  # another key's call: what newr-b costs is known
    key = gw.d.json("gateway", "key", "add", "newroute", "--daily-cost", str(CHAT_COST * 2.5))["key"]
    assert [_outcome(gw, key, "newr-a") for _ in range(2)] == ["ok", "ok"]
    assert _outcome(gw, key, "newr-b") == "429"  # 2 spent: one more would pass 2.5


def test_a_keys_cap_remembers_what_its_calls_cost_across_a_restart(short_home: Path) -> None:
    # After a kill -9 the key's last call cost was forgotten: at $0.98 of $1 the next call was let in.
    prices = ("--price-input", str(PRICE_IN), "--price-output", str(PRICE_OUT))
    with lone_gateway(short_home, "rs", *prices) as (d, _):
        key = d.json("gateway", "key", "add", "rk", "--daily-cost", str(CHAT_COST * 1.5))["key"]
        sdk_of(d, key).chat.completions.create(model="rs", messages=[{"role": "user", "content": "hi"}])
        wait_until(lambda: d.json("gateway", "calls"), what="the call in the call log")
        d.stop()
        d.start()
        with pytest.raises(openai.RateLimitError, match="a call costs about"):
            sdk_of(d, key).chat.completions.create(model="rs", messages=[{"role": "user", "content": "hi"}])


def test_a_providers_5xx_that_a_limit_keeps_from_being_retried_reaches_the_client(gw: Gateway) -> None:
    # Its one request of the day answered 500; the retry had no room: the client got 429 "no room", as if the
    # provider had rate limited it.
    route = gw.lone("once5", "--limit", "1d=1req")
    assert gw.first_answer(route, "500")[0] == 500
    assert _raw_call(gw, route)[0] == 429  # the limit holds for the next one


def test_a_kill_9_loses_no_gateway_call_finished_or_under_way(short_home: Path) -> None:
    # A call answered just before a kill -9 was lost (its row and its use waited for the recorder's next batch, 6 in 6
    # at 0.05-0.2 s), and a call under way was never counted: a `1d=10req` profile showed 0 used after the restart.
    prices = ("--price-input", str(PRICE_IN), "--price-output", str(PRICE_OUT))
    with lone_gateway(short_home, "kj", *prices, "--limit", "1d=10req") as (d, provider):
        sdk = sdk_of(d, d.json("gateway", "key", "add", "kk", "--daily-cost", "1")["key"])
        sdk.chat.completions.create(model="kj", messages=[{"role": "user", "content": "hi"}])
        provider.latency = 3.0  # the next call is under way at the provider when the daemon dies
        under_way = in_background(
            lambda: sdk.chat.completions.create(model="kj", messages=[{"role": "user", "content": "again"}])
        )
        wait_until(lambda: provider.calls[fake.API_CHAT] == 2, what="the second call at the provider")
        d.kill9()
        under_way.join(10)
        provider.latency = 0.0
        d.start()
        calls = sorted(d.json("gateway", "calls"), key=lambda c: c["id"])
        assert [(c["outcome"], c["profile"], c["key"]) for c in calls] == [
            ("succeeded", "kj", "kk"), ("interrupted", "kj", "kk")]  # fmt: skip
        assert calls[0]["tokens"]["output"] == fake.CHAT_COMPLETION_TOKENS
        assert calls[0]["cost_usd"] == pytest.approx(CHAT_COST)
        assert "under way" in calls[1]["error"]
        assert _requests_used(d, "kj") == [2]  # both requests, once each
        assert d.json("gateway", "key", "list")[0]["spent_24h"] == pytest.approx(CHAT_COST)
        d.kill9()  # the journal was replayed and removed: nothing is counted twice after a second start
        d.start()
        assert len(d.json("gateway", "calls")) == 2
        assert _requests_used(d, "kj") == [2]


def test_a_stop_waits_for_a_call_under_way_no_longer_than_the_stop_grace(short_home: Path) -> None:
    # `daemon stop` waited for a 40 s call to end, past the "waiting up to 30s" it logged; the gateway also took new
    # calls all through the runs' grace.
    graces = ("--stop-grace", "1s", "--kill-grace", "0.5s")
    with lone_gateway(short_home, "sg", "--limit", "1d=10req", daemon_args=graces) as (d, provider):
        sdk = sdk_of(d, d.json("gateway", "key", "add", "sk")["key"])
        provider.latency = 20.0
        answers: list[BaseException] = []

        def call() -> None:
            try:
                sdk.chat.completions.create(model="sg", messages=[{"role": "user", "content": "slow"}])
            except openai.APIError as e:
                answers.append(e)

        under_way = threading.Thread(target=call)
        under_way.start()
        wait_until(lambda: provider.calls[fake.API_CHAT] == 1, what="the call at the provider")
        began = time.monotonic()
        assert d.stop(timeout=15) == 0
        assert time.monotonic() - began < 8  # the stop grace and the kill grace, and the start-up of the CLI
        # The stop's line said "waiting up to 1s for running runs", as if none of it were the call's.
        assert "waiting up to 1s for 0 runs and 1 gateway call under way" in d.log_text()
        under_way.join(5)
        # Cut by the stop, the client got a 500 in plain text (and the log uvicorn's traceback): it gets a 503 in the
        # API's shape that says why, and when to come back.
        [cut] = answers
        assert isinstance(cut, openai.APIStatusError) and cut.status_code == 503, cut
        assert "the fleetd gateway is stopping" in cut.message and cut.response.headers["retry-after"], cut.message
        assert "Traceback" not in d.log_text(), d.log_text()
        # uvicorn's own "ERROR:    Cancel 1 running task(s), timeout graceful shutdown exceeded", with no time: an
        # expected end of a stop, said in the daemon's format and words.
        assert "ERROR:" not in d.log_text() and "timeout graceful shutdown exceeded" not in d.log_text(), d.log_text()
        assert "1 answer(s) still under way at the end of the stop grace: cut" in d.log_text(), d.log_text()
        provider.latency = 0.0
        d.start()
        [row] = d.json("gateway", "calls")
        assert row["outcome"] == "interrupted"  # cut by the stop: its request counted, as after a kill -9
        assert "its stop grace ran out" in row["error"], row["error"]  # it said only "a crash or kill -9"
        assert _requests_used(d, "sg") == [1]


def _requests_used(d: Daemon, profile: str) -> list[float]:
    return [w["used"] for r in d.json("usage") if r["profile"] == profile for w in r["windows"]]


def test_a_providers_429_is_told_once_not_again_as_the_exhaustion_it_caused(gw: Gateway) -> None:
    # The refusal named the provider's 429 and then the exhaustion that 429 had just caused, one profile twice.
    status, message = gw.first_answer(gw.lone("twice"), "429")
    assert status == 429, message
    reasons = message.partition(" (")[2].removesuffix(")").split("; ")
    assert [r.partition(": ")[0] for r in reasons] == ["twice"], message


def test_gateway_key_add_prints_the_key_alone_on_stdout(gw: Gateway) -> None:
    """`KEY=$(fleetd gateway key add ci)` took the note after the key too: the client then sent both lines."""
    added = gw.d.cli("gateway", "key", "add", "scripted")
    assert re.fullmatch(r"fk-[A-Za-z0-9_-]+\n", added.stdout), added.stdout
    assert added.stderr == "fleetd: gateway key scripted: shown once, keep it now; fleetd keeps only its hash\n"
    assert "scripted" in {k["name"] for k in gw.d.json("gateway", "key", "list")}


def test_a_route_whose_profiles_all_come_back_by_themselves_says_when(gw: Gateway) -> None:
    """Every profile's circuit open: 503 with no retry-after, as for a profile disabled by hand, though the
    gateway knew the moment the first one would be tried again."""
    route = gw.lone("cbk")
    gw.p1.fail_first(50, "529")
    try:
        wait_until(lambda: gw.d.json("profile", "show", route)["circuit"]["state"] == "open" or (_raw_call(gw, route)
                   and False), timeout=60, what="the circuit to open")  # fmt: skip
        until = datetime.fromisoformat(gw.d.json("profile", "show", route)["circuit"]["open_until"])
        status, retry_after, message = _raw_call(gw, route)
    finally:
        gw.p1.fail_first(0, "529")
        gw.d.cli("profile", "reset-circuit", route)
    assert status == 503 and "circuit" in message, (status, message)
    assert retry_after is not None, message
    assert 1 <= int(retry_after) <= max(1, round((until - datetime.now(UTC)).total_seconds()) + 1), retry_after


def _hung_up(gw: Gateway, route: str, *, streamed: bool, times: int, before: int = 0) -> list[dict[str, Any]]:
    """`times` calls on `route` whose client gives up after 0.2 s, the answer coming after 1 s: their call log rows,
    once they and the route's `before` earlier calls are all recorded (recording follows the answer)."""
    body = {"model": route, "stream": streamed, "messages": [{"role": "user", "content": "hi"}]}
    gw.p1.latency = 1.0  # the answer comes after the client has gone
    try:
        for _ in range(times):
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=0.2,
                           headers={"authorization": f"Bearer {gw.key}"})  # fmt: skip
        return gw.call_of(route, before + times)[:times]
    finally:
        gw.p1.latency = 0.0


def test_a_client_that_hangs_up_is_not_counted_against_the_provider(gw: Gateway) -> None:
    """A client that gave up waiting (`curl -m 1`, an SDK's timeout) counted as the provider's failure: three of them
    opened its circuit breaker, and the loops on that profile failed ("no usable candidate") while it was healthy."""
    route = gw.lone("hangup")
    # A failing call first (a 529 and its retry's): two of the three failures that open the circuit. A call its client
    # left is no word on the provider either way: it neither opens the circuit nor closes it.
    gw.p1.fail_first(2, "529")
    with contextlib.suppress(openai.APIError):
        gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    assert gw.d.json("profile", "show", route)["circuit"]["failures"] == 2
    calls = _hung_up(gw, route, streamed=True, times=3, before=1)  # (after the 529's call)
    # (They left before its first chunk: it said "mid-stream".)
    assert [(c["outcome"], c["error"]) for c in calls] == [
        ("failed", "the client went away before the stream began")
    ] * 3
    shown = gw.d.json("profile", "show", route)
    assert (shown["circuit"]["state"], shown["circuit"]["failures"]) == ("closed", 2), shown
    assert {u["profile"]: u for u in gw.d.json("usage")}[route]["state"] == "available"
    # And the next call is answered by it.
    answer = gw.sdk().chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == fake.REPLY_TEXT
    # What the provider served the clients that left is what it bills: counted (half such calls were $0, and a key's
    # or a profile's daily cost let more through).
    assert all(c["tokens"]["input"] == fake.CHAT_PROMPT_TOKENS for c in calls), calls


def test_a_plain_answer_whose_client_has_gone_is_not_logged_as_received(gw: Gateway) -> None:
    # `curl --max-time 1` on a 5 s answer: curl gave up, the call log said `succeeded` (the stream's case said
    # "the client went away mid-stream").
    route = gw.lone("hangup-plain")
    [call] = _hung_up(gw, route, streamed=False, times=1)
    assert (call["outcome"], call["error"]) == ("failed", "the client went away before the answer was sent"), call
    assert call["tokens"]["input"] == fake.CHAT_PROMPT_TOKENS  # what the provider served is what it bills
    shown = gw.d.json("profile", "show", route)
    assert shown["circuit"]["failures"] == 0 and shown["circuit"]["state"] == "closed"  # no word on the provider


def test_what_a_stream_its_client_left_used_is_counted(gw: Gateway) -> None:
    # The usage comes in a stream's last event: a client that left before it (`curl -m 1`) had the call counted at 0
    # tokens and $0, and a key's or a profile's daily cost let more through than it was set to.
    usage = {"id": "u", "object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}}  # fmt: skip
    delta = {"id": "u", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "x"}}]}
    more = b"data: " + json.dumps(delta).encode() + b"\n\n"
    port = _one_event_server(hold_s=0.5, later=(more, more, b"data: " + json.dumps(usage).encode() + b"\n\n",
                                                  b"data: [DONE]\n\n"))  # fmt: skip
    gw.d.cli("profile", "add", "usage-left", "--backend", "openai_compat", "--base-url", f"http://127.0.0.1:{port}/v1",
             "--model", "m", "--price-input", str(PRICE_IN), "--price-output", str(PRICE_OUT),
             "--api-key-stdin", input=KEYS["1"] + "\n")  # fmt: skip
    gw.d.cli("route", "add", "usage-left", "--chain", "usage-left")
    body = {"model": "usage-left", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=10,
                      headers={"authorization": f"Bearer {gw.key}"}) as s:  # fmt: skip
        assert next(s.iter_raw()).startswith(b'data: {"first"')  # then the client hangs up
    [call] = gw.call_of("usage-left")
    assert call["outcome"] == "failed" and call["error"] == "the client went away mid-stream", call
    assert call["tokens"]["input"] == 1000 and call["tokens"]["output"] == 200, call
    assert call["cost_usd"] == pytest.approx((1000 * PRICE_IN + 200 * PRICE_OUT) / 1e6)


def test_a_call_whose_client_has_gone_is_not_tried_on_another_upstream(gw: Gateway) -> None:
    # A client that gave up (`curl -m 1`) while its call's first profile answered 500: the gateway retried, fell over
    # to the next profile and paid it for an answer nobody received.
    route = gw.pair("left")
    body = {"model": route, "messages": [{"role": "user", "content": "hi"}]}
    first, second = gw.p1.calls[fake.API_CHAT], gw.p2.calls[fake.API_CHAT]
    gw.p1.fail_first(2, "500")
    gw.p1.latency = 1.0
    try:
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=0.3,
                       headers={"authorization": f"Bearer {gw.key}"})  # fmt: skip
        [call] = gw.call_of(route)
    finally:
        gw.p1.latency = 0.0
        gw.p1.fail_first(0, "500")
    assert (gw.p1.calls[fake.API_CHAT] - first, gw.p2.calls[fake.API_CHAT] - second) == (1, 0), call["path"]
    assert call["outcome"] == "failed" and "the client went away" in (call["error"] or ""), call
