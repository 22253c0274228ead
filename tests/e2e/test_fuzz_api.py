"""A property-based fuzzer over every route of the API and every field of its bodies and queries,
against one real daemon on its Unix socket (httpx straight to the socket: the CLI would cost ~100 ms
a request). The properties: no answer is a 5xx, every refusal is `{"error": {code, message}}`, the
daemon stays up with nothing in its log but its own lines, the database passes `integrity_check`,
and nothing was saved by a request that was refused.

Safe by construction: the daemon runs as whoever runs the tests (often root in CI), so commands are
`true` (with fuzzed comments), every fuzzed directory lies under this test's own temporary root or is
one the daemon must refuse, loops are added disabled and intervals are hours, and `/v1/shutdown` is
not fuzzed. Reproducible: `derandomize=True`, no example database.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.daemon.api import create_app
from fleetd.records.run import STATUSES
from fleetd.timefmt import DurationError, parse_duration
from tests.harness import Daemon

MAX_EXAMPLES = 800  # ~5 s on 2 cores (fixed seed: the same 800 requests every run)
LOOP_NAMES = ["fz-a", "fz-b", "fz.c"]
PROFILE_NAMES = ["fp-a", "fp-b"]
BACKENDS = ["command", "claude_code", "codex", "gemini", "aider", "openai_compat"]
NOT_FUZZED = {("POST", "/v1/shutdown")}

# Text that has broken something somewhere: NUL, a lone surrogate, over-long paths and numbers, …
EDGE_TEXT = [
    "", " ", "\x00", "a\x00b", "\ud800", "é", "😀", "\u202e", "..", "/", "9" * 400, "-1", "inf", "nan", "1e400",
    "http://[::1", "/" + "d" * 300, "/d" * 2100, "x" * 5000,
]  # fmt: skip
EDGE_INTS = [0, -1, 1023, 1024, 2**31, 2**40, 2**40 + 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400]


@dataclass
class Created:
    """What 2xx answers created and did not remove since: the only things allowed to exist after."""

    loops: set[str] = field(default_factory=set)
    profiles: set[str] = field(default_factory=set)
    answers: dict[int, int] = field(default_factory=dict)  # status -> count, to see the fuzzer reaches 2xx too


@dataclass
class Fuzzed:
    daemon: Daemon
    client: httpx.Client
    root: Path  # the only place a fuzzed directory may be created
    created: Created


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    root = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    daemon = Daemon(root / "home", "--kill-grace", "0.5s", "--stop-grace", "2s")
    daemon.env["FLEETD_SECRET_STORE"] = "file"  # the keyring is absent on CI hosts; keys still get fuzzed
    daemon.start()
    (root / "dirs").mkdir()
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://fleetd", timeout=30)
    try:
        yield Fuzzed(daemon, client, root, Created())
    finally:
        client.close()
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- values ---------------------------------------------------------------------------------------

TEXT = st.text(max_size=30)  # hypothesis leaves out surrogates; EDGE_TEXT brings one
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_INTS),
    st.floats(),  # with inf and nan: json.dumps writes Infinity and NaN, which Python's json reads
    TEXT,
    st.sampled_from(EDGE_TEXT),
)
JUNK = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6
)
NOT_TEXT = JUNK.filter(lambda v: not isinstance(v, str))
NOT_TRUE = JUNK.filter(lambda v: v is not True)


def plausible(*values: Any) -> st.SearchStrategy[Any]:
    """Mostly values near the field's domain (valid, just off, far off), sometimes anything."""
    return st.one_of(st.sampled_from(values), st.sampled_from(values), JUNK)


