"""Schedules as APScheduler triggers, and the pure decisions of when a loop fires.

APScheduler is used for its trigger arithmetic only; fleetd keeps each loop's next fire time in
its own database and decides catch-up itself, so a restart never depends on a pickled job store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from fleetd.errors import InvalidArgument
from fleetd.records.fire import MISSED_CAP
from fleetd.records.loop import CatchUp, Schedule
from fleetd.timefmt import DurationError, parse_duration

TriggerKind = Literal["schedule", "manual", "catch-up"]


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(f"unknown time zone {name!r}") from None


def parse_at(expr: str, tz: ZoneInfo) -> datetime:
    try:
        when = datetime.fromisoformat(expr)
    except ValueError:
        raise InvalidArgument(f"invalid time {expr!r}: use ISO 8601, e.g. 2026-12-01T09:00") from None
    when = when if when.tzinfo else when.replace(tzinfo=tz)
    try:
        when.astimezone(UTC)  # fleetd stores UTC: the calendar's very edges cannot be converted
    except OverflowError:
        raise InvalidArgument(f"invalid time {expr!r}: out of range") from None
    return when


# cron counts the days of the week from Sunday, as 0 or 7; APScheduler 3 counts 0 as Monday (its
# documented historical mistake). Both read the names alike, so numbers become names.
_WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NUMERIC_DOW = re.compile(r"(?:(\*)|(\d+)(?:-(\d+))?)(?:/(\d+))?")


def _cron_day_of_week(field: str) -> str:
    """cron's day-of-week field in APScheduler's terms: each numeric part (`1`, `1-5`, `*/2`, `1/2`)
    becomes the list of day names it selects; names and anything unrecognised pass through, for
    APScheduler to read or refuse."""
    parts = []
    for part in field.split(","):
        m = _NUMERIC_DOW.fullmatch(part)
        if m is None:
            parts.append(part)
            continue
        star, first, last, step = m.groups()
        # As cron reads them: `*` and `a/n` run to 7, `a` alone is just a.
        low = 0 if star else int(first)
        high = 7 if star or (last is None and step) else int(last if last is not None else first)
        by = int(step) if step else 1
        if high > 7:
            raise ValueError(f"day of week {part!r} is out of range: use 0-7 (0 and 7 are Sunday) or sun-sat")
        if low > high or by < 1:
            raise ValueError(f"day of week {part!r}: a range must run upwards and a step be at least 1")
        parts.extend(dict.fromkeys(_WEEKDAY_NAMES[day % 7] for day in range(low, high + 1, by)))
    return ",".join(parts)


def build_trigger(schedule: Schedule, anchor: datetime, *, stored: bool = False) -> BaseTrigger:
    """`anchor` is when the loop was created: interval loops count from it, so fires stay aligned
    across restarts. `stored`: a schedule already saved, read as it was accepted (an `--every 1m1m`
    saved before units had to come from the largest down still fires)."""
    tz = zone(schedule.timezone)
    if schedule.kind == "cron":
        try:
            fields = schedule.expr.split()
            if len(fields) != 5:
                raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
            minute, hour, day, month, day_of_week = fields
            weekdays = _cron_day_of_week(day_of_week)
            inner: BaseTrigger
            if day.startswith("*") or day_of_week.startswith("*"):
                inner = CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays, timezone=tz)
            else:
                # cron(5): with both day fields restricted a day matching either fires; APScheduler wants both.
                inner = OrTrigger([
                    CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone=tz),
                    CronTrigger(minute=minute, hour=hour, month=month, day_of_week=weekdays, timezone=tz),
                ])  # fmt: skip
            if hour.startswith("*"):  # an hourly job runs by the clock on the wall, as cron's does
                return inner
            return FixedHours(inner, tz, CronTrigger(minute=minute, hour=hour, timezone=tz))
        except (ValueError, TypeError) as e:
            raise InvalidArgument(f"invalid cron expression {schedule.expr!r}: {e}") from None
    if schedule.kind == "every":
        try:
            seconds = parse_duration(schedule.expr, strict=not stored)
        except DurationError as e:
            raise InvalidArgument(f"invalid --every: {e}") from None
        if seconds < 1:
            raise InvalidArgument("--every must be at least 1s")
        interval = timedelta(seconds=seconds)
        return IntervalTrigger(seconds=seconds, start_date=anchor + interval, timezone=tz)
    return DateTrigger(run_date=parse_at(schedule.expr, tz), timezone=tz)


class FixedHours(BaseTrigger):
    """A cron schedule whose hours are given, across the clock changes, as cron runs it: a time in the hour the
    clocks repeat fires in its first pass only (APScheduler fired it in both, an hour apart), and a time the clocks
    skip fires once, as they jump (APScheduler fired it an hour after its time, and each of several skipped times
    apart). Compared as moments: aware times of one zone compare by their wall clocks, which repeat."""

    def __init__(self, inner: BaseTrigger, tz: ZoneInfo, clock_fields: CronTrigger) -> None:
        self.inner = inner
        self.tz = tz
        self._hour, self._minute = (next(f for f in clock_fields.fields if f.name == n) for n in ("hour", "minute"))

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        previous, start = previous_fire_time, now
        for _ in range(_SEARCH_CAP):
            found = self.inner.get_next_fire_time(previous, start)
            if found is None:
                return None
            fire = self._as_cron_fires(found)
            if fire is not None and (previous_fire_time is None or fire > previous_fire_time.astimezone(UTC)):
                return fire.astimezone(self.tz)
            # From the moment, not the wall time: one in the repeated hour plus a microsecond is an hour earlier.
            previous = found.astimezone(UTC)
            start = previous + _INSTANT
        return None

    def _as_cron_fires(self, found: datetime) -> datetime | None:
        """When cron fires what APScheduler found at `found`; None: not at all (the repeated hour's second pass)."""
        utc = found.astimezone(UTC)
        wall = utc.astimezone(self.tz)
        if wall.fold:
            return None
        before = (utc - _LONGEST_JUMP).astimezone(self.tz).utcoffset()
        after = wall.utcoffset()
        if before is None or after is None or after <= before or self._matches(wall):
            return utc
        # The clocks jumped forward since, and the wall shows a time the schedule does not name: APScheduler moved a
        # skipped time past the jump. cron runs it at the jump.
        return _jump(self.tz, utc - _LONGEST_JUMP, utc)

    def _matches(self, wall: datetime) -> bool:
        return bool(self._hour.get_next_value(wall) == wall.hour and self._minute.get_next_value(wall) == wall.minute)


_SEARCH_CAP = 256  # fires passed over in one search: at most the slots of one repeated hour
_LONGEST_JUMP = timedelta(hours=3)  # more than any zone's clock change


def _jump(tz: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The first second of `tz`'s newer offset in (low, high], `low` being in the older one."""
    old = low.astimezone(tz).utcoffset()
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == old:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def never_fires(schedule: Schedule) -> str:
    """Why a trigger with no fire left was refused, in the user's terms."""
    if schedule.kind == "cron":
        return f"cron expression {schedule.expr!r} never fires"
    return f"--at {schedule.expr} is in the past"


def first_fire(trigger: BaseTrigger, now: datetime) -> datetime | None:
    """The first fire at or after `now`, or None when the trigger has none left."""
    nxt = trigger.get_next_fire_time(None, now)
    if nxt is not None and nxt.astimezone(UTC) < now.astimezone(UTC):
        return None  # a one-shot whose time has passed
    return nxt


def following(trigger: BaseTrigger, fired: datetime, now: datetime) -> datetime | None:
    """The fire after `fired`; never one already in the past (those would replay back to back)."""
    nxt = trigger.get_next_fire_time(fired, now)
    if nxt is not None and nxt.astimezone(UTC) <= now.astimezone(UTC):  # moments, not wall clocks
        nxt = first_fire(trigger, now)
    return nxt


@dataclass(frozen=True)
class Fire:
    scheduled_at: datetime
    trigger: TriggerKind


@dataclass(frozen=True)
class Plan:
    fire: Fire | None
    next_fire_at: datetime | None
    missed: int = 0  # fires that fell while fleetd could not fire them (a catch-up fire stands for them all)


_INSTANT = timedelta(microseconds=1)


def count_fires(trigger: BaseTrigger, first: datetime, now: datetime, cap: int = MISSED_CAP) -> int:
    """How many fires fall in [first, now], `first` being one; at most `cap` (then it is "cap+")."""
    count, fire = 0, first
    while fire is not None and fire <= now and count < cap:
        count += 1
        later = trigger.get_next_fire_time(fire, now)
        # As moments: two aware times of one zone compare by their wall clocks, which repeat as the clocks go back.
        fire = later if later is not None and later.astimezone(UTC) > fire.astimezone(UTC) else None
    return count


def plan_startup(trigger: BaseTrigger, due: datetime | None, now: datetime, catch_up: CatchUp) -> Plan:
    """On daemon start: a due time already past was missed while the daemon was down. However many
    fires were missed, `once` runs one catch-up and `skip` none; then the schedule resumes."""
    if due is None or due >= now:
        return Plan(None, due)
    fire = Fire(due, "catch-up") if catch_up == "once" else None
    return Plan(fire, first_fire(trigger, now), count_fires(trigger, due, now))


def plan_wake(trigger: BaseTrigger, due: datetime, now: datetime, catch_up: CatchUp, grace: timedelta) -> Plan:
    """When the timer for `due` wakes at `now`. Later than `grace` (host suspended, clock jumped)
    counts as missed, handled like a fire missed while down."""
    if now < due:
        return Plan(None, due)
    if now - due <= grace:
        # Late by a period or more, the slots already past are not fired after it (they would replay back to
        # back): this fire stands for them, as a catch-up does, so they are told (`missed`), not lost unseen.
        nxt = following(trigger, due, now)
        passed = count_fires(trigger, due, nxt - _INSTANT if nxt is not None else now)
        return Plan(Fire(due, "schedule"), nxt, missed=passed if passed > 1 else 0)
    fire = Fire(due, "catch-up") if catch_up == "once" else None
    return Plan(fire, first_fire(trigger, now), count_fires(trigger, due, now))
