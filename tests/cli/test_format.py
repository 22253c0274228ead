"""`--json` prints json.dumps(answer, indent=2) byte for byte, and a table its local times as local_time writes each,
however the printing is made faster."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetd.cli.common import json_text, laid_out_rows
from fleetd.cli.format import local_time, local_times

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
# Strings that look like the separators the fast path writes and replaces.
TRICKY = st.sampled_from(["},\n    {", '"},\n    {"', "}, {", "\n  },\n  {\n    ", "{", "}", "[]", "\\", '"', "…"])
FLAT_ROW = st.dictionaries(st.text() | TRICKY, SCALARS | TRICKY, min_size=1, max_size=6)


@given(st.lists(FLAT_ROW, max_size=5))
def test_a_list_of_flat_objects_is_written_as_json_dumps_writes_it(rows: list[dict[str, Any]]) -> None:
    assert json_text(rows) == json.dumps(rows, indent=2)


@given(
    st.recursive(
        SCALARS | TRICKY,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text() | TRICKY, inner, max_size=3),
        max_leaves=12,
    )
)
def test_any_other_answer_too(data: Any) -> None:
    assert json_text(data) == json.dumps(data, indent=2)


def test_empty_rows_and_nested_values_take_the_general_path() -> None:
    for data in ([], [{}], [{"a": 1}, {}], [{"a": {"b": 1}}], [{"a": [1, 2]}], [{"a": []}], [1, 2], [[{"a": 1}]]):
        assert json_text(data) == json.dumps(data, indent=2), data


# What SQLite's json_object writes for a run's values: text (anything), integers, NULL and durations (ms / 1000.0).
SQL_VALUES = st.none() | st.integers(-(2**63), 2**63 - 1) | st.text() | TRICKY | st.sampled_from(['":', '\\":', ',"'])
DURATIONS_MS = st.integers(-(10**6), 4 * 10**12)


@given(st.lists(st.tuples(st.lists(SQL_VALUES, min_size=1, max_size=4), DURATIONS_MS), max_size=4))
def test_rows_sqlite_wrote_are_laid_out_as_json_dumps_writes_them(rows: list[tuple[list[Any], int]]) -> None:
    """`runs list --json` prints the daemon's array without decoding it: the same bytes as decoding and json_text;
    None (the CLI decodes it) only for a body where a string's own quote stands beside a `:` or `,`, or a `\\":`
    might end a key."""
    with sqlite3.connect(":memory:") as conn:
        objects = [
            conn.execute(
                "SELECT json_object('id', ?, "
                + ", ".join(f"'k{i}', ?" for i in range(len(values)))
                + ", 'd', ? / 1000.0)",
                (n, *values, ms),
            ).fetchone()[0]
            for n, (values, ms) in enumerate(rows)
        ]
    body = ("[" + ",".join(objects) + "]").encode()
    laid = laid_out_rows(body)
    if laid is None:
        texts = [v for values, _ in rows for v in values if isinstance(v, str)]
        assert any(v.startswith(":") or v.endswith((",", "},{")) or '\\":' in v for v in texts), rows
    else:
        assert laid == json_text(json.loads(body)).encode()


def test_separators_inside_values_are_laid_out_right_or_decoded() -> None:
    """A string's own quotes are not escaped: a value that begins with `:` (`":`) or ends with `,` or `},{` (`,"`,
    `},{"`) looks like a separator. Such a body is left to the decoder; the rest are laid out as separators are."""
    safe = ['":', '":"', "x\\", "", '{"id":1}', "a:b", "a,b", '"', "\\", '"id":', '},{"id":']
    lookalikes = [
        ":",
        ":x",
        "a,",
        ",",
        "},{",
        '\\":',
    ]  # the last as JSON holds `\\\\":`, as the end of a key `a\\` does
    with sqlite3.connect(":memory:") as conn:
        objects = [conn.execute("SELECT json_object('id', ?, 'a', ?, 'b', ?)", (n, v, v)).fetchone()[0]
                   for n, v in enumerate(safe + lookalikes)]  # fmt: skip
    bodies = [f"[{o}]".encode() for o in objects]
    for body in [*bodies[: len(safe)], ("[" + ",".join(objects[: len(safe)]) + "]").encode()]:
        assert laid_out_rows(body) == json_text(json.loads(body)).encode(), body
    for body in [*bodies[len(safe) :], ("[" + ",".join(objects) + "]").encode()]:
        assert laid_out_rows(body) is None, body


def test_a_body_that_is_not_sqlite_s_flat_rows_is_left_to_the_decoder() -> None:
    for body in (b'{"id":1}', b'[{"id":1},{"x":2,"id":3}]', b'[{"id":{"a":1}}]', b'[{"id":[1]}]', b"[1,2]",
                 b'[{"id": 1}]', b'[{"a b":1}]', b'[{"id":1, "a":2}]', b'[{"id":"\xff"}]', b""):  # fmt: skip
        assert laid_out_rows(body) is None, body


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


# Zones with DST (at whole and half UTC hours), half-hour and 45-minute offsets, a half-hour DST step, one whose
# offset was not whole minutes (Monrovia until 1972), and a made-up one whose DST starts and ends 30 s into a minute.
ZONES = ["Europe/Berlin", "America/St_Johns", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe",
         "Africa/Monrovia", "UTC", "XST-1XDT,M3.5.0/2:00:30,M10.5.0/3:00:30"]  # fmt: skip


@pytest.mark.parametrize("name", ZONES)
def test_many_local_times_are_each_local_time(zone: Callable[[str], None], name: str) -> None:
    zone(name)
    isos: list[str | None] = [None, "", "2026-11-30T12:00:00+01:00", "0999-06-01T00:00:00.000+00:00"]
    for start in ("2026-03-29T00:00", "2026-10-25T00:00", "2026-11-01T02:00", "2026-04-05T14:00", "1972-01-06T23:00"):
        first = datetime.fromisoformat(f"{start}:00.000+00:00")
        isos += [(first + timedelta(seconds=s, milliseconds=s % 1000)).isoformat(timespec="milliseconds")
                 for s in range(0, 6 * 3600, 23)]  # fmt: skip
    assert local_times(isos) == [local_time(iso) for iso in isos]


def test_gateway_key_list_writes_a_spend_beside_its_cap_as_the_refusals_do() -> None:
    # The 429 said "$1.63 of its $2.00 daily cost cap" while `gateway key list` said "$1.634 of $2".
    from fleetd.cli.gateway import _keys_text

    keys = [
        {"name": "a", "routes": None, "spent_24h": 1.634, "daily_cost": 2.0, "created_at": "2026-12-01T00:00:00+00:00"},
        {"name": "b", "routes": ["r"], "spent_24h": 0.0276, "daily_cost": 0.03, "created_at": "2026-12-01T00:00:00Z"},
        {"name": "c", "routes": None, "spent_24h": 0.5, "daily_cost": None, "created_at": "2026-12-01T00:00:00Z"},
        {"name": "d", "routes": None, "daily_cost": None, "created_at": "2026-12-01T00:00:00Z"},  # an older daemon's
    ]
    rows = {line.split()[0]: line.split()[2:-3] for line in _keys_text(keys).splitlines()[1:]}  # NAME ROUTES … CREATED
    assert rows["a"] == ["$1.63", "of", "$2.00"]
    assert rows["b"] == ["$0.028", "of", "$0.03"]
    assert rows["c"] == ["$0.50"] and rows["d"] == ["-"]


def test_a_field_of_several_lines_keeps_its_lines_under_its_value() -> None:
    """`runs show` of a run its --verify rejected printed the verify output's second line at column 0, where it
    read as a field of its own."""
    from fleetd.cli.common import fields_text

    text = fields_text([("status", "failed"), ("error", "verify exit 1:\nverify-said-no"), ("exit code", 0)])
    assert text.splitlines() == [
        "status     failed",
        "error      verify exit 1:",
        "           verify-said-no",
        "exit code  0",
    ]