def _fires_often(text: str) -> bool:
    try:
        return parse_duration(text) < 3600
    except (DurationError, AttributeError):
        return False


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A valid body with a few fields fuzzed (or dropped): most bodies then fail on one field, and
    some pass, so the fuzzer reaches what lies behind validation too."""
    body = dict(base)
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            body.pop(key, None)
        else:
            body[key] = draw(fields[key])
    return body


def loop_body(root: Path) -> st.SearchStrategy[dict[str, Any]]:
    line = st.text(max_size=30).filter(lambda t: "\n" not in t and "\r" not in t)
    fields = {
        "name": plausible(*LOOP_NAMES, "../etc", "x" * 65, "fz-a\n"),
        "cron": plausible("0 3 * * *", "0 0 31 2 *", "0 0 29 2 *", "61 * * * *", "* * * *", "every day"),
        # Hours apart at least: nothing fuzzed should fire during the run, even if resumed.
        "every": st.one_of(
            st.sampled_from(["1h", "2h30m", "36500d", "36501d", "99999999999w", "0s", "1ms", "9" * 400, "10 parsecs"]),
            JUNK.filter(lambda v: not (isinstance(v, str) and _fires_often(v))),
        ),
        "at": plausible("2001-01-01T00:00", "2999-01-01T09:00", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00+14:00"),
        "timezone": plausible("UTC", "Europe/Stockholm", "Mars/Olympus", "../etc/passwd", "America", "UTC\x00"),
        "backend": plausible(*BACKENDS, "teleport"),
        # Only ever `true`: the daemon may run what the fuzzer adds, with the tests' privileges.
        "command": st.one_of(
            st.sampled_from(["true", "exit 3", "", " ", "true\x00"]), line.map(lambda t: "true # " + t), NOT_TEXT
        ),
        "prompt": plausible("hi", "x" * 5000, "\x00"),
        "prompt_file": plausible(str(Path(__file__).resolve()), "/nonexistent/p.md", "relative.md", "/etc\x00"),
        "dir": plausible(str(root / "dirs"), "/nonexistent", "relative", str(root) + "\x00", "/" + "d" * 300),
        "env": plausible(["A=1"], ["NOEQ"], ["FLEETD_RUN_ID=1"], ["A\n=b"], ["B=\x00"], {"A": "1"}, {"A": [1]}),
        "timeout": plausible("30m", "9" * 400, "forever", 5, 1e400, -1),
        "catch_up": plausible("once", "skip", "twice"),
        "output_cap": st.one_of(st.sampled_from(EDGE_INTS), st.integers(), st.floats(), JUNK),
        "enabled": st.one_of(st.just(False), NOT_TRUE),  # added paused: a fuzzed loop runs only by /run
        "profiles": plausible([], PROFILE_NAMES[:1], PROFILE_NAMES, "fp-a,fp-b", ["fp-a", "fp-a"], ["ghost"]),
        "model": plausible("m1", "\x00"),
        "agent_args": plausible([], ["--flag"], ["\x00"], "--flag"),
        "chain": plausible("claude_code", "fp-a@m1,codex", "fp-a,,codex", "nope", "claude_code@", "command", "\x00"),
        "tiers": plausible("local", "local,metered", ["subscription"], "gold", "", []),
        "max_cost": plausible("2.50", "$1", "inf", "nan", "-1", 1e400, "9" * 400),
        "max_tokens": plausible("2M", "500k", "1.5k", "0", "-5", "9" * 400, "many"),
        "daily_cost": plausible("10", "0", "1e9", "nan"),
        "on_exhausted": plausible("escalate", "wait", "panic"),
    }
    schedules = st.sampled_from(["cron", "every", "at"]).flatmap(lambda kind: fields[kind].map(lambda v: {kind: v}))
    base = st.builds(lambda name, schedule: {"name": name, "command": "true", "enabled": False, **schedule},
                     st.sampled_from(LOOP_NAMES), schedules)  # fmt: skip
    return base.flatmap(lambda b: mutated(b, fields))


def profile_body(root: Path) -> st.SearchStrategy[dict[str, Any]]:
    # A directory the daemon may create: under `root`, one plain component, never "..".
    component = st.text(st.characters(blacklist_characters="/.\x00", blacklist_categories=("Cs",)), min_size=1)
    prices = st.one_of(st.floats(), st.integers(), st.sampled_from(EDGE_INTS), plausible("1.5", "inf", "nan", "-1"))
    fields = {
        "backend": plausible(*BACKENDS, "teleport"),
        "tier": plausible("local", "subscription", "metered", "gold"),
        "api_key": plausible("sk-fuzz-1", "", "a\nb", "sk-\x00"),
        "base_url": plausible("http://127.0.0.1:9/v1", "http://[::1", "ftp://x", "http://localhost:99999", "http://"),
        "config_dir": st.one_of(
            component.map(lambda c: str(root / "dirs" / c)),
            st.sampled_from(["relative", "/proc/fleetd-fuzz/x", str(root) + "/a\x00", "/" + "d" * 300, "/d" * 2100]),
            NOT_TEXT,
        ),
        "model": plausible("m1", "\x00"),
        "limits": plausible(["5h=1000tok"], ["7d=40Mtok", "24h=500req"], ["5h=" + "9" * 400 + "tok"], ["bad"]),
        "price_input": prices,
        "price_output": prices,
        "price_cache_read": prices,
        "price_cache_write": prices,
        "enabled": plausible(True, False),
        "default_reset": plausible("60s", "2d", "0", "-1s", "9" * 400, "soon"),
        "daily_cost": plausible("5", "inf", "-1", "0"),
    }
    fields["name"] = plausible(*PROFILE_NAMES, "bad name")
    base = st.builds(lambda name, backend: {"name": name, "backend": backend},
                     st.sampled_from(PROFILE_NAMES), st.sampled_from(BACKENDS[1:-1]))  # fmt: skip
    return base.flatmap(lambda b: mutated(b, fields))


# -- requests -------------------------------------------------------------------------------------

PATH_TEXT = st.text(max_size=40)  # no surrogates: a URL cannot carry one
RAW_BODIES = st.sampled_from(
    [b"{bad", b"[]", b"null", b"\xff\xfe", b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 40 + b"1" + b"}" * 40,
     b'{"name": ' + b"1" * 5000 + b"}", b'{"name": "fz-a", "every": "1h", "command": "true", "enabled": NaN}']
)  # fmt: skip


def path_params(template: str) -> st.SearchStrategy[dict[str, str]]:
    params: dict[str, st.SearchStrategy[str]] = {}
    if "{name}" in template:
        pool = PROFILE_NAMES if template.startswith("/v1/profiles") else LOOP_NAMES
        params["name"] = st.one_of(st.sampled_from(pool), st.sampled_from(pool), PATH_TEXT, st.just("x" * 5000))
    if "{run_id}" in template:
        params["run_id"] = st.one_of(
            st.integers(-2, 30).map(str), st.sampled_from(EDGE_INTS).map(str), st.just("9" * 5000), PATH_TEXT
        )
    if "{backend}" in template:
        params["backend"] = st.one_of(st.sampled_from(BACKENDS), PATH_TEXT)
    return st.fixed_dictionaries(params)


URL_EDGE_TEXT = [t for t in EDGE_TEXT if "\ud800" not in t]  # a URL cannot carry a lone surrogate
NUMBER_TEXT = st.one_of(st.integers().map(str), st.sampled_from(EDGE_INTS).map(str), st.sampled_from(URL_EDGE_TEXT))
QUERIES: dict[str, st.SearchStrategy[dict[str, str]]] = {
    "/v1/runs": st.fixed_dictionaries(
        {},
        optional={
            "status": st.one_of(st.sampled_from(STATUSES), PATH_TEXT),
            "since": st.one_of(st.sampled_from(["24h", "9" * 20, "99999999999w", "0s", "yesterday"]), PATH_TEXT),
            "limit": NUMBER_TEXT,
            "loop": st.one_of(st.sampled_from(LOOP_NAMES), PATH_TEXT),
        },
    ),
    # Never follow=1: a followed stream stays open by design.
    "/v1/events": st.fixed_dictionaries(
        {}, optional={"after": NUMBER_TEXT, "limit": NUMBER_TEXT, "follow": st.just("0")}
    ),
    "/v1/runs/{run_id}/log": st.fixed_dictionaries({}, optional={"follow": st.sampled_from(["0", "no"])}),
    # The asking shell's PATH: any text, over-long too (33,000 characters: over the daemon's 32 KiB,
    # under httpx's 64 KiB query limit).
    "/v1/doctor": st.fixed_dictionaries(
        {}, optional={"path": st.one_of(st.sampled_from(["/usr/bin:/bin", "", "a" * 33_000]), PATH_TEXT)}
    ),
}


@dataclass(frozen=True)
class Call:
    method: str
    template: str
    path: str
    query: dict[str, str]
    body: bytes
    fields: dict[str, Any] | None  # the JSON body when it was one

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"{self.method} {self.path} query={self.query} body={self.body[:300]!r}"


def api_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the daemon serves, read from the app itself, so a new
    route is fuzzed (with generic input) the day it is added."""
    app = create_app(cast(Any, None))  # routes are closures over the context; building them needs none
    routes = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD" and (method, route.path) not in NOT_FUZZED:  # type: ignore[attr-defined]
                routes.append((method, route.path))  # type: ignore[attr-defined]
    return routes


