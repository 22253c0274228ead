"""Pure fire planning with the clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleetd.errors import InvalidArgument
from fleetd.loops.schedule import Fire, Plan, build_trigger, count_fires, first_fire, following, plan_startup, plan_wake
from fleetd.records.fire import MISSED_CAP
from fleetd.records.loop import Schedule

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
GRACE = timedelta(seconds=60)


def every(expr: str) -> Schedule:
    return Schedule("every", expr, "UTC")


def test_interval_counts_from_creation_and_stays_aligned() -> None:
    trig = build_trigger(every("10m"), T0)
    assert first_fire(trig, T0) == T0 + timedelta(minutes=10)
    # After a restart at an arbitrary moment the grid is the same.
    assert first_fire(trig, T0 + timedelta(minutes=27)) == T0 + timedelta(minutes=30)


def test_cron_in_a_zone() -> None:
    trig = build_trigger(Schedule("cron", "0 2 * * *", "Europe/Stockholm"), T0)
    nxt = first_fire(trig, T0)
    assert nxt is not None and nxt.astimezone(UTC) == datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


def test_one_shot_naive_time_is_in_the_schedule_zone_and_fires_once() -> None:
    trig = build_trigger(Schedule("at", "2026-12-01T09:00", "America/Recife"), T0)
    due = first_fire(trig, T0)
    assert due == datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert following(trig, due, due + timedelta(seconds=1)) is None
    assert first_fire(trig, due + timedelta(seconds=1)) is None  # passed: nothing left


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (Schedule("cron", "0 25 * * *", "UTC"), "invalid cron expression"),
        (Schedule("cron", "* * *", "UTC"), "invalid cron expression"),
        (Schedule("every", "soon", "UTC"), "invalid --every"),
        (Schedule("every", "500ms", "UTC"), "at least 1s"),
        (Schedule("at", "tomorrow", "UTC"), "invalid time"),
        (Schedule("every", "1m", "Nowhere/City"), "unknown time zone"),
    ],
)
def test_bad_schedules(schedule: Schedule, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build_trigger(schedule, T0)


def test_an_interval_saved_before_units_had_an_order_still_fires_but_is_refused_anew() -> None:
    schedule = Schedule("every", "1m1m", "UTC")
    with pytest.raises(InvalidArgument, match="units from the largest down"):
        build_trigger(schedule, T0)
    trigger = build_trigger(schedule, T0, stored=True)  # a daemon start must not drop a loop it ran before
    assert trigger.get_next_fire_time(None, T0) == T0 + timedelta(minutes=2)


def test_startup_not_yet_due_keeps_the_stored_time() -> None:
    trig = build_trigger(every("10m"), T0)
    due = T0 + timedelta(minutes=10)
    assert plan_startup(trig, due, T0 + timedelta(minutes=5), "once") == Plan(None, due)


def test_startup_after_many_missed_fires_runs_one_catch_up() -> None:
    trig = build_trigger(every("10m"), T0)
    due = T0 + timedelta(minutes=10)
    now = T0 + timedelta(hours=5, minutes=3)  # 30 fires missed
    plan = plan_startup(trig, due, now, "once")
    assert plan.fire == Fire(due, "catch-up")
    assert plan.next_fire_at == T0 + timedelta(hours=5, minutes=10)
    assert plan.missed == 30  # the catch-up stands for all of them (its loop.fire_missed event says so)


def test_startup_with_skip_runs_nothing_and_moves_on() -> None:
    trig = build_trigger(every("10m"), T0)
    plan = plan_startup(trig, T0 + timedelta(minutes=10), T0 + timedelta(hours=1, minutes=1), "skip")
    assert plan == Plan(None, T0 + timedelta(hours=1, minutes=10), missed=6)  # 09:10 … 10:00


def test_startup_missed_one_shot() -> None:
    trig = build_trigger(Schedule("at", "2026-11-21T13:00:00+00:00", "UTC"), T0)
    due = T0 + timedelta(hours=1)
    later = T0 + timedelta(hours=3)
    assert plan_startup(trig, due, later, "once") == Plan(Fire(due, "catch-up"), None, missed=1)
    assert plan_startup(trig, due, later, "skip") == Plan(None, None, missed=1)


def test_wake_on_time_fires_on_schedule_and_plans_the_next() -> None:
    trig = build_trigger(every("10m"), T0)
    due = T0 + timedelta(minutes=10)
    plan = plan_wake(trig, due, due + timedelta(milliseconds=3), "skip", GRACE)
    assert plan == Plan(Fire(due, "schedule"), due + timedelta(minutes=10))


def test_wake_early_does_nothing() -> None:
    trig = build_trigger(every("10m"), T0)
    due = T0 + timedelta(minutes=10)
    assert plan_wake(trig, due, due - timedelta(seconds=1), "once", GRACE) == Plan(None, due)


def test_wake_after_suspend_is_a_catch_up_and_never_replays() -> None:
    trig = build_trigger(every("10m"), T0)
    due = T0 + timedelta(minutes=10)
    woke = T0 + timedelta(hours=2, minutes=1)
    after = T0 + timedelta(hours=2, minutes=10)
    assert plan_wake(trig, due, woke, "once", GRACE) == Plan(Fire(due, "catch-up"), after, missed=12)
    assert plan_wake(trig, due, woke, "skip", GRACE) == Plan(None, after, missed=12)


def test_a_late_wake_within_the_grace_fires_and_counts_the_slots_that_passed_meanwhile() -> None:
    # An --every 10s loop whose timer woke 25 s late (a suspended laptop, a loaded host), within the 60 s grace: the
    # due fire runs, the next is the first slot still ahead, and the two passed in between are not lost silently.
    trig = build_trigger(every("10s"), T0)
    due = T0 + timedelta(seconds=10)
    plan = plan_wake(trig, due, due + timedelta(seconds=25), "once", GRACE)
    assert plan == Plan(Fire(due, "schedule"), due + timedelta(seconds=30), missed=3)  # due, +10 s, +20 s
    # Late, but by less than a period: nothing passed.
    assert plan_wake(trig, due, due + timedelta(seconds=9), "once", GRACE).missed == 0
    # A slot exactly at the wake is the next fire, not a passed one.
    assert plan_wake(trig, due, due + timedelta(seconds=20), "once", GRACE) == Plan(
        Fire(due, "schedule"), due + timedelta(seconds=20), missed=2
    )


@pytest.mark.parametrize(
    ("schedule", "first", "now", "count"),
    [
        (every("10m"), T0 + timedelta(minutes=10), T0 + timedelta(minutes=10), 1),  # the due fire itself
        (every("10m"), T0 + timedelta(minutes=10), T0 + timedelta(minutes=39), 3),
        (Schedule("cron", "0 * * * *", "UTC"), T0 + timedelta(hours=1), T0 + timedelta(days=1), 24),
        (every("1s"), T0 + timedelta(seconds=1), T0 + timedelta(days=7), MISSED_CAP),  # counting stops at the cap
    ],
)
def test_count_fires_counts_the_missed_fires_up_to_a_cap(schedule: Schedule, first: datetime, now: datetime,
                                                          count: int) -> None:  # fmt: skip
    assert count_fires(build_trigger(schedule, T0), first, now) == count


def test_following_never_returns_a_past_time() -> None:
    trig = build_trigger(every("1s"), T0)
    fired = T0 + timedelta(seconds=1)
    now = fired + timedelta(seconds=3.5)  # the run took a while to record
    nxt = following(trig, fired, now)
    assert nxt is not None and nxt > now and nxt == T0 + timedelta(seconds=5)


def _cron_weekdays(expr: str, weeks: int = 3) -> set[int]:
    """The weekdays (cron numbering: 0 = Sunday) on which `expr` fires over a few weeks."""
    trig = build_trigger(Schedule("cron", expr, "UTC"), T0)
    days, fire = set(), first_fire(trig, T0)
    while fire is not None and fire < T0 + timedelta(weeks=weeks):
        days.add(fire.isoweekday() % 7)
        fire = following(trig, fire, fire)
    return days


@pytest.mark.parametrize(
    ("dow", "weekdays"),
    [
        ("1", {1}),
        ("0", {0}),
        ("7", {0}),
        ("6", {6}),
        ("1-5", {1, 2, 3, 4, 5}),
        ("0,6", {0, 6}),
        ("6,7", {0, 6}),
        ("5-7", {5, 6, 0}),
        ("0-6", {0, 1, 2, 3, 4, 5, 6}),
        ("*", {0, 1, 2, 3, 4, 5, 6}),
        ("*/2", {0, 2, 4, 6}),
        ("1-5/2", {1, 3, 5}),
        ("1/2", {1, 3, 5, 0}),  # cron reads `a/n` as a-7/n: 1, 3, 5, 7 (Sunday)
        ("1,3-4", {1, 3, 4}),
        ("mon", {1}),
        ("sun", {0}),
        ("mon-fri", {1, 2, 3, 4, 5}),
        ("sat,sun", {6, 0}),
        ("mon,3", {1, 3}),
        ("MON", {1}),
    ],
)
def test_cron_day_of_week_counts_like_cron(dow: str, weekdays: set[int]) -> None:
    """cron counts 0 (and 7) as Sunday; APScheduler 3 counts 0 as Monday, so a weekly job must not move a day."""
    assert _cron_weekdays(f"0 3 * * {dow}") == weekdays


def test_cron_monday_fires_on_the_calendar_monday() -> None:
    trig = build_trigger(Schedule("cron", "0 3 * * 1", "Asia/Tokyo"), T0)  # T0 is Saturday 2026-11-21
    nxt = first_fire(trig, T0)
    assert nxt is not None and nxt.isoformat() == "2026-11-23T03:00:00+09:00"
    assert nxt.strftime("%A") == "Monday"


@pytest.mark.parametrize("dow", ["8", "0-8", "5-1", "*/0", "1-", "funday"])
def test_cron_bad_day_of_week(dow: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid cron expression"):
        build_trigger(Schedule("cron", f"0 3 * * {dow}", "UTC"), T0)


def _fires(expr: str, count: int) -> list[str]:
    trig = build_trigger(Schedule("cron", expr, "UTC"), T0)
    out, fire = [], first_fire(trig, T0)
    while fire is not None and len(out) < count:
        out.append(fire.date().isoformat())
        fire = following(trig, fire, fire)
    return out


def test_cron_day_of_month_and_day_of_week_both_set_fire_on_either() -> None:
    """cron(8): when both day fields are restricted, a day matching either one fires (the 1st of the
    month, or any Monday) — not only Mondays that fall on the 1st."""
    # T0 is Saturday 2026-11-21: Mondays 23 Nov, 30 Nov, 7 Dec; the 1st: 1 Dec.
    assert _fires("0 9 1 * mon", 4) == ["2026-11-23", "2026-11-30", "2026-12-01", "2026-12-07"]


@pytest.mark.parametrize(("expr", "first"), [("0 9 1 * *", "2026-12-01"), ("0 9 * * 1", "2026-11-23"),
                                             ("0 13 */10 * *", "2026-11-21")])  # fmt: skip
def test_cron_one_day_field_restricted_is_read_alone(expr: str, first: str) -> None:
    assert _fires(expr, 1) == [first]


def _between(expr: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """The cron loop's fires in [start, end), in UTC, as the timer meets them (each found from the one before)."""
    trig = build_trigger(Schedule("cron", expr, zone), start)
    out: list[datetime] = []
    fire = first_fire(trig, start)
    while fire is not None and fire < end:
        fire = fire.astimezone(UTC)  # as the store keeps it
        out.append(fire)
        fire = following(trig, fire, fire + timedelta(milliseconds=3))
    return out


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# Europe/Stockholm: 2026-10-25 03:00 CEST goes back to 02:00 CET (01:00 UTC); 2026-03-29 02:00 CET jumps to 03:00
# CEST (01:00 UTC).
STOCKHOLM = "Europe/Stockholm"
AUTUMN = (_utc(2026, 10, 24, 12), _utc(2026, 10, 26, 12))
SPRING = (_utc(2026, 3, 28, 12), _utc(2026, 3, 30, 12))


