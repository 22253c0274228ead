"""Editing a profile is its `profile add` input with the changes over it, validated again in full; how a
profile authenticates is its adapter's answer. Pure, table-driven."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fleetd.backends.registry import get_adapter
from fleetd.errors import InvalidArgument
from fleetd.profiles.model import edited_profile_input, profile_input, validate_profile_input
from fleetd.records.profile import Profile

DIR = Path("/p")


def define(body: dict[str, Any]) -> Profile:
    return validate_profile_input(body, DIR)[0]


@pytest.mark.parametrize(
    "body",
    [
        {"backend": "codex", "limits": ["5h=4000000tok", "90m=7req", "30d=50.5usd", "1d2h3m=1ktok"]},
        {"backend": "openai_compat", "base_url": "http://127.0.0.1:8080/v1", "model": "qwen", "price_input": 0.25,
         "price_output": 1, "price_cache_read": 0.0, "default_reset": "1m30s", "daily_cost": "2.5"},
        {"backend": "aider", "tier": "metered", "config_dir": "/somewhere/else"},
    ],
)  # fmt: skip
def test_the_input_of_a_profile_defines_the_same_profile(body: dict[str, Any]) -> None:
    profile = define({"name": "p", **body})
    assert dataclasses.asdict(define(profile_input(profile))) == dataclasses.asdict(profile)


def test_changes_replace_and_clear() -> None:
    before = define({"name": "p", "backend": "codex", "limits": ["5h=10req", "1d=20req"], "model": "m",
                     "price_input": 2})  # fmt: skip
    after = define(edited_profile_input(before, {"limits": ["1h=1req"], "clear": ["model", "price_input"]}))
    assert [lim.describe() for lim in after.limits] == ["1h=1req"]
    assert (after.model, after.price_input, after.tier, after.config_dir) == (None, None, "subscription", "/p/p")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"backend": "aider"}, "cannot edit 'backend'"),
        ({"config_dir": "/x"}, "cannot edit 'config_dir'"),
        ({"api_key": "sk-x"}, "profile set-key"),
        ({"name": "q"}, "cannot be renamed"),
        ({"clear": ["tier"]}, "cannot clear 'tier'"),
        ({"model": "m", "clear": ["model"]}, "both given and cleared"),
    ],
)
def test_an_edit_that_cannot_apply_is_refused(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        edited_profile_input(define({"name": "p", "backend": "codex"}), changes)


@pytest.mark.parametrize(
    ("backend", "has_secret", "base_url", "problem", "hint"),
    [
        ("claude_code", False, None, None, "log in with `fleetd profile login p`"),
        ("claude_code", True, None, None, None),
        ("aider", False, None, "no API key", "no API key: add one with `fleetd profile set-key p --api-key-stdin"),
        ("aider", True, None, None, None),
        ("openai_compat", False, "http://127.0.0.1:11434/v1", None, None),
        ("openai_compat", False, "http://localhost:8000", None, None),
        ("openai_compat", False, "https://api.example/v1", "no API key (its --base-url is not on this host)",
         "not on this host): add one with `fleetd profile set-key p"),
        ("openai_compat", True, "https://api.example/v1", None, None),
    ],
)  # fmt: skip
def test_each_adapter_says_what_its_profiles_need_to_authenticate(
    backend: str, has_secret: bool, base_url: str | None, problem: str | None, hint: str | None
) -> None:
    adapter = get_adapter(backend)
    profile = Profile("p", backend, "local", "/p/p", base_url=base_url, has_secret=has_secret)
    assert adapter.auth_problem(profile) == problem
    got = adapter.auth_hint(profile)
    assert (got is None) if hint is None else (got is not None and hint in got)
    assert "login" not in (got or "") or adapter.login_argv(profile) is not None  # never a login that does not exist