ROUTES = api_routes()


@st.composite
def calls(draw: st.DrawFn, root: Path) -> Call:
    method, template = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 19)) == 0:  # now and then a method the route does not take
        method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]))
    params = draw(path_params(template))
    path = template.format(**{k: quote(v, safe="") for k, v in params.items()})
    query = draw(QUERIES.get(template, st.just({})))
    fields: dict[str, Any] | None = None
    if (method, template) == ("POST", "/v1/loops"):
        fields = draw(st.one_of(loop_body(root), loop_body(root), st.dictionaries(TEXT, JUNK, max_size=4)))
    elif (method, template) == ("POST", "/v1/profiles"):
        fields = draw(st.one_of(profile_body(root), profile_body(root), st.dictionaries(TEXT, JUNK, max_size=4)))
    if fields is not None and draw(st.integers(0, 9)) > 0:
        body = json.dumps(fields).encode()
    else:
        fields = None
        body = draw(st.one_of(st.just(b""), RAW_BODIES, JUNK.map(lambda v: json.dumps(v).encode())))
    return Call(method, template, path, query, body, fields)


def _check_answer(call: Call, response: httpx.Response, created: Created) -> None:
    created.answers[response.status_code] = created.answers.get(response.status_code, 0) + 1
    assert response.status_code < 500, f"{call!r} -> {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and error["code"], response.text
        assert isinstance(error["message"], str) and error["message"], response.text
        return
    if call.template.endswith("/log"):
        return  # a run's output, as text
    answer = response.json()
    if (call.method, call.template) == ("POST", "/v1/loops"):
        created.loops.add(answer["name"])
    elif (call.method, call.template) == ("POST", "/v1/profiles"):
        created.profiles.add(answer["name"])
    elif call.method == "DELETE" and call.template == "/v1/loops/{name}":
        created.loops.discard(answer["removed"])
    elif call.method == "DELETE" and call.template == "/v1/profiles/{name}":
        created.profiles.discard(answer["removed"])