def _local_days(fires: list[datetime], zone: str) -> list[str]:
    return [f.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M") for f in fires]


# cron(8) (Vixie, cronie) across a clock change of under 3 h: a job whose minute or hour field starts with `*` (a
# "wildcard" job) runs by the wall clock, in both passes of a repeated hour and not for skipped times; any other job
# ("fixed time") runs once in a repeated hour and, for a skipped time, once as the clocks jump.


def test_a_fixed_time_in_the_repeated_hour_fires_once_as_cron_runs_it() -> None:
    # `30 2 * * *` fired at 02:30 CEST and again at 02:30 CET, an hour later, on the day the clocks go back.
    assert _between("30 2 * * *", STOCKHOLM, *AUTUMN) == [_utc(2026, 10, 25, 0, 30), _utc(2026, 10, 26, 1, 30)]
    assert _between("0,20,40 2 * * *", STOCKHOLM, *AUTUMN)[:4] == [
        _utc(2026, 10, 25, 0, 0), _utc(2026, 10, 25, 0, 20), _utc(2026, 10, 25, 0, 40), _utc(2026, 10, 26, 1, 0)
    ]  # fmt: skip
    trig = build_trigger(Schedule("cron", "30 2 * * *", "Europe/Stockholm"), AUTUMN[0])
    assert count_fires(trig, _utc(2026, 10, 25, 0, 30), _utc(2026, 10, 26, 0)) == 1


def test_a_wildcard_job_fires_in_both_passes_of_the_repeated_hour() -> None:
    fires = _between("30 * * * *", STOCKHOLM, _utc(2026, 10, 24, 23), _utc(2026, 10, 25, 3))
    assert fires == [_utc(2026, 10, 24, 23, 30), _utc(2026, 10, 25, 0, 30), _utc(2026, 10, 25, 1, 30),
                     _utc(2026, 10, 25, 2, 30)]  # fmt: skip
    trig = build_trigger(Schedule("cron", "30 * * * *", "Europe/Stockholm"), AUTUMN[0])
    first = first_fire(trig, _utc(2026, 10, 24, 23))
    assert first is not None and count_fires(trig, first, _utc(2026, 10, 25, 3)) == 4  # counted 2: a wall time repeats
    assert _between("*/20 2 * * *", STOCKHOLM, *AUTUMN)[:7] == [  # a star minute makes it a wildcard job
        _utc(2026, 10, 25, 0, 0), _utc(2026, 10, 25, 0, 20), _utc(2026, 10, 25, 0, 40),
        _utc(2026, 10, 25, 1, 0), _utc(2026, 10, 25, 1, 20), _utc(2026, 10, 25, 1, 40), _utc(2026, 10, 26, 1, 0),
    ]  # fmt: skip


def test_a_fixed_time_the_clocks_skip_fires_once_at_the_jump() -> None:
    # It fired an hour after its time; several skipped times, each apart; some not at all.
    assert _between("30 2 * * *", STOCKHOLM, *SPRING) == [_utc(2026, 3, 29, 1, 0), _utc(2026, 3, 30, 0, 30)]
    assert _between("0,15,30,45 2 * * *", STOCKHOLM, *SPRING)[:2] == [_utc(2026, 3, 29, 1, 0), _utc(2026, 3, 30, 0)]
    assert _local_days(_between("30 1,2 * * *", STOCKHOLM, *SPRING), STOCKHOLM) == [
        "03-29 01:30", "03-29 03:00", "03-30 01:30", "03-30 02:30"
    ]  # fmt: skip  # 02:30 was lost
    # A time after the jump is not moved; a wildcard job has no fire in the skipped hour.
    assert _between("30 3 * * *", STOCKHOLM, *SPRING) == [_utc(2026, 3, 29, 1, 30), _utc(2026, 3, 30, 1, 30)]
    fires = _between("30 * * * *", STOCKHOLM, _utc(2026, 3, 28, 23), _utc(2026, 3, 29, 3))
    assert fires == [_utc(2026, 3, 28, 23, 30), _utc(2026, 3, 29, 0, 30), _utc(2026, 3, 29, 1, 30),
                     _utc(2026, 3, 29, 2, 30)]  # fmt: skip
    assert _local_days(_between("0 */2 * * *", STOCKHOLM, _utc(2026, 3, 28, 22), _utc(2026, 3, 29, 3)), STOCKHOLM) == [
        "03-29 00:00", "03-29 04:00"
    ]  # fmt: skip  # it fired at 03:00 CEST, off its grid
    assert _between("*/15 2 * * *", STOCKHOLM, *SPRING)[:1] == [_utc(2026, 3, 30, 0)]


@pytest.mark.parametrize(
    ("zone", "start", "days"),
    [
        ("Europe/Stockholm", _utc(2026, 3, 27, 12), ["03-28", "03-29", "03-30", "03-31"]),
        ("America/New_York", _utc(2026, 3, 6, 12), ["03-07", "03-08", "03-09", "03-10"]),
        ("Australia/Sydney", _utc(2026, 10, 2, 12), ["10-03", "10-04", "10-05", "10-06"]),
        # Clocks that jump at midnight: the day's midnight does not exist, and it fires as they jump, at 01:00.
        ("America/Santiago", _utc(2026, 9, 4, 12), ["09-05", "09-06", "09-07", "09-08"]),
        ("America/Havana", _utc(2026, 3, 6, 12), ["03-07", "03-08", "03-09", "03-10"]),
    ],
)
def test_a_daily_job_fires_every_day_across_the_spring_change(zone: str, start: datetime, days: list[str]) -> None:
    # `0 0 * * *` found each fire from the one before, as the timer does, and lost the day after the change.
    fires = _between("0 0 * * *", zone, start, start + timedelta(days=4))
    assert [day[:5] for day in _local_days(fires, zone)] == days


def test_a_half_hour_change_is_a_change_too() -> None:
    # Australia/Lord_Howe goes from +10:30 to +11 at 02:00 on 2026-10-04: 02:00-02:29 do not exist.
    zone = "Australia/Lord_Howe"
    fires = _local_days(_between("0 1,2 * * *", zone, _utc(2026, 10, 2, 12), _utc(2026, 10, 5, 0)), zone)
    assert fires == ["10-03 01:00", "10-03 02:00", "10-04 01:00", "10-04 02:30", "10-05 01:00", "10-05 02:00"]
