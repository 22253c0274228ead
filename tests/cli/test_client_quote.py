"""The CLI's own percent-encoding (it skips importing urllib.parse) says what urllib.parse.quote says."""

from __future__ import annotations

from urllib.parse import quote as urllib_quote

from hypothesis import given
from hypothesis import strategies as st

from fleetd.cli.client import quote

TEXT = st.text(st.characters(blacklist_categories=["Cs"]))  # urllib refuses lone surrogates outright


@given(TEXT)
def test_quote_matches_urllib_with_nothing_safe(value: str) -> None:
    assert quote(value) == urllib_quote(value, safe="")