def test_every_route_is_fuzzed() -> None:
    """The strategies above know each route's fields; a route they do not know gets only junk."""
    known_bodies = {("POST", "/v1/loops"), ("POST", "/v1/profiles")}
    for method, template in ROUTES:
        takes_body = method == "POST" and template in ("/v1/loops", "/v1/profiles")
        assert not takes_body or (method, template) in known_bodies
    assert {t for _, t in ROUTES} >= set(QUERIES)
    assert len(ROUTES) >= 22


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_no_request_gets_a_5xx(fuzzed: Fuzzed, data: st.DataObject) -> None:
    call = data.draw(calls(fuzzed.root), label="call")
    response = fuzzed.client.request(
        call.method, call.path, params=call.query, content=call.body, headers={"content-type": "application/json"}
    )
    _check_answer(call, response, fuzzed.created)


def test_after_fuzzing_the_daemon_is_whole(fuzzed: Fuzzed) -> None:
    client, created = fuzzed.client, fuzzed.created
    # The fuzzer reached past validation: some requests succeeded, many were refused.
    assert created.answers.get(201, 0) >= 5 and created.answers.get(400, 0) >= 50, created.answers
    # Up, and every listing still answers (a stored inf or 400-digit number used to break them).
    for path in ("/v1/health", "/v1/loops", "/v1/profiles", "/v1/usage", "/v1/runs?limit=10000", "/v1/events"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
    # Nothing was saved by a refused request.
    assert {lp["name"] for lp in client.get("/v1/loops").json()} <= created.loops
    assert {p["name"] for p in client.get("/v1/profiles").json()} <= created.profiles
    with sqlite3.connect(f"file:{fuzzed.daemon.home / 'fleetd.db'}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    # Bad input is answered, not logged: no traceback, no "internal error".
    log = fuzzed.daemon.log_text()
    assert "Traceback" not in log and "internal error" not in log, log
