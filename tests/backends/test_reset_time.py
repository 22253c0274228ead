"""Every reset-time form in agent-clis.md, resolved against a fixed clock and zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.reset_time import (
    epoch_to_datetime,
    parse_duration_seconds,
    parse_reset_time,
    parse_retry_after,
)

# Tuesday 2026-03-10 12:00 UTC = 13:00 in Berlin (CET), 05:00 in Los Angeles (PDT since Mar 8).
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


CLAUDE_FORMS = [
    # ≤ 1.0.8x: literal pipe + unix seconds
    ("Claude AI usage limit reached|1751234400", utc(2025, 6, 29, 22, 0)),
    ("Claude AI usage limit reached|1750708800", utc(2025, 6, 23, 20, 0)),
    # the UI rendering of the same era
    ("Claude usage limit reached. Your limit will reset at 3pm (America/Bogota).", utc(2026, 3, 10, 20, 0)),
    # 1.0.89 to 1.0.119: no zone → default zone; 3am already passed today in Berlin → tomorrow
    ("5-hour limit reached ∙ resets 3am", utc(2026, 3, 11, 2, 0)),
    # 2.0.55
    (
        "5-hour limit reached · resets 3pm (Europe/Stockholm) · /upgrade to Max 20x or turn on /extra-usage",
        utc(2026, 3, 10, 14, 0),
    ),
    (
        "Weekly limit reached · resets 10am (Asia/Seoul) · /upgrade to Max or turn on /extra-usage",
        utc(2026, 3, 11, 1, 0),
    ),
    # 2.1.x
    ("You've hit your limit · resets 4:50am (Europe/Rome)", utc(2026, 3, 11, 3, 50)),
    ("You've hit your limit · resets Apr 23 at 4pm (America/Recife)", utc(2026, 4, 23, 19, 0)),
    # Feb 20 is already past in 2026 → next year's
    ("You've hit your limit · resets Feb 20, 5pm (Africa/Libreville)", utc(2027, 2, 20, 16, 0)),
    ("You've hit your limit · resets 1pm (Europe/Lisbon)", utc(2026, 3, 10, 13, 0)),
    # 2.1.2xx
    ("You've hit your session limit · resets 12:50am (America/Los_Angeles)", utc(2026, 3, 11, 7, 50)),
    ("You've hit your weekly limit · resets Jul 31, 2am (UTC)", utc(2026, 7, 31, 2, 0)),
    ("You've hit your weekly limit · resets Sep 15 at 7pm", utc(2026, 9, 15, 17, 0)),
    ("You're out of extra usage · resets 1pm (America/Los_Angeles)", utc(2026, 3, 10, 20, 0)),
    # exactly now in Helsinki: the reset is the next occurrence, tomorrow
    ("You've hit your session limit · resets 2pm (Europe/Helsinki)", utc(2026, 3, 11, 12, 0)),
    # transcript / stream-json epochs beat the prose next to them
    (
        '{"text":"You\'ve hit your session limit · resets 2pm (Europe/Helsinki)",'
        '"quotaLimits":{"status":"rejected","resetsAt":1790161200,"rateLimitType":"five_hour"}}',
        utc(2026, 9, 23, 11, 0),
    ),
]

CODEX_FORMS = [
    ("You've hit your usage limit. Try again at 3:28 PM.", utc(2026, 3, 10, 14, 28)),
    (
        "You've hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
        "https://chatgpt.com/codex/settings/usage to purchase more credits or try again at "
        "Aug 8th, 2026 12:30 PM.",
        utc(2026, 8, 8, 10, 30),
    ),
    (
        "You've hit your usage limit for GPT-5-Codex-Mini. Switch to another model now, or try again at 11:05 AM.",
        utc(2026, 3, 11, 10, 5),
    ),
    (
        "You've hit your usage limit. To get more access now, send a request to your admin or try again at "
        "Jan 1st, 2027 9:00 AM.",
        utc(2027, 1, 1, 8, 0),
    ),
    # a date alone: the start of that day
    ("You've hit your usage limit. Try again Aug 18.", utc(2026, 8, 17, 22, 0)),
    # backend 429 body: the absolute epoch wins over the relative seconds
    (
        '{"error":{"type":"usage_limit_reached","plan_type":"plus","resets_at":1773162000,"resets_in_seconds":60}}',
        utc(2026, 3, 10, 17, 0),
    ),
    ('{"error":{"type":"usage_limit_reached","resets_in_seconds":3600}}', utc(2026, 3, 10, 13, 0)),
    ("x-codex-primary-reset-at: 1776394093", utc(2026, 4, 17, 2, 48, 13)),
    ("x-codex-secondary-reset-after-seconds: 600", utc(2026, 3, 10, 12, 10)),
]

RELATIVE_FORMS = [
    ("try again in 2 days 3 hours 5 minutes", NOW + timedelta(days=2, hours=3, minutes=5)),
    ("Please try again in 45 seconds.", NOW + timedelta(seconds=45)),
    (
        "Please try again in 1 hour, 30 minutes and 10 seconds",
        NOW + timedelta(hours=1, minutes=30, seconds=10),
    ),
    (
        "Rate limit reached for gpt-4o on requests per min. Please try again in 6m0s.",
        NOW + timedelta(minutes=6),
    ),
    ("Rate limit reached on tokens per min. Please try again in 20ms.", NOW + timedelta(milliseconds=20)),
    ("Please try again in 1.5s. Visit https://platform.openai.com", NOW + timedelta(seconds=1.5)),
    (
        "Quota exceeded for metric … limit: 2\nPlease retry in 54.887755558s.",
        NOW + timedelta(seconds=54.887755558),
    ),
    (
        "Resource has been exhausted (e.g. check quota). (fake)\nSuggested retry after 1s.",
        NOW + timedelta(seconds=1),
    ),
    ('"retryDelay": "54s"', NOW + timedelta(seconds=54)),
    ("retryDelayMs: 1000,", NOW + timedelta(seconds=1)),
    ("retry-after: 30", NOW + timedelta(seconds=30)),
    ("Retry-After: Wed, 11 Mar 2026 07:28:00 GMT", utc(2026, 3, 11, 7, 28)),
    ("retry-after-ms: 1500", NOW + timedelta(milliseconds=1500)),
    ("anthropic-ratelimit-requests-reset: 2026-03-10T12:34:56Z", utc(2026, 3, 10, 12, 34, 56)),
]

OTHER_FORMS = [
    ("Usage limit reached for gemini-2.5-pro. Access resets at 5:00 PM.", utc(2026, 3, 10, 16, 0)),
    ("resets 3:30 p.m. (UTC)", utc(2026, 3, 10, 15, 30)),
    ("resets 14:30 (UTC)", utc(2026, 3, 10, 14, 30)),
    ("resets March 12 at 9am (UTC)", utc(2026, 3, 12, 9, 0)),
    # an unknown zone falls back to the default zone rather than losing the time
    ("resets 3pm (Mars/Olympus_Mons)", utc(2026, 3, 10, 14, 0)),
    # next Feb 29 after March 2026
    ("resets Feb 29 at 1am (UTC)", utc(2028, 2, 29, 1, 0)),
]


@pytest.mark.parametrize(("text", "expected"), CLAUDE_FORMS + CODEX_FORMS + RELATIVE_FORMS + OTHER_FORMS)
def test_documented_forms_resolve_exactly(text: str, expected: datetime) -> None:
    found = parse_reset_time(text, NOW, BERLIN)
    assert found is not None and found.tzinfo is not None
    assert found == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Try again later.",
        "You've hit your usage limit. To get more access now, send a request to your admin or try again later.",
        "API Error: Rate limit reached",
        "Retrying in 0.2 seconds...",  # aider's own back-off, not a reset
        "resets 10 minutes",  # a bare number is no time of day
        "resets 25pm",
        "resets 7:75am",
        "resets Feb 30 at 4pm (UTC)",
        "Claude AI usage limit reached|123",  # not a plausible epoch
        "resets_at: 99999999999999999",
        "\x00\xff\ufffd resets \ufffd",
        "try again in a moment",
    ],
)
def test_no_reset_time_gives_none(text: str) -> None:
    assert parse_reset_time(text, NOW, BERLIN) is None


@pytest.mark.parametrize("junk", [None, 12, b"resets 3pm", ["resets 3pm"]])
def test_non_text_gives_none_without_raising(junk: object) -> None:
    assert parse_reset_time(junk, NOW, BERLIN) is None  # type: ignore[arg-type]


def test_time_inside_a_dst_gap_becomes_a_real_instant() -> None:
    # 2026-03-29 02:30 does not exist in Berlin (clocks jump 02:00 → 03:00).
    now = utc(2026, 3, 28, 12, 0)
    assert parse_reset_time("resets 2:30am (Europe/Berlin)", now, UTC) == utc(2026, 3, 29, 1, 30)


def test_date_without_year_rolls_over_new_year() -> None:
    now = utc(2026, 12, 31, 18, 0)
    assert parse_reset_time("resets Jan 2 at 9am (UTC)", now, BERLIN) == utc(2027, 1, 2, 9, 0)


def test_same_day_date_later_today_stays_this_year() -> None:
    assert parse_reset_time("resets Mar 10 at 5pm (UTC)", NOW, BERLIN) == utc(2026, 3, 10, 17, 0)


def test_naive_now_is_read_in_the_default_zone() -> None:
    naive = datetime(2026, 3, 10, 13, 0)  # 13:00 Berlin = NOW
    assert parse_reset_time("try again at 3:28 PM", naive, BERLIN) == utc(2026, 3, 10, 14, 28)


def test_default_zone_decides_times_without_a_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")  # 21:00 local → 3:28 PM is tomorrow there
    assert parse_reset_time("try again at 3:28 PM", NOW, tokyo) == utc(2026, 3, 11, 6, 28)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("30", 30.0),
        ("1h2m3s", 3723.0),
        ("2 days 3 hours", 183600.0),
    ],
)
def test_duration_forms(text: str, seconds: float) -> None:
    assert parse_duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "6 parsecs", "1s and then some"])
def test_bad_durations(text: str) -> None:
    assert parse_duration_seconds(text) is None


def test_retry_after_http_date_and_junk() -> None:
    assert parse_retry_after("Wed, 11 Mar 2026 07:28:00 GMT", NOW) == utc(2026, 3, 11, 7, 28)
    assert parse_retry_after("120", NOW) == NOW + timedelta(minutes=2)
    assert parse_retry_after("tomorrow-ish", NOW) is None


def test_epoch_to_datetime_accepts_seconds_and_millis_only_when_plausible() -> None:
    assert epoch_to_datetime(1790161200) == utc(2026, 9, 23, 11, 0)
    assert epoch_to_datetime(1790161200000) == utc(2026, 9, 23, 11, 0)
    assert epoch_to_datetime("1790161200") == utc(2026, 9, 23, 11, 0)
    assert epoch_to_datetime(True) is None
    assert epoch_to_datetime(42) is None
    assert epoch_to_datetime(float("nan")) is None
    assert epoch_to_datetime("soon") is None
