"""Rolling-window arithmetic over consumption records: from scratch (`window_usage`) and kept as records come and
go (`Ledger`). Pure: the clock is an argument."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleetd.records.money import reaches, within
from fleetd.records.profile import Limit
from fleetd.records.usage import Consumption

__all__ = ["Ledger", "WindowUsage", "reaches", "window_usage", "within"]


@dataclass(frozen=True)
class WindowUsage:
    limit: Limit
    used: float
    # When the oldest consumption in the window falls out of it: the earliest moment usage drops.
    eases_at: datetime | None

    @property
    def fraction(self) -> float:
        return self.used / self.limit.amount

    @property
    def exceeded(self) -> bool:
        return reaches(self.used, self.limit.amount)

    def full_until(self, records: Iterable[Consumption], now: datetime) -> datetime | None:
        """When usage will be back under the limit if nothing more is used: drop the oldest records
        until the sum fits. `records`: oldest first (read only as far as needed)."""
        if not self.exceeded:
            return None
        return self._fits_again(records, self.used, now, self._under) or now

    def no_room_until(
        self, records: Callable[[], Iterable[Consumption]], pending: float, each: float | None, now: datetime
    ) -> datetime | None:
        """Whether one more attempt has no room in this window, and if so when it has should nothing more start: None
        while it has. `pending`: what the attempts under way are expected to use and what finished ones not counted
        yet used; `each`: what the next one is expected to use (None, not known: no room only once what is used and
        pending reaches the limit). Calls that started together each saw the window as it stood before any of them
        ended (a `1d=30req` profile took 31), and one at 2,451 of 3,000 tokens was let in though each used 817.
        `records`: the window's records, oldest first, read only when there is no room and only as far as needed."""
        # One that would not fit an empty window is let in when the window has room at all: held at more than the
        # limit, the profile would be passed over for ever (no attempt, so no new typical size).
        each = min(each, self.limit.amount) if each else each
        need = self.used + pending + (each or 0.0)
        fits = self._within if each else self._under
        if fits(need):
            return None
        # What is pending, counted as of now, leaves the window last.
        return self._fits_again(records(), need, now, fits) or now + timedelta(seconds=self.limit.window_s)

    def _under(self, used: float) -> bool:
        return not reaches(used, self.limit.amount)

    def _within(self, used: float) -> bool:
        return within(used, self.limit.amount)

    def _fits_again(
        self, records: Iterable[Consumption], used: float, now: datetime, fits: Callable[[float], bool]
    ) -> datetime | None:
        """When `used` fits as the window's records (oldest first) leave it; None if they all leave and it still
        does not. Read only up to the one whose leaving makes room: a full window of 100,000 records was sorted
        and built whole on every refused call (0.3 s of the event loop each)."""
        start = now - timedelta(seconds=self.limit.window_s)
        for c in records:
            if c.at <= start:
                continue
            used -= c.amount(self.limit.unit)
            if fits(used):
                return c.at + timedelta(seconds=self.limit.window_s)
        return None


def window_usage(records: Iterable[Consumption], limit: Limit, now: datetime) -> WindowUsage:
    start = now - timedelta(seconds=limit.window_s)
    used, oldest = 0.0, None
    for c in records:
        if start < c.at <= now:
            used += c.amount(limit.unit)
            oldest = c.at if oldest is None or c.at < oldest else oldest
    eases = oldest + timedelta(seconds=limit.window_s) if oldest is not None else None
    return WindowUsage(limit, used, eases)


def _at(entry: _Entry) -> float:
    return entry.at


@dataclass(slots=True)
class _Entry:
    at: float  # POSIX seconds
    tokens: int
    requests: int
    nano_usd: int  # the cost in 1e-9 dollars: sums that go up and down by it stay exact
    session_id: str | None  # an agent record's session, which an attempt record may take over
    counted: bool = True


