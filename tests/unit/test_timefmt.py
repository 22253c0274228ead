from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from fleetd.timefmt import LOCAL_FORMAT, MAX_DURATION_S, DurationError, format_duration, local_text, parse_duration


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


@pytest.mark.parametrize("text", ["1m1m", "1s5h", "30m1h", "1s500ms1s"])
def test_parse_duration_refuses_units_out_of_order_or_repeated(text: str) -> None:
    # Taken as sums (1m1m was 2 minutes): a typo the user meant otherwise.
    with pytest.raises(DurationError, match="units from the largest down, each once"):
        parse_duration(text)
    assert parse_duration("1w2d3h4m5s6ms") == 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5 + 0.006


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (0.25, "250ms"), (12.34, "12.3s"), (2.0, "2s"), (3725, "1h2m"), (90061, "1d1h")]
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


@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Apia"]
)
def test_local_text_is_the_local_format(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """local_text writes LOCAL_FORMAT without strftime: the same text, in any zone, on either side of a change
    of offset (DST in Berlin, a 30-minute one on Lord Howe), to the second."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        moments = [
            start + timedelta(minutes=7 * i, seconds=i % 60, microseconds=999_999 * (i % 2))
            for i in range(0, 80_000, 37)
        ]
        moments += [datetime(999, 5, 1, 12, tzinfo=UTC), datetime(1, 1, 2, tzinfo=UTC)]
        for moment in moments:
            assert local_text(moment) == moment.astimezone().strftime(LOCAL_FORMAT), moment
    finally:
        monkeypatch.undo()
        time.tzset()
