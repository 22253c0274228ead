"""`--json` prints json.dumps(answer, indent=2) byte for byte, however the printing is made faster."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fleetd.cli.common import json_text

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
