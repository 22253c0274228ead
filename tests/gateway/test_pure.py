"""The gateway's pure parts: reset times from headers, failure classes, usage from JSON and SSE streams,
listen addresses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetd.errors import InvalidArgument
from fleetd.gateway.model import parse_listen
from fleetd.gateway.protocols import GatewayError, get_protocol
from fleetd.gateway.proxy import upstream_bytes
from fleetd.gateway.sse import EventSplitter
from fleetd.gateway.upstream import failure_class, reset_from_headers
from fleetd.records.result import TokenUsage
from tests.integration import fake_provider as fake

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, NOW + timedelta(seconds=7)),
        ({"retry-after-ms": "1500", "retry-after": "9"}, NOW + timedelta(milliseconds=1500)),
        (
            {
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-tokens": "20ms",
            },
            NOW + timedelta(minutes=6),
        ),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "3s"}, NOW + timedelta(seconds=3)),
        (
            {
                "anthropic-ratelimit-tokens-reset": "2026-05-01T12:05:00Z",
                "anthropic-ratelimit-tokens-remaining": "0",
                "anthropic-ratelimit-requests-reset": "2026-05-01T12:09:00Z",
            },
            NOW + timedelta(minutes=5),
        ),
        ({"Anthropic-Ratelimit-Requests-Reset": "2026-05-01T12:01:00Z"}, NOW + timedelta(minutes=1)),
        ({}, None),
        ({"retry-after": "soon", "x-ratelimit-reset-requests": "garbage"}, None),
    ],
)
def test_reset_from_headers(headers: dict[str, str], expected: datetime | None) -> None:
    assert reset_from_headers(headers, NOW) == expected


@pytest.mark.parametrize(
    ("status", "mode", "expected"),
    [
        (429, "429", "rate_limited"),
        (429, "quota", "quota"),
        (503, "529", "transient"),
        (500, "500", "transient"),
        (401, "bad_key", "auth"),
        (400, "bad_request", "contract"),
        (404, "model_not_found", "contract"),
    ],
)
def test_openai_failure_classes(status: int, mode: str, expected: str) -> None:
    reply = fake.openai_error(mode)
    assert reply.status == status
    import json

    assert failure_class(reply.status, json.dumps(reply.body).encode())[0] == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("429", "rate_limited"),
        ("529", "transient"),
        ("quota", "quota"),
        ("bad_key", "auth"),
        ("bad_request", "contract"),
        ("500", "transient"),
    ],
)
def test_anthropic_failure_classes(mode: str, expected: str) -> None:
    import json

    reply = fake.anthropic_error(mode)
    assert failure_class(reply.status, json.dumps(reply.body).encode())[0] == expected


def test_other_statuses() -> None:
    assert failure_class(402, b"{}")[0] == "quota"
    assert failure_class(422, b'{"error": {"message": "bad field"}}') == ("contract", "HTTP 422: bad field")
    assert failure_class(403, b"forbidden")[0] == "auth"


def _stream_usage(api: str, chunks: list[bytes]) -> TokenUsage | None:
    protocol = get_protocol(api)
    splitter = EventSplitter()
    usage = None
    for chunk in chunks:
        for event in splitter.feed(chunk):
            usage = protocol.usage_event(event.name, event.json(), usage)
    return usage


def _split_badly(stream: bytes, size: int = 7) -> list[bytes]:
    """A stream cut at arbitrary points, as TCP may deliver it."""
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def test_usage_from_a_chat_stream_split_anywhere() -> None:
    stream = b"".join(fake.chat_stream("m", include_usage=True))
    usage = _stream_usage("chat", _split_badly(stream))
    assert usage == TokenUsage(fake.CHAT_PROMPT_TOKENS, fake.CHAT_COMPLETION_TOKENS, 0, 0)


def test_usage_from_a_messages_stream() -> None:
    stream = b"".join(fake.anthropic_stream("claude-x"))
    usage = _stream_usage("messages", _split_badly(stream, 13))
    assert usage == TokenUsage(
        fake.ANTHROPIC_INPUT_TOKENS,
        fake.ANTHROPIC_OUTPUT_TOKENS,
        fake.ANTHROPIC_CACHE_READ_INPUT_TOKENS,
        fake.ANTHROPIC_CACHE_CREATION_INPUT_TOKENS,
    )


def test_usage_from_a_responses_stream() -> None:
    stream = b"".join(fake.responses_stream("gpt-x"))
    usage = _stream_usage("responses", _split_badly(stream, 5))
    cached = fake.RESPONSES_CACHED_INPUT_TOKENS
    assert usage == TokenUsage(fake.RESPONSES_INPUT_TOKENS - cached, fake.RESPONSES_OUTPUT_TOKENS, cached, 0)


def test_usage_from_json_answers() -> None:
    assert get_protocol("chat").usage_json(fake.chat_completion("m")) == TokenUsage(812, 5, 0, 0)
    assert get_protocol("messages").usage_json(fake.anthropic_message("m")) == TokenUsage(123, 9, 67, 45)
    assert get_protocol("chat").usage_json({"usage": "nonsense"}) is None


def test_a_chat_stream_gets_usage_asked_for_and_the_client_does_not_see_it() -> None:
    chat = get_protocol("chat")
    body, strip = chat.prepare({"model": "x", "stream": True})
    assert body["stream_options"] == {"include_usage": True} and strip
    body, strip = chat.prepare({"model": "x", "stream": True, "stream_options": {"include_usage": True}})
    assert not strip
    assert chat.drop_event({"choices": [], "usage": {"prompt_tokens": 1}})
    assert not chat.drop_event({"choices": [{"delta": {}}]})


def test_error_shapes() -> None:
    assert get_protocol("messages").error_body("auth", "no")["error"]["type"] == "authentication_error"
    assert get_protocol("chat").error_body("auth", "no")["error"]["code"] == "invalid_api_key"
    assert get_protocol("messages").error_event("boom").startswith(b"event: error\ndata: ")


@pytest.mark.parametrize(
    ("text", "public", "listen", "is_public"),
    [
        ("127.0.0.1:4141", False, "127.0.0.1:4141", False),
        ("localhost:0", False, "localhost:0", False),
        ("[::1]:4141", False, "[::1]:4141", False),
        ("0.0.0.0:4141", True, "0.0.0.0:4141", True),
    ],
)
def test_listen_addresses(text: str, public: bool, listen: str, is_public: bool) -> None:
    setting = parse_listen(text, public)
    assert (setting.listen, setting.public) == (listen, is_public)


@pytest.mark.parametrize("text", ["0.0.0.0:4141", "192.168.1.2:80", "4141", "host:99999", ":80", "a b:1"])
def test_bad_or_public_listen_addresses_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_listen(text, False)


def test_a_body_too_deep_to_serialize_upstream_is_the_clients_bad_request() -> None:
    deep: list[object] = []
    for _ in range(100_000):  # built, not parsed: what json.loads could read at a shallower stack
        deep = [deep]
    with pytest.raises(GatewayError) as caught:
        upstream_bytes(get_protocol("chat"), {"model": "r", "messages": deep}, "m")
    assert caught.value.kind == "bad_request" and caught.value.status == 400
    assert upstream_bytes(get_protocol("chat"), {"model": "r"}, "m") == b'{"model": "m"}'


def test_a_hold_is_released_once_and_a_forgotten_one_expires() -> None:
    from fleetd.gateway.holds import Holds

    now = [100.0]
    holds = Holds(clock=lambda: now[0])
    assert holds.expected("k", "r") is None and holds.held("k") == 0
    first, second = holds.hold("k", "r", 0.5, ttl=10), holds.hold("k", "cheap", 0.25, ttl=60)
    holds.hold("other", "r", 9.0, ttl=10)
    assert holds.held("k") == 0.75
    holds.release(first, 0.4)
    holds.release(first, 0.1)  # twice: nothing more, and the cost stays the first's
    # A key's expected cost is per route: calls on a cheap route made one on a dear route look cheap.
    assert holds.held("k") == 0.25 and holds.expected("k", "r") == 0.4 and holds.expected("k", "cheap") is None
    holds.remember("k", "r", 9.0)  # the call log's figure, after a restart, never over a newer one
    assert holds.expected("k", "r") == 0.4
    # Another key's first call on a route: what the route's latest call cost, whoever's (it was held at all that was
    # left of its cap, and passed it).
    holds.release(first, 0.4, "r")  # a call's end tells its route's cost, whoever's key (an uncapped key holds none)
    holds.release(None, 0.2, "uncapped")
    assert holds.expected("new", "r") == 0.4 and holds.expected("new", "uncapped") == 0.2
    assert holds.expected("new", "elsewhere") is None
    holds.remember(None, "elsewhere", 0.3)
    assert holds.expected("new", "elsewhere") == 0.3
    now[0] += 61  # a call that never ended (its client left before the answer began) gives its hold up
    assert holds.held("k") == 0 and holds.held("other") == 0
    holds.release(second)  # after it expired: nothing


def test_a_refusal_names_each_reason_once_with_its_profile() -> None:
    from fleetd.gateway.proxy import _told

    refused_at_second_look = {"kind": "outcome", "detail": "rate_limited: p1: no room for another attempt: 1d=1req: "
                              "1 used", "profile": "p1", "error_class": "rate_limited"}  # fmt: skip
    passed_over = {"kind": "skip", "detail": "p1: no room for another attempt: 1d=1req: 1 used", "profile": "p1"}
    assert _told(refused_at_second_look) == _told(passed_over) == passed_over["detail"]
    # A provider's own 429 kept its words but lost whose it was.
    provider = {"kind": "outcome", "detail": "rate_limited: Too Many Requests", "profile": "p2",
                "error_class": "rate_limited"}  # fmt: skip
    assert _told(provider) == "p2: Too Many Requests"
