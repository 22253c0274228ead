"""The reviewer's verdict, found fail-soft in an agent's final message: table-driven, garbage included."""

from __future__ import annotations

import random

import pytest

from fleetd.backends.parsers.verdict import MAX_CANDIDATES, extract_verdict
from fleetd.records.result import Verdict

ACCEPT = Verdict("accept", (), "tests pass")
REJECT = Verdict("reject", ("a test for the empty list", "the README"), "half done")

CASES: dict[str, tuple[object, Verdict | None]] = {
    "bare": ('{"verdict": "accept", "missing": [], "reason": "tests pass"}', ACCEPT),
    "fenced": (
        'Looked at the diff.\n```json\n{"verdict": "reject", "missing": ["a test for the empty list", "the README"],'
        ' "reason": "half done"}\n```\nThat is all.',
        REJECT,
    ),
    "pretty_printed": (
        'Verdict:\n{\n  "verdict": "reject",\n  "missing": [\n    "a test for the empty list",\n    "the README"\n'
        '  ],\n  "reason": "half done"\n}\n',
        REJECT,
    ),
    "prose_around": ('I think {"verdict":"accept","reason":"tests pass"} is fair.', ACCEPT),
    "last_wins": (
        'Draft: {"verdict": "accept", "missing": [], "reason": "x"}\nOn second thought:\n'
        '{"verdict": "reject", "missing": ["a test for the empty list", "the README"], "reason": "half done"}',
        REJECT,
    ),
    "last_wins_over_other_json_after": (
        '{"verdict": "accept", "reason": "tests pass"}\n{"files": 3}\n[1, 2]',
        ACCEPT,
    ),
    "keys_in_any_order": ('{"reason": "tests pass", "missing": [], "verdict": "accept"}', ACCEPT),
    "case_and_space": ('{"verdict": " Accept ", "reason": "tests pass"}', ACCEPT),
    "nested_in_a_wrapper": ('{"review": {"verdict": "accept", "reason": "tests pass"}}', ACCEPT),
    "missing_as_one_string": ('{"verdict": "reject", "missing": "docs"}', Verdict("reject", ("docs",))),
    "missing_odd_items": (
        '{"verdict": "reject", "missing": ["x", 3, {"file": "a.py"}, "  ", ""]}',
        Verdict("reject", ("x", "3", '{"file": "a.py"}')),
    ),
    "missing_wrong_type": ('{"verdict": "reject", "missing": {"a": 1}, "reason": 5}', Verdict("reject")),
    "quoted_braces_in_reason": ('{"verdict": "accept", "reason": "tests pass"} and a stray }{', ACCEPT),
    # no verdict: nothing to read, so never an accept
    "empty": ("", None),
    "none": (None, None),
    "not_text": (b'{"verdict": "accept"}', None),
    "prose_only": ("I accept this work. Verdict: accept.", None),
    "unknown_verdict": ('{"verdict": "maybe", "reason": "unsure"}', None),
    "verdict_not_a_string": ('{"verdict": true}', None),
    "trailing_comma": ('{"verdict": "accept", "missing": [],}', None),
    "single_quotes": ("{'verdict': 'accept'}", None),
    "truncated": ('{"verdict": "accept", "reason": "tests', None),
    "a_list_not_an_object": ('[{"verdict": 1}]', None),
    "deep_nesting": ('{"verdict": ' + "[" * 50_000, None),
    "only_braces": ("{" * 100_000 + "verdict", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_extract_verdict(name: str) -> None:
    text, expected = CASES[name]
    assert extract_verdict(text) == expected


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_give_no_verdict(seed: int) -> None:
    junk = random.Random(seed).randbytes(4096).decode("utf-8", errors="replace")
    assert extract_verdict(junk + '"verdict"') is None


def test_a_verdict_behind_too_many_braces_is_not_searched_for() -> None:
    """Bounded work: the search tries at most MAX_CANDIDATES openings from the end."""
    text = '{"verdict": "accept"}' + "{}" * (MAX_CANDIDATES + 1)
    assert extract_verdict(text) is None
    assert extract_verdict('{"verdict": "accept"}' + "{}" * (MAX_CANDIDATES - 2)) == Verdict("accept")


def test_accepted_and_json() -> None:
    assert ACCEPT.accepted and not REJECT.accepted
    assert REJECT.to_json() == {"verdict": "reject", "missing": ["a test for the empty list", "the README"],
                                "reason": "half done"}  # fmt: skip