class Ledger:
    """One profile's consumption inside its longest window, kept sorted by time, and a running sum per limit:
    each beat costs what was added and what left the windows since the last one, not a re-read of the window.

    Invariant, per limit i: `_sums[i]` holds the counted entries with `_start[i] < at <= _end[i]`, which are
    `_entries[_lo[i]:_hi[i]]`; after `advance(now)` that is `now - window < at <= now`, as `window_usage` counts.
    Counting follows `UsageStore.since`: an agent record of a session stops counting once an attempt record of
    that session is added (`add(..., attempt=True)`), so a session is never counted twice. Entries older than
    every window are dropped; a clock that goes back re-sums what is left, and so does the first `advance` after
    `add_many` brought many at once (appended unsorted, sorted then).
    """

    PRUNE_AT = 4096  # entries below every window before they are dropped (a list shift costs O(n))
    BULK = 256  # records that `add_many` sorts in rather than inserting one by one

    def __init__(self, limits: list[Limit]) -> None:
        self.limits = list(limits)
        self._ats: list[float] = []
        self._entries: list[_Entry] = []
        self._sessions: dict[str, list[_Entry]] = {}  # counted agent entries per session
        self._taken: set[str] = set()  # sessions an attempt record counts for
        self._now = float("-inf")
        self._lo = [0] * len(self.limits)
        self._hi = [0] * len(self.limits)
        # What each window's sum covers: start < at <= end (`end` is `_now`, or `start` after a rewind).
        self._start = [float("-inf")] * len(self.limits)
        self._end = [float("-inf")] * len(self.limits)
        self._sums = [[0, 0, 0] for _ in self.limits]  # tokens, requests, nano-dollars
        self._sorted = True  # False: entries appended by `add_many`, `_ats` not yet their times in order

    def take_sessions(self, sessions: Collection[str]) -> None:
        """Sessions that have an attempt record (read from the store): their agent records do not count."""
        for session in sessions:
            self._take(session)

    def add(
        self, at: datetime, tokens: int, requests: int = 1, cost_usd: float = 0.0, session_id: str | None = None,
        *, attempt: bool = False,
    ) -> None:  # fmt: skip
        if attempt and session_id:
            self._take(session_id)
            session_id = None  # an attempt record always counts
        elif session_id in self._taken:
            return
        self._insert(_Entry(at.timestamp(), tokens, requests, round(cost_usd * 1e9), session_id))

    def _insert(self, entry: _Entry) -> None:
        self._sort()
        index = bisect.bisect_right(self._ats, entry.at)
        self._ats.insert(index, entry.at)
        self._entries.insert(index, entry)
        if entry.session_id:
            self._sessions.setdefault(entry.session_id, []).append(entry)
        for i in range(len(self.limits)):
            if entry.at <= self._start[i]:
                self._lo[i] += 1
                self._hi[i] += 1
            elif entry.at <= self._end[i]:
                self._hi[i] += 1
                self._count(i, entry, 1)

    def add_many(self, records: Iterable[tuple[datetime, int, int, float, str | None]]) -> None:
        """Agent records (at, tokens, requests, cost, session). A few are added one by one; many (a first read
        brings records of many files, out of time order, and one `add` each would shift the list each time) are
        appended and sorted in one go, and the windows summed again over what is kept at the next `advance`."""
        self.add_seconds([(at.timestamp(), tokens, requests, cost, session) for at, tokens, requests, cost, session
                          in records])  # fmt: skip

    def add_seconds(self, records: list[tuple[float, int, int, float, str | None]]) -> None:
        """`add_many` of records whose at is in POSIX seconds already (the heartbeat's rows carry it: a first read
        then makes no datetime per record)."""
        taken = self._taken
        # One by one costs a list shift each, next to nothing for the newest records (an append to a transcript);
        # at once costs a sort and summing the windows again, nothing when nothing was summed yet (a first read).
        if len(records) < self.BULK and self._now != float("-inf"):
            for at, tokens, requests, cost, session in records:
                if session not in taken:
                    self._insert(_Entry(at, tokens, requests, round(cost * 1e9), session))
            return
        fresh = [
            _Entry(at, tokens, requests, round(cost * 1e9) if cost else 0, session)
            for at, tokens, requests, cost, session in records
            if session not in taken
        ]
        if not fresh:
            return
        for entry in fresh:
            if entry.session_id:
                self._sessions.setdefault(entry.session_id, []).append(entry)
        self._entries += fresh
        self._sorted = False  # sorted once, when the order is needed: a first read brings many parts

    def advance(self, now: datetime) -> list[WindowUsage]:
        """Move every window to end at `now`; its usage, as `window_usage` over the same records says."""
        t = now.timestamp()
        self._sort()
        if t < self._now:
            self._rewind(t)
        ats = self._ats
        for i, limit in enumerate(self.limits):
            hi, lo, start = self._hi[i], self._lo[i], t - limit.window_s
            # What came into the window and what left it, found by bisection and summed a slice at a time (a first
            # read brings a hundred thousand entries at once).
            new_hi = bisect.bisect_right(ats, t, hi)
            new_lo = bisect.bisect_right(ats, start, lo, new_hi)
            self._count_range(i, hi, new_hi, 1)
            self._count_range(i, lo, new_lo, -1)
            self._hi[i], self._lo[i] = new_hi, new_lo
            self._start[i], self._end[i] = start, t
        self._now = t
        self._prune()
        return [self._usage(i) for i in range(len(self.limits))]

    def inside(self, limit: int) -> Iterator[Consumption]:
        """The counted records in the window of limit `limit` (by index), oldest first, made as they are read: what
        `full_until` reads, as far as it needs. Read it before the ledger changes."""
        self._sort()
        entries = self._entries
        for j in range(self._lo[limit], self._hi[limit]):
            e = entries[j]
            if e.counted:
                yield Consumption(datetime.fromtimestamp(e.at, UTC), e.tokens, e.requests, e.nano_usd / 1e9)

    def __len__(self) -> int:
        return len(self._entries)

    # -- inside -----------------------------------------------------------------------------------

    def _take(self, session: str) -> None:
        self._sort()  # the sums say what they cover only once entries added at once are in order
        self._taken.add(session)
        for entry in self._sessions.pop(session, []):
            for i in range(len(self.limits)):
                if self._start[i] < entry.at <= self._end[i]:
                    self._count(i, entry, -1)
            entry.counted = False

    def _count(self, i: int, entry: _Entry, sign: int) -> None:
        if entry.counted:
            sums = self._sums[i]
            sums[0] += sign * entry.tokens
            sums[1] += sign * entry.requests
            sums[2] += sign * entry.nano_usd

    def _count_range(self, i: int, lo: int, hi: int, sign: int) -> None:
        """`_count` of each of `_entries[lo:hi]`."""
        if hi - lo == 1:
            self._count(i, self._entries[lo], sign)
            return
        tokens = requests = nano_usd = 0
        for entry in self._entries[lo:hi]:
            if entry.counted:
                tokens += entry.tokens
                requests += entry.requests
                nano_usd += entry.nano_usd
        sums = self._sums[i]
        sums[0] += sign * tokens
        sums[1] += sign * requests
        sums[2] += sign * nano_usd

    def _usage(self, i: int) -> WindowUsage:
        limit = self.limits[i]
        tokens, requests, nano_usd = self._sums[i]
        used = {"tok": tokens, "req": requests, "usd": nano_usd / 1e9}[limit.unit]
        entries, oldest = self._entries, None
        for k in range(self._lo[i], self._hi[i]):  # the first counted one: nearly always the first
            if entries[k].counted:
                oldest = entries[k].at
                break
        eases = datetime.fromtimestamp(oldest + limit.window_s, UTC) if oldest is not None else None
        return WindowUsage(limit, float(used), eases)

    def _sort(self) -> None:
        if not self._sorted:
            self._entries.sort(key=_at)  # stable: ties keep their order, as bisect_right does
            self._ats = [e.at for e in self._entries]
            self._sorted = True
            self._rewind(self._now)

    def _rewind(self, t: float) -> None:
        """Every window empty and ending at `t` (the next `advance` sums it again over the entries kept): after the
        clock went back, or many entries came at once."""
        for i, limit in enumerate(self.limits):
            self._lo[i] = self._hi[i] = bisect.bisect_right(self._ats, t - limit.window_s)
            self._start[i] = self._end[i] = t - limit.window_s
            self._sums[i] = [0, 0, 0]
        self._now = t

    def _prune(self) -> None:
        below = min(self._lo, default=len(self._entries))
        if below < self.PRUNE_AT:
            return
        for entry in self._entries[:below]:
            kept = self._sessions.get(entry.session_id) if entry.session_id else None
            if kept is not None:
                kept.remove(entry)
                if not kept:
                    del self._sessions[entry.session_id]  # type: ignore[arg-type]
        del self._ats[:below], self._entries[:below]
        self._lo = [lo - below for lo in self._lo]
        self._hi = [hi - below for hi in self._hi]
