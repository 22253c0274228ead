from __future__ import annotations

import pytest

from fleetd.timefmt import MAX_DURATION_S, DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("2d", 172800), ("45", 45), ("1w", 604800),
     ("500ms", 0.5), ("1.5h", 5400), (" 10M ", 600)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10 parsecs", "1h 30m", "-5s", "0", "1x", "h1"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (0.25, "250ms"), (12.34, "12.3s"), (3725, "1h2m"), (90061, "1d1h")]
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["9" * 400, "99999999999w", "101y", f"{100 * 365 + 1}d", "٣s"])
def test_parse_duration_refuses_what_cannot_be_stored(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


def test_parse_duration_bound_is_100_years() -> None:
    assert parse_duration(f"{100 * 365}d") == MAX_DURATION_S
    with pytest.raises(DurationError, match="too long"):
        parse_duration(f"{MAX_DURATION_S + 1}")
