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
            # The wall clock's times, found in UTC (where none repeats or is skipped); `WallClockCron` places them.
            walls: BaseTrigger
            if day.startswith("*") or day_of_week.startswith("*"):
                walls = CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays, timezone=UTC)
            else:
                # cron(5): with both day fields restricted a day matching either fires; APScheduler wants both.
                walls = OrTrigger([
                    CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone=UTC),
                    CronTrigger(minute=minute, hour=hour, month=month, day_of_week=weekdays, timezone=UTC),
                ])  # fmt: skip
            return WallClockCron(walls, tz, wildcard=minute.startswith("*") or hour.startswith("*"))
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


class WallClockCron(BaseTrigger):
    """A cron schedule in a zone, across its clock changes as cron(8) runs one (Vixie, cronie; a change under 3 h):
    a `wildcard` job (its minute or hour field starts with `*`) fires by the wall clock, in both passes of an hour the
    clocks repeat and not for times they skip; any other job fires once in a repeated hour, and a time the clocks
    skip fires once, as they jump. APScheduler's own arithmetic in a zone fired a fixed time twice in autumn, skipped
    times an hour late or not at all, and lost a whole day after the spring change (`0 0 * * *` in Stockholm: no fire
    on the Monday). `walls` is the schedule in UTC, used for its wall times alone. Fires are compared as moments:
    aware times of one zone compare by their wall clocks, which repeat."""

    def __init__(self, walls: BaseTrigger, tz: ZoneInfo, *, wildcard: bool) -> None:
        self.walls = walls
        self.tz = tz
        self.wildcard = wildcard

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The first fire after `previous_fire_time`, else the first at or after `now`."""
        start = previous_fire_time.astimezone(UTC) + _INSTANT if previous_fire_time else now.astimezone(UTC)
        found = self.walls.get_next_fire_time(None, _naive(start, self.tz).replace(tzinfo=UTC))
        if found is None:
            return None
        moment = found.replace(tzinfo=self.tz).astimezone(UTC)
        # No clock change near: the next wall time is the next fire (the usual case, one search).
        if moment - start < _STEADY_SPAN and self._steady(start - _LONGEST_JUMP, moment + _LONGEST_JUMP):
            return moment.astimezone(self.tz)
        # A clock change near: a wall time before `start`'s may fire at or after it (a skipped time, at the jump; a
        # repeated hour's second pass). No wall time before `start` read at the smallest offset about it can.
        wall = (start + min(self._offsets(start))).replace(tzinfo=None)
        best: datetime | None = None
        for _ in range(_SEARCH_CAP):
            found = self.walls.get_next_fire_time(None, wall.replace(tzinfo=UTC))
            if found is None:
                break
            wall = found.replace(tzinfo=None)
            if best is not None and wall > (best + max(self._offsets(best))).replace(tzinfo=None):
                break  # it, and every later wall time, fires after `best`
            for moment in self._moments(wall):
                if moment >= start and (best is None or moment < best):
                    best = moment
            wall += _INSTANT
        return best.astimezone(self.tz) if best is not None else None

    def _offsets(self, moment: datetime) -> list[timedelta]:
        """The zone's offsets from a clock change before `moment` to one after."""
        return [
            offset
            for at in (moment - _LONGEST_JUMP, moment, moment + _LONGEST_JUMP)
            if (offset := at.astimezone(self.tz).utcoffset()) is not None
        ]

    def _steady(self, first: datetime, last: datetime) -> bool:
        """No clock change between the two moments (less than `_STEADY_SPAN` apart: two could cancel out)."""
        return first.astimezone(self.tz).utcoffset() == last.astimezone(self.tz).utcoffset()

    def _moments(self, wall: datetime) -> list[datetime]:
        """When cron fires at wall time `wall` (naive, in the zone): once, twice (a repeated hour, wildcard jobs) or at
        the jump (a skipped time, fixed-time jobs)."""
        first = wall.replace(tzinfo=self.tz).astimezone(UTC)
        second = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        if _naive(first, self.tz) != wall:  # skipped by the clocks: `second` is before the jump, `first` after
            return [] if self.wildcard else [_jump(self.tz, second, first)]
        if first != second and self.wildcard:
            return [first, second]
        return [first]


def _naive(moment: datetime, tz: ZoneInfo) -> datetime:
    return moment.astimezone(tz).replace(tzinfo=None)


_STEADY_SPAN = timedelta(days=7)  # shorter than the time between any zone's two clock changes
_SEARCH_CAP = 2000  # wall times looked at in one search: a minute's for 6 h around a clock change, and more
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
