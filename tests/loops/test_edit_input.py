"""Editing a loop is its `loop add` input with the changes over it, validated again: the input must give the
same loop back, and the changes must replace what they say they replace. Pure, table-driven."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fleetd.backends.registry import routed_backends
from fleetd.errors import InvalidArgument, NoProfile
from fleetd.loops.model import edited_input, loop_input, validate_loop_input
from fleetd.loops.service import check_profiles
from fleetd.records.loop import Loop, Schedule
from fleetd.records.profile import Profile
from fleetd.routing.policy import apply_routing_input

PROFILES = [
    Profile("cc", "claude_code", "subscription", "/p/cc"),
    Profile("cx", "codex", "metered", "/p/cx", has_secret=True),
    Profile("llm", "openai_compat", "local", "/p/llm", base_url="http://127.0.0.1:8080/v1"),
]


def define(body: dict[str, Any], profiles: list[Profile] = PROFILES) -> Loop:
    """What `LoopService.define` does, but the profile check: validation in full."""
    loop = validate_loop_input(body, "Europe/Stockholm")
    apply_routing_input(body, loop, profiles, routed_backends())
    return loop


def definition(loop: Loop) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(loop).items() if not k.endswith("_at")}


@pytest.mark.parametrize(
    "body",
    [
        {
            "every": "10m",
            "command": "echo hi",
            "env": ["A=1", "B=x=y"],
            "timeout": "1h30m",
            "catch_up": "skip",
            "output_cap": 4096,
            "enabled": False,
        },
        {"cron": "0 2 * * 1-5", "timezone": "UTC", "command": "true", "prompt": "stdin text", "timeout": "0.25"},
        {
            "at": "2031-01-01T09:00",
            "backend": "claude_code",
            "prompt": "fix",
            "profiles": "cc",
            "model": "opus",
            "agent_args": ["--verbose", "x y"],
        },
        {
            "every": "1h",
            "chain": "llm@qwen,claude_code@sonnet,cx",
            "tiers": "local,subscription,metered",
            "max_cost": "2.5",
            "max_tokens": "2M",
            "daily_cost": 10,
            "on_exhausted": "wait",
            "verify": "make test",
            "verify_timeout": "90s",
            "review": "codex@mini",
            "repair": 2,
            "prompt": "p",
        },
    ],
)
def test_the_input_of_a_loop_defines_the_same_loop(body: dict[str, Any], tmp_path: Path) -> None:
    body = {"name": "l", "dir": str(tmp_path), **body}
    loop = define(body)
    assert definition(define(loop_input(loop))) == definition(loop)


# What a change touches besides the fields it names (the test's expectations say how).
CHANGED_BY = {"cron": ("schedule",), "timezone": ("schedule",), "clear": ("timeout_s",)}
BASE = {"name": "l", "every": "1h", "backend": "claude_code", "prompt": "p", "profiles": "cc", "model": "opus"}


@pytest.mark.parametrize(
    ("base", "changes", "expect"),
    [
        # a new schedule replaces the old one, whatever its kind
        (BASE, {"cron": "0 3 * * *"}, {"schedule": Schedule("cron", "0 3 * * *", "Europe/Stockholm")}),
        (BASE, {"timezone": "UTC"}, {"schedule": Schedule("every", "1h", "UTC")}),
        # a prompt file replaces the prompt (and the other way round)
        (BASE, {"prompt_file": "/etc/hostname"}, {"prompt": None, "prompt_file": "/etc/hostname"}),
        # a chain replaces the one-step form, and a backend replaces the chain with its pool and model
        (
            BASE,
            {"chain": "cx"},
            {"chain": [("codex", ("cx",), None)], "profiles": [], "model": None, "backend": "codex"},
        ),
        (
            {**BASE, "profiles": None, "model": None, "chain": "cc,cx"},
            {"backend": "codex", "tiers": "metered"},
            {"chain": [], "backend": "codex", "profiles": [], "tiers": ("metered",)},
        ),
        (
            {**BASE, "profiles": None, "model": None, "chain": "cc,cx"},
            {"profiles": "cc", "backend": "claude_code"},
            {"chain": [], "profiles": ["cc"]},
        ),
        # what is cleared goes back to what `loop add` assumes
        (
            {**BASE, "max_cost": 3, "tiers": "metered", "timeout": "5m", "env": ["A=1"]},
            {"clear": ["max_cost", "tiers", "timeout", "env", "model"]},
            {"max_cost": None, "tiers": ("local", "subscription"), "timeout_s": None, "env": {}, "model": None},
        ),
        # a repeatable option replaces the whole list
        ({**BASE, "agent_args": ["a", "b"]}, {"agent_args": ["c"]}, {"agent_args": ["c"]}),
    ],
)
def test_changes_replace_what_they_say(base: dict[str, Any], changes: dict[str, Any], expect: dict[str, Any]) -> None:
    before = define({k: v for k, v in base.items() if v is not None})
    after = define(edited_input(before, changes))
    for key, value in expect.items():
        got = getattr(after, key)
        if key == "chain":
            got = [(s.backend, s.profiles, s.model) for s in got]
        assert got == value, key
    for key, value in definition(before).items():  # everything else is as it was
        if key not in expect and key not in CHANGED_BY.get(next(iter(changes)), ()):
            assert definition(after)[key] == value, key


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"clear": ["cron"]}, "cannot clear 'cron'"),
        ({"clear": ["backend"]}, "cannot clear 'backend'"),
        ({"clear": "dir"}, "clear must be a list"),
        ({"colour": "red"}, "cannot edit 'colour'"),
        ({"name": "other"}, "cannot be renamed"),
        ({"model": "x", "clear": ["model"]}, "model is both given and cleared"),
    ],
)
def test_an_edit_that_cannot_apply_is_refused(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        edited_input(define(BASE), changes)


@pytest.mark.parametrize(
    ("body", "profiles", "fragment"),
    [
        (
            {"backend": "gemini"},
            PROFILES,
            "no gemini profile: add one with `fleetd profile add NAME --backend gemini`, "
            "then `fleetd profile login NAME`",
        ),
        (
            {"backend": "aider", "model": "m"},
            [Profile("ai", "aider", "subscription", "/p/ai")],
            "no aider profile can authenticate: ai: no API key: add one with `fleetd profile set-key ai",
        ),
        (
            {"chain": "remote"},
            [Profile("remote", "openai_compat", "metered", "/p/r", base_url="https://x.example/v1")],
            "remote: no API key (its --base-url is not on this host)",
        ),
        ({"backend": "claude_code", "review": "codex"}, [PROFILES[0]], "no codex profile: add one with"),
        (
            {"backend": "openai_compat"},
            [],
            "no openai_compat profile: add one with `fleetd profile add NAME --backend openai_compat --base-url URL`",
        ),
    ],
)
def test_an_agent_loop_no_profile_can_run_is_refused_with_the_fix(
    body: dict[str, Any], profiles: list[Profile], fragment: str
) -> None:
    loop = define({"name": "l", "every": "1h", "prompt": "p", **body}, profiles)
    with pytest.raises(NoProfile) as refused:
        check_profiles(loop, profiles)
    assert fragment in refused.value.message and refused.value.status == 409


@pytest.mark.parametrize(
    "body",
    [
        {"backend": "command", "command": "true"},
        {"backend": "openai_compat", "profiles": "llm"},  # local: no key needed
        {"backend": "claude_code"},  # a login cannot be checked here: a login profile counts
        {"chain": "llm,cx", "review": "claude_code"},
    ],
)
def test_a_loop_with_a_profile_for_every_step_passes(body: dict[str, Any]) -> None:
    check_profiles(define({"name": "l", "every": "1h", "prompt": "p", **body}), PROFILES)


def test_a_reviewer_backend_whose_every_profile_is_outside_the_tiers_is_refused_as_a_chain_step_is() -> None:
    # `--review codex` under the default tiers was saved; every run then did the work, paid, and failed at the review.
    body = {"name": "rev", "every": "1h", "chain": "llm", "prompt": "x", "review": "codex"}
    with pytest.raises(InvalidArgument, match=r"no codex profile is in the tiers local,subscription .*--review"):
        define(body)
    assert define({**body, "tiers": "local,subscription,metered"}).review is not None
    assert define({**body, "review": "cx"}).review is not None  # named: the tiers pass it, as in --chain
