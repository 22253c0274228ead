"""The event types, defined once: what `--on` accepts, what a hook receives, and that every type the
code emits is in the table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fleetd.errors import InvalidArgument
from fleetd.records.event import EVENT_TYPES, matches, parse_patterns
from fleetd.records.run import STATUSES

FLEETD = Path(__file__).resolve().parents[2] / "fleetd"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("run.failed", ("run.failed",)),
        ("run.failed, circuit.opened,profile.exhausted", ("run.failed", "circuit.opened", "profile.exhausted")),
        ("run.*", ("run.*",)),
        ("*", ("*",)),
        ("run.failed,run.failed", ("run.failed",)),
    ],
)
def test_on_accepts_types_families_and_star(text: str, parsed: tuple[str, ...]) -> None:
    assert parse_patterns(text) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("run.exploded", "unknown event type 'run.exploded'"),
        ("nope.*", "unknown event family"),
        ("", "at least one"),
        (" , ", "at least one"),
        ("hook.failed", "hook events are not delivered to hooks"),
        ("hook.*", "hook events are not delivered to hooks"),
        ("run", "unknown event type"),
        ("run.**", "unknown event type"),
    ],
)
def test_on_refuses_what_no_event_can_match(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(fragment)):
        parse_patterns(text)


@pytest.mark.parametrize(
    ("patterns", "event_type", "delivered"),
    [
        (("run.failed",), "run.failed", True),
        (("run.failed",), "run.succeeded", False),
        (("run.*",), "run.timed_out", True),
        (("run.*",), "profile.exhausted", False),
        (("*",), "circuit.opened", True),
        (("*",), "hook.failed", False),  # no recursion: not even `*` receives a hook's own failure
        (("*",), "hook.test", False),
    ],
)
def test_matches(patterns: tuple[str, ...], event_type: str, delivered: bool) -> None:
    assert matches(patterns, event_type) is delivered


def test_every_event_type_the_code_emits_is_defined() -> None:
    """A type emitted but missing from EVENT_TYPES could never be subscribed to."""
    pattern = re.compile(r"(run|loop|profile|circuit|budget|candidate|hook)\.[a-z_]+")
    found = set()
    for path in FLEETD.rglob("*.py"):
        if path.name == "event.py" or "cli" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.fullmatch(node.value):
                found.add(node.value)
    emitted = {"loop.fire_skipped", "loop.fire_missed", "profile.exhausted", "circuit.opened", "hook.failed"}
    assert emitted <= found  # the scan sees the emitters
    assert found - set(EVENT_TYPES) == set()


def test_every_run_status_has_its_event_type() -> None:
    """Run events are `run.<status>` (`run.started` for running), built from the status, not written out."""
    for status in STATUSES:
        if status != "skipped":  # a skipped fire is `loop.fire_skipped`
            assert ("run.started" if status == "running" else f"run.{status}") in EVENT_TYPES


def test_the_families_an_unknown_one_is_told_of_are_those_a_hook_may_name() -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_patterns("nope.*")
    assert "run.*" in refused.value.message and "hook.*" not in refused.value.message  # hook.* is refused
