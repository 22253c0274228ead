"""The heartbeat: a periodic beat (and one after every attempt) that folds each profile's
consumption — fleetd's own attempts and the agents' own records in the profile's directory — into
rolling windows, judges each profile's state, and keeps each backend's active profile on one with
headroom. All I/O is here; every decision is a pure function in limits/windows/state/switch."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetd.backends.registry import get_adapter
from fleetd.heartbeat.state import Typical, after_attempt, evaluate, headroom, no_room_for_another, typical_of
from fleetd.heartbeat.switch import CIRCUIT_OPEN, Standing, choose_active
from fleetd.heartbeat.windows import Ledger, WindowUsage
from fleetd.loops.scrub import Scrubber
from fleetd.records.circuit import Circuit
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput, WindowState
from fleetd.records.usage import Consumption, ProfileStatus, StoredState
from fleetd.routing import circuit as breaker
from fleetd.routing.router import ProfileView
from fleetd.store.circuits import CircuitStore
from fleetd.store.events import EventLog
from fleetd.store.profiles import ProfileStore
from fleetd.store.usage import AgentRows, NewUsage, ReadProgress, UsageStore
from fleetd.timefmt import local_text, to_iso

if TYPE_CHECKING:
    from fleetd.backends.usage_files import UsageRow

Settle = Callable[[], None]  # ends counting an attempt apart (its reservation, its unrecorded use)
Write = Callable[[sqlite3.Connection], object]  # a change to the store, run inside one of its transactions
log = logging.getLogger("fleetd.heartbeat")
WATCH_ARMING_S = 1.0  # a generous bound on how long watchfiles takes to start watching
# How often watchfiles' thread looks for changes; it reports them once a look finds no newer ones, so an agent's write
# is seen 1-2 steps after it lands. Its default (50 ms) was most of the time until `usage` showed an append; each look
# takes the GIL, which at 20 ms costs an idle daemon with profiles ~0.2 % of a core.
WATCH_STEP_MS = 20
CIRCUIT_EVENTS = {"open": "circuit.opened", "half_open": "circuit.half_open", "closed": "circuit.closed"}
RESERVATION_FLOOR = 0.05  # headroom an in-flight attempt takes when its size is unknown
# A read of at least this many records, kept until the windows show it, leaves megabytes of freed C heap: given back.
BIG_READ_RECORDS = 10_000
STOP_WAIT_S = 2.0  # how long stop() waits for the beat and the watch (watchfiles' thread sees its stop event in ~50 ms)


@dataclass
class _Counted:
    """A read added to the windows before it is stored (see `Heartbeat._ingest`)."""

    parts: list[tuple[AgentRows, Any]] = field(default_factory=list)  # each part's rows, and the part (its offsets)
    keys: set[str] = field(default_factory=set)  # the dedupe keys of those rows
    garbled_lines: int = 0
    reported: list[WindowState] = field(default_factory=list)  # the newest reported windows, scrubbed


class Heartbeat:
    def __init__(
        self,
        profiles: ProfileStore,
        usage: UsageStore,
        events: EventLog,
        *,
        clock: Callable[[], datetime],
        interval: float,
        near_limit: float,
        known_secrets: Callable[[], Awaitable[Collection[str]]] | None = None,
        circuits: CircuitStore | None = None,
        breaker_policy: breaker.BreakerPolicy | None = None,
    ) -> None:
        self.profiles = profiles
        self.circuit_store = circuits
        self.breaker_policy = breaker_policy or breaker.BreakerPolicy()
        self.circuits: dict[str, Circuit] = {}
        self.probing: set[str] = set()  # half-open profiles whose one probe is in flight
        # The agents' own records are output too: whatever of them is kept is scrubbed of every key first.
        # (An attempt's parsed output arrives scrubbed already: the executor scrubs where it enters.)
        self.known_secrets = known_secrets
        self.usage = usage
        self.events = events
        self.clock = clock
        self.interval = interval
        self.near_limit = near_limit
        self.states: dict[str, StoredState] = {}
        self.windows: dict[str, list[WindowUsage]] = {}
        self.active: dict[str, tuple[str | None, bool]] = {}
        self.in_flight: dict[str, int] = {}
        self.enabled_at: dict[str, datetime] = {}  # when each was last enabled by hand
        # Told a profile's name when an attempt under way on it ends (the executor: runs waiting on its room).
        self.room_freed: Callable[[str], None] | None = None
        self._ingesters: dict[str, Any] = {}
        self._ledgers: dict[str, Ledger] = {}  # each profile's windows, kept as records arrive
        self._last_id = -1  # the newest usage record the ledgers have; any other means someone else wrote
        self._offsets_json: dict[str, str] = {}  # each profile's offsets serialised, until a part moves them
        self._keyed: set[str] = set()  # profiles the store holds keyed agent records of (`UsageStore.has_agent_keys`)
        # Files the watch reported since the last beat that read them; None: list every file (at start, after the
        # watch was (re)armed or failed, and on every periodic beat, which is the safety net for missed events).
        self._changed: set[str] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._rewatch = asyncio.Event()
        self._watched: set[Path] = set()
        self._typical: dict[str, Typical | None] = {}  # None: no attempt of it has ended yet
        self._unrecorded: dict[str, list[tuple[int, float]]] = {}  # tokens and cost of calls not in the windows yet
        self._unrecorded_costs: dict[str, list[float]] = {}  # cost of calls not in the call log yet

    async def start(self) -> None:
        self.states = await self.usage.load_states()
        self.active = await self.usage.load_active()
        if self.circuit_store is not None:
            self.circuits = await self.circuit_store.load()
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="heartbeat")
        self._watch_task = asyncio.create_task(self._watch(), name="heartbeat-watch")

    async def stop(self) -> None:
        """Bounded: cancel the beat and the watch, wait at most STOP_WAIT_S, abandon what is left.
        A cancellation can be lost (3.11's wait_for drops it when the wake-up it waits for lands in
        the same instant), so the loops also end on `_stop`, and this never awaits a task unbounded."""
        self._stop.set()
        tasks = {t for t in (self._task, self._watch_task) if t is not None and not t.done()}
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("heartbeat task %s failed", task.get_name(), exc_info=task.exception())
        if pending:
            log.warning("heartbeat: %s still running %ss after stop; abandoned", sorted(t.get_name() for t in pending),
                        STOP_WAIT_S)  # fmt: skip

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self._next_delay())
            except TimeoutError:
                self._changed = None  # a periodic beat lists every file
            if self._stop.is_set():
                return
            self._wake.clear()
            changed, self._changed = self._changed, set()
            try:
                await self.beat(changed)
            except Exception:
                log.exception("heartbeat failed; next beat in %ss", self.interval)

    def _next_delay(self) -> float:
        """The interval, or sooner when a profile's reset falls before it."""
        now = self.clock()
        resets = [s.status.exhausted_until for s in self.states.values() if s.status.exhausted_until]
        resets += [c.open_until for c in self.circuits.values() if c.state == "open" and c.open_until]
        soonest = min(((r - now).total_seconds() for r in resets if r > now), default=self.interval)
        return max(0.05, min(self.interval, soonest + 0.01))

    def _watch_roots(self) -> set[Path]:
        """Each ingester's directory, or while it does not exist yet its parent (the profile's config
        directory), so that its creation is seen too."""
        roots = {Path(i.watch_root) for i in self._ingesters.values() if i is not None}
        return {r if r.is_dir() else r.parent for r in roots if r.is_dir() or r.parent.is_dir()}

    async def _watch(self) -> None:
        """Beat soon after an agent writes to a profile's usage records. Directories are watched, not
        files (agents and editors replace files atomically), and the watch is re-armed whenever the
        set of directories changes (a new profile; a CLI creating `projects/` on its first run)."""
        import watchfiles

        while not self._stop.is_set():
            self._rewatch.clear()
            roots = self._watch_roots()
            self._watched = roots
            iteration_done = asyncio.Event()
            relay = asyncio.create_task(self._end_watch_on(iteration_done))
            try:
                if not roots:
                    await iteration_done.wait()
                    continue
                # Whatever is written while the watch is being armed raises no event: one beat just
                # after arming reads it (scans are incremental, so this costs next to nothing).
                asyncio.get_running_loop().call_later(WATCH_ARMING_S, self._list_all)
                async for changes in watchfiles.awatch(*roots, stop_event=iteration_done, recursive=True,
                                                       step=WATCH_STEP_MS,
                                                       watch_filter=lambda _c, p: p.endswith(".jsonl")):  # fmt: skip
                    if self._changed is not None:
                        self._changed.update(path for _, path in changes)
                    self._wake.set()
            except Exception:
                log.exception("watching usage records failed; relying on the periodic beat")
                self._changed = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)
            finally:
                relay.cancel()

    def _list_all(self) -> None:
        self._changed = None
        self._wake.set()

    async def _end_watch_on(self, done: asyncio.Event) -> None:
        stop, rewatch = asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._rewatch.wait())
        try:
            await asyncio.wait({stop, rewatch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            rewatch.cancel()
            done.set()

    # -- the beat -------------------------------------------------------------------------------

    async def beat(self, changed: Collection[str] | None = None) -> None:
        """Ingest, judge and switch. `changed`: the files the watch reported since the last beat, which are all
        that is read; None (a periodic beat, a beat asked for from outside) lists every file."""
        async with self._lock:
            profiles = await self.profiles.list()
            for profile in profiles:
                await self._refresh(profile, changed)
            for profile in profiles:
                await self._observe_circuit(profile, self.clock())
            for backend in sorted({p.backend for p in profiles}):
                await self._switch(backend, profiles)
            if self._watch_roots() != self._watched:
                self._rewatch.set()

    def _pending(self) -> Collection[str] | None:
        """The files the watch reported that the next beat reads (None: it lists every file); read here too,
        they are read again there for free (a file at its offset costs an fstat)."""
        return None if self._changed is None else set(self._changed)

    async def _refresh(self, profile: Profile, changed: Collection[str] | None) -> None:
        """`changed`: the files to read (None: list them all)."""
        now = self.clock()
        stored = self.states.get(profile.name) or StoredState(ProfileStatus())
        with contextlib.ExitStack() as paused:
            counted = await self._ingest(profile, stored, now, changed, paused)
            if counted is not None:
                # A read already counted in the windows: shown now, as it will stand once stored (a first read's
                # inserts take a second), and `stored` (its offsets above all) moves on only as its parts are
                # committed.
                preview = replace(stored, reported=counted.reported or stored.reported,
                                  garbled_lines=stored.garbled_lines + counted.garbled_lines)  # fmt: skip
                try:
                    preview.status = await self._judge(profile, preview, now)
                    self.states[profile.name] = preview
                    await self._store_counted(profile, stored, counted, now)
                except BaseException:  # failed or cancelled: the state as stored, not as shown
                    self.states[profile.name] = stored
                    if counted.parts:  # none of it stored (`_store_counted` always empties it): all read again
                        self._read_again(profile)
                        counted.parts.clear()
                    raise
        if counted is not None and len(counted.keys) >= BIG_READ_RECORDS:
            # The collector's passes over everything the read made, done here, in the beat that made it: left to
            # come by themselves, the full one came during the next beats (an append took 160-310 ms instead of 60).
            gc.collect()
            _give_back_freed_memory()
        await self._set(profile, stored, await self._judge(profile, stored, now), now)

    async def _judge(self, profile: Profile, stored: StoredState, now: datetime) -> ProfileStatus:
        """The profile's windows at `now` (kept in `windows`: what `usage` shows) and the state they put it in."""
        ledger = await self._ledger(profile, now)
        usages = ledger.advance(now)
        # Only a window over its limit needs its records (when does it fit again?).
        fulls = [u.full_until(ledger.inside(i), now) if u.exceeded else None for i, u in enumerate(usages)]
        self.windows[profile.name] = usages
        new = evaluate(stored.status, usages, fulls, stored.reported, now, self.near_limit)
        if not profile.enabled:
            new = ProfileStatus("disabled", None, "disabled by hand")
        return new

    async def _ledger(self, profile: Profile, now: datetime) -> Ledger:
        """The profile's windows, read from the store once (and again when its limits change or the store
        ignored records, so that which of them are new is unknown); kept up to date as records are added."""
        last = await self.usage.last_id()
        if last != self._last_id:  # records the heartbeat did not add itself (only a test writes behind its back)
            self._ledgers.clear()
            self._last_id = last
        ledger = self._ledgers.get(profile.name)
        if ledger is not None and ledger.limits == profile.limits:
            return ledger
        ledger = Ledger(profile.limits)
        longest = max((limit.window_s for limit in profile.limits), default=0.0)
        if longest:  # a profile without limits has no windows: nothing to read
            for c, session in await self.usage.window(profile.name, now - timedelta(seconds=longest)):
                ledger.add(c.at, c.tokens, c.requests, c.cost_usd, session)
        self._ledgers[profile.name] = ledger
        return ledger

    async def _ingest(
        self, profile: Profile, stored: StoredState, now: datetime, changed: Collection[str] | None,
        paused: contextlib.ExitStack,
    ) -> _Counted | None:  # fmt: skip
        """Read what is new in the profile's files and store it; or, for a profile whose store holds none of its
        agent's keyed records yet (a first read: a hundred thousand records), count it in the windows only and return
        it, to be stored by `_store_counted` once the windows show it. A full listing pauses the garbage collector
        until `paused` closes: after the read is stored, so that its first pass, over everything the read made, comes
        after the windows show it and once the rows kept meanwhile are gone."""
        if profile.name not in self._ingesters:
            try:
                reader = get_adapter(profile.backend).usage_reader(profile, stored.offsets)
                if hasattr(reader, "as_rows"):
                    reader.as_rows = True  # records as the rows stored and counted here (`_rows`)
                self._ingesters[profile.name] = reader
            except Exception:  # usage from the agent's files is a bonus; never a reason to fail a run
                log.exception("cannot read %s's usage records", profile.name)
                self._ingesters[profile.name] = None
            changed = None  # a new reader lists every file once
            if self._watch_roots() != self._watched:
                # Watched from now on, not only once this first read (seconds for a large directory) is done: what is
                # written meanwhile, or just after, is then seen as it lands (and read from the offsets: no double).
                self._rewatch.set()
        ingester = self._ingesters[profile.name]
        if ingester is None or (changed is not None and not changed):
            return None
        # No key known: nothing to scrub, and no pass over every row for nothing.
        secrets = [s for s in await self.known_secrets() if s] if self.known_secrets is not None else []
        scrubber = Scrubber(secrets) if secrets else None
        # Invariant that makes counting before storing exact: only the heartbeat writes agent records, under its lock,
        # so a store without a keyed record of this profile now ignores none of what is read (keys repeated within the
        # read are dropped by `_count_part`, as the store would), and every record read is new.
        # Once true it stays true (records are deleted only by `forget` and retention, and reading one as new again
        # would then only cost the normal path): asked of the store until then, not on every beat.
        if profile.name not in self._keyed and await self.usage.has_agent_keys(profile.name):
            self._keyed.add(profile.name)
        counted = None if profile.name in self._keyed else _Counted()
        if changed is None:
            paused.enter_context(_collection_paused())
        await self._read_and_store(profile, stored, ingester, now, changed, scrubber, counted)
        if counted is not None and not counted.keys and all(not rows for rows, _ in counted.parts):
            for _, part in counted.parts:  # no record (a beat that found nothing new): nothing to show first
                self._part_stored(profile, stored, part)
            return None
        return counted if counted is not None and counted.parts else None

    async def _read_and_store(
        self, profile: Profile, stored: StoredState, ingester: Any, now: datetime, changed: Collection[str] | None,
        scrubber: Scrubber | None, counted: _Counted | None,
    ) -> None:  # fmt: skip
        """Each part of the read stored (and added to the windows) as it comes; with `counted`, each part only added
        to the windows and kept there, its inserts left for `_store_counted`: they would take the cores the read
        needs, and the windows can show the read as soon as it is read."""
        parts = ingester.batches(now, changed)
        # The next part is read (in a thread) while this one is stored: SQLite lets go of the GIL while it writes.
        ahead: asyncio.Future[Any] = asyncio.ensure_future(asyncio.to_thread(next, parts, None))
        added = 0
        try:
            while (part := await ahead) is not None:
                ahead = asyncio.ensure_future(asyncio.to_thread(next, parts, None))
                if part.windows and scrubber is not None:  # what the agent's files report: scrubbed as it comes
                    part.windows = scrubber.record(part.windows)
                if counted is not None:
                    await self._count_part(profile, part, scrubber, now, counted)
                else:
                    added += await self._store_part(profile, stored, part, scrubber, now)
        except BaseException as e:
            # Failed, or cancelled (not only by a stop): what was read but not stored is read again, from the offsets
            # of what was stored (duplicates are ignored by the store), and the windows come from the store again.
            self._read_again(profile)
            if counted is not None:
                counted.parts.clear()  # nothing of it stored, no offset moved: all of it is read again
            if not isinstance(e, Exception):
                raise
            log.exception("reading %s's usage records failed", profile.name)
            return
        finally:
            with contextlib.suppress(Exception):
                await ahead  # a generator still running in its thread cannot be closed
            parts.close()
        if added:
            log.info("profile %s: %d usage record(s) from the agent's own files", profile.name, added)

    def _read_again(self, profile: Profile) -> None:
        """What the profile's reader read past and was not stored is read again, from the stored offsets, by a new
        reader, and its windows come from the store again."""
        self._ingesters.pop(profile.name, None)
        self._ledgers.pop(profile.name, None)

    @staticmethod
    def _rows(part: Any, scrubber: Scrubber | None) -> list[UsageRow]:
        """A part's records as rows: `add_agent`'s columns (`row[:5]`) and at in POSIX seconds (what the windows count
        by). A reader `as_rows` made them already (`part.rows`); UsageRecords (Codex's) are made into rows here, `at`
        UTC already (the readers make it so), as `to_iso` writes it. What is stored of an agent's record is its
        session id and dedupe key: those are scrubbed of every key."""
        rows: list[UsageRow] = part.rows
        if part.records:
            rows = rows + [(r.at.isoformat(timespec="milliseconds"), r.session_id, r.dedupe_key, r.usage.total,
                            r.requests, r.at.timestamp()) for r in part.records]  # fmt: skip
        if scrubber is None or not rows:
            return rows
        keys = _scrubbed([row[2] for row in rows], scrubber)
        sessions: dict[str | None, str | None] = {None: None, "": ""}  # a session's many rows: scrubbed once
        for session in {row[1] for row in rows}:
            if session not in sessions:
                sessions[session] = scrubber.text(session)
        return [(row[0], sessions[row[1]], key, row[3], row[4], row[5]) for row, key in zip(rows, keys, strict=True)]

    async def _store_part(
        self, profile: Profile, stored: StoredState, part: Any, scrubber: Scrubber | None, now: datetime
    ) -> int:
        """One part of a scan: its records inserted in one statement and added to the windows, its offsets kept."""
        # Every record is kept, fleetd's own sessions too: which of an agent's and an attempt's records of
        # one session counts is decided by the rule UsageStore.since states (and the ledger keeps), never by
        # arrival order.
        rows = self._rows(part, scrubber)
        ledger = await self._ledger(profile, now)  # before the insert: a ledger read after has them
        progress = self._progress_after(profile, stored, part, now) if rows else None
        added = await self.usage.add_agent(profile.name, [row[:5] for row in rows], progress)
        # Taken as stored at once, before anything else can fail or be cancelled: the part is committed, and a beat
        # that gave up now would read it again from offsets that are not the store's any more.
        self._part_stored(profile, stored, part, progress)
        if not rows:
            pass
        elif added == len(rows):
            await self._add_to_ledger(profile, ledger, rows)
            self._last_id = await self.usage.last_id()
        else:  # some were stored before (a file read again): which are new, only the store knows
            self._ledgers.pop(profile.name, None)
        return added

    def _progress_after(self, profile: Profile, stored: StoredState, part: Any, now: datetime) -> ReadProgress:
        """Where the profile's reader stands once `part` is stored, to be saved with its records."""
        after = replace(stored, offsets=dict(stored.offsets))
        offsets_json = self._offsets_json.get(profile.name)
        if _advance(after, part) or offsets_json is None:
            offsets_json = json.dumps(after.offsets)
        return ReadProgress(offsets_json, after.garbled_lines, after.reported, to_iso(now))

    async def _add_to_ledger(self, profile: Profile, ledger: Ledger, rows: list[UsageRow]) -> None:
        sessions = {row[1] for row in rows if row[1]}
        if sessions:
            ledger.take_sessions(await self.usage.attempt_sessions(profile.name, sessions))
        ledger.add_seconds([(row[5], row[3], row[4], 0.0, row[1]) for row in rows])

    def _part_stored(
        self, profile: Profile, stored: StoredState, part: Any, progress: ReadProgress | None = None
    ) -> None:
        """A part's records are committed: its offsets and counts move on (saved with its records, `progress`, or
        else with the profile's state next)."""
        moved = _advance(stored, part)
        if progress is not None:
            self._offsets_json[profile.name] = progress.offsets_json  # `_set` saves them as they are: not made again
        elif moved:
            self._offsets_json.pop(profile.name, None)

    async def _count_part(
        self, profile: Profile, part: Any, scrubber: Scrubber | None, now: datetime, counted: _Counted
    ) -> None:
        """One part of a read whose records are all new (see `_ingest`): added to the windows, kept to be stored."""
        rows = []
        keys = counted.keys
        for row in self._rows(part, scrubber):
            key = row[2]
            if key is not None:
                if key in keys:  # the store would ignore it (a reader forgets keys past MAX_KEYS)
                    continue
                keys.add(key)
            rows.append(row)
        await self._add_to_ledger(profile, await self._ledger(profile, now), rows)
        part.records = part.rows = []  # the rows are what is kept, encoded
        counted.parts.append((AgentRows.encode([row[:5] for row in rows]), part))
        counted.garbled_lines += part.garbled_lines
        if part.windows:
            counted.reported = list(part.windows)

    async def _store_counted(self, profile: Profile, stored: StoredState, counted: _Counted, now: datetime) -> None:
        """Store a read `_ingest` counted in the windows, a part per transaction. Crash-safe as `_store_part` is: a
        part's offsets are saved in the transaction that stores its records, so a kill at any point leaves the files
        to be read again from exactly past what is stored."""
        added = done = 0
        try:
            for rows, part in counted.parts:
                progress = self._progress_after(profile, stored, part, now) if len(rows) else None
                stored_now = await self.usage.add_agent(profile.name, rows, progress)
                self._part_stored(profile, stored, part, progress)  # at once: see `_store_part`
                if stored_now != len(rows):  # cannot happen while the invariant in `_ingest` holds
                    log.warning("profile %s: %d of %d records were stored before; reading the windows again",
                                profile.name, len(rows) - stored_now, len(rows))  # fmt: skip
                    self._ledgers.pop(profile.name, None)
                added += stored_now
                done += 1
        except Exception:
            log.exception("storing %s's usage records failed", profile.name)
        finally:
            if done < len(counted.parts):
                # Failed or cancelled: as when a read fails, the rest is read again (from the offsets of what was
                # stored: the reader's own have moved past it) and the windows come from the store again.
                self._read_again(profile)
            counted.parts.clear()
        self._last_id = await self.usage.last_id()
        if added:
            log.info("profile %s: %d usage record(s) from the agent's own files", profile.name, added)

    async def _set(self, profile: Profile, stored: StoredState, new: ProfileStatus, now: datetime) -> None:
        old = stored.status
        stored.status = new
        self.states[profile.name] = stored
        offsets_json = self._offsets_json.get(profile.name)
        if offsets_json is None:
            offsets_json = self._offsets_json[profile.name] = json.dumps(stored.offsets)
        await self.usage.save_state(profile.name, stored, now, offsets_json)
        if new.state == old.state and new.exhausted_until == old.exhausted_until:
            return
        kind = {
            "exhausted": "profile.exhausted",
            "near_limit": "profile.near_limit",
            "parked": "profile.quota",
            "disabled": "profile.disabled",
        }.get(new.state, "profile.recovered")
        if new.state == "available" and old.state == "near_limit":
            kind = "profile.available"
        until = f" until {local_text(new.exhausted_until)}" if new.exhausted_until else ""
        message = f"{profile.name} is {new.state}{until}" + (f": {new.reason}" if new.reason else "")
        await self.events.emit(now, kind, message, backend=profile.backend, profile=profile.name,
                               state=new.state, exhausted_until=new.exhausted_until, reason=new.reason)  # fmt: skip
        log.info("%s", message)

    async def _switch(self, backend: str, profiles: list[Profile] | None = None) -> None:
        """Re-choose `backend`'s active profile among `profiles` (default: all, read now)."""
        profiles = [
            p for p in (profiles if profiles is not None else await self.profiles.list()) if p.backend == backend
        ]
        current, pinned = self.active.get(backend, (None, False))
        # A profile whose circuit is open is no one's active profile: runs skip it, and so does the choice.
        standings = [
            replace(s, status=ProfileStatus("exhausted", circuit.open_until, CIRCUIT_OPEN))
            if (circuit := self.circuit(s.name)).state == "open"
            else s
            for s in self.standings(profiles)
        ]
        chosen, why = choose_active(standings, current, pinned)
        if chosen == current:
            return
        now = self.clock()
        # A pin holds only while the pinned profile is usable; switching away ends it, and says so.
        self.active[backend] = (chosen, False)
        await self.usage.save_active(backend, chosen, False, now)
        message = f"{backend}: active profile {current or '-'} → {chosen or '-'} ({why})"
        await self.events.emit(now, "profile.switched", message, backend=backend, profile=chosen,
                               previous=current, reason=why, unpinned=pinned)  # fmt: skip
        log.info("%s", message)

    def standings(self, profiles: list[Profile]) -> list[Standing]:
        out = []
        for position, profile in enumerate(profiles):
            stored = self.states.get(profile.name, StoredState(ProfileStatus()))
            status = stored.status
            room = headroom(self.windows.get(profile.name, []), stored.reported, self.clock())
            room -= self.in_flight.get(profile.name, 0) * self._reservation(profile)
            out.append(Standing(profile.name, position, profile.tier, status, max(0.0, room)))
        return out

    def _reservation(self, profile: Profile) -> float:
        """The share of the tightest window one more attempt is expected to take."""
        typical = self._typical.get(profile.name)
        token_limits = [limit.amount for limit in profile.limits if limit.unit == "tok"]
        if not typical or not typical.tokens or not token_limits:
            return RESERVATION_FLOOR
        return max(RESERVATION_FLOOR, typical.tokens / min(token_limits))

    def typical(self, profile: str) -> Typical | None:
        """What one of its attempts uses, going by its recent ones (None before one has ended): those recorded, else
        the finished calls not recorded yet (a first call's batch is written a moment after the next came in)."""
        known = self._typical.get(profile)
        return typical_of(self._unrecorded.get(profile, [])) if known is None else known

    def no_room(self, profile: Profile) -> tuple[str, datetime, bool] | None:
        """Whether one of the profile's own limits has no room for one more attempt beside its attempts under way
        and its finished ones not counted yet (why, when it has room, and whether what is pending takes it), judged
        on its ledger as of now. No await: read as an attempt reserves. Before one has ended, what one uses is not
        known: each is held at all that is left of a token or money limit, so that runs and gateway calls alike go one
        at a time until then (three runs started together on a fresh `1d=900tok` profile took it to 2,451)."""
        stored = self.states.get(profile.name)
        ledger = self._ledgers.get(profile.name)
        if stored is None or ledger is None or stored.status.state not in ("available", "near_limit"):
            return None
        now = self.clock()
        # The windows as of now (`windows` is as of the last beat: a record added since, or one that left since,
        # would be counted wrong beside what is pending).
        return no_room_for_another(
            ledger.advance(now), ledger.inside, stored.reported, self.in_flight.get(profile.name, 0),
            self.typical(profile.name), self._pending_use(profile.name), now, unknown_takes_rest=True,
        )  # fmt: skip

    def unrecorded(self, profile: str, tokens: int, cost_usd: float) -> None:
        """A finished call whose usage reaches `attempts_finished` a moment later, with others (the gateway's
        recorder): counted by `no_room` until its record joins the windows (`recorded_use`), and by
        `unrecorded_cost` until the call log has it (`recorded_cost`). Back-to-back calls went past a limit."""
        self.unsettled(profile, tokens, cost_usd)
        self._unrecorded_costs.setdefault(profile, []).append(cost_usd)

    def unsettled(self, profile: str, tokens: int, cost_usd: float) -> None:
        """A finished call's use whose record the store refused (`recorded_use` came as its write failed): counted by
        `no_room` again until it is written, as `unrecorded` counts it (its cost is counted apart still)."""
        self._unrecorded.setdefault(profile, []).append((tokens, cost_usd))

    def recorded_use(self, profile: str) -> None:
        """The oldest of `unrecorded`'s calls is in the windows now (or its write failed)."""
        pending = self._unrecorded.get(profile)
        if pending:
            pending.pop(0)

    def recorded_cost(self, profile: str) -> float:
        """The oldest of `unrecorded`'s calls is in the call log now (or its write failed): what it cost."""
        pending = self._unrecorded_costs.get(profile)
        return pending.pop(0) if pending else 0.0

    def unrecorded_cost(self, profile: str) -> float:
        return sum(self._unrecorded_costs.get(profile, ()))

    def _pending_use(self, profile: str) -> Consumption | None:
        pending = self._unrecorded.get(profile)
        if not pending:
            return None
        return Consumption(self.clock(), sum(t for t, _ in pending), len(pending), sum(c for _, c in pending))

    async def _learn_typical(self, name: str) -> None:
        self._typical[name] = typical_of(await self.usage.recent_attempts(name))

    async def _know_typical(self, name: str) -> None:
        """Its typical attempt read once since the daemon started (then kept up as attempts end)."""
        if name not in self._typical:
            await self._learn_typical(name)

    def reserve(self, profile: str) -> None:
        self.in_flight[profile] = self.in_flight.get(profile, 0) + 1

    def release(self, profile: str, probe: bool = False) -> None:
        """An attempt ended; `probe`: it was the half-open circuit's one probe, which is free again. What it held
        of the profile's room is free (`room_freed`: runs waiting on it look again now)."""
        self.in_flight[profile] = max(0, self.in_flight.get(profile, 0) - 1)
        if probe:
            self.free_probe(profile)
        if self.room_freed is not None:
            self.room_freed(profile)

    def free_probe(self, profile: str) -> None:
        """The half-open circuit's one probe ended (its circuit stepped): another may take it."""
        self.probing.discard(profile)

    # -- circuit breakers -------------------------------------------------------------------------

    def circuit(self, profile: str) -> Circuit:
        return self.circuits.get(profile, Circuit()).current(self.clock())

    def claim_probe(self, profile: str) -> bool:
        """A half-open circuit lets exactly one attempt through; concurrent runs do not all probe.
        True when this caller took the probe (it must then `release(profile, probe=True)`)."""
        if self.circuit(profile).state == "half_open" and profile not in self.probing:
            self.probing.add(profile)
            return True
        return False

    async def _observe_circuit(self, profile: Profile, now: datetime) -> None:
        """An open circuit whose cooldown is over becomes half-open: persist it and say so."""
        stored = self.circuits.get(profile.name)
        if stored is None:
            return
        current = stored.current(now)
        if current != stored:
            await self._set_circuit(profile, stored, current, now, "cooldown over: the next attempt is a probe")

    async def _set_circuit(self, profile: Profile, old: Circuit, new: Circuit, now: datetime, why: str) -> None:
        self.circuits[profile.name] = new
        if self.circuit_store is not None:
            await self.circuit_store.save(profile.name, new, now)
        if new.state == old.state:
            return
        until = ""
        if new.state == "open" and new.open_until:
            until = f" until {local_text(new.open_until)}"
        message = f"{profile.name}: circuit {new.state.replace('_', '-')}{until} ({why})"
        await self.events.emit(now, CIRCUIT_EVENTS[new.state], message, backend=profile.backend, profile=profile.name,
                               state=new.state, open_until=new.open_until, reason=why)  # fmt: skip
        log.info("%s", message)

    async def reset_circuit(self, profile: Profile) -> None:
        """By hand: close the circuit."""
        async with self._lock:
            old = self.circuits.get(profile.name, Circuit())
            self.probing.discard(profile.name)
            await self._set_circuit(profile, old, Circuit(), self.clock(), "closed by hand")

    # -- the router's view ----------------------------------------------------------------------

    async def _judge_if_due(self, profile: Profile, now: datetime) -> None:
        """Judge a profile now if it was never judged or the reset it waited for has passed (not at the next beat:
        the router would pass it over, `usage` say `exhausted`, until then). Under the lock."""
        status = self.status(profile.name)
        if profile.name not in self.states or (
            status.state in ("exhausted", "parked") and status.exhausted_until and status.exhausted_until <= now
        ):
            await self._refresh(profile, self._pending())

    async def views(self, profiles: list[Profile]) -> dict[str, ProfileView]:
        """Each profile as the router sees it now (state, headroom, active, circuit)."""
        async with self._lock:
            now = self.clock()
            for profile in profiles:
                await self._judge_if_due(profile, now)
                await self._observe_circuit(profile, now)
                await self._know_typical(profile.name)
            views = {}
            for profile, standing in zip(profiles, self.standings(profiles), strict=True):
                active, _ = self.active.get(profile.backend, (None, False))
                circuit = self.circuit(profile.name)
                status = standing.status
                views[profile.name] = ProfileView(
                    name=profile.name,
                    backend=profile.backend,
                    tier=profile.tier,
                    state="disabled" if not profile.enabled else status.state,
                    until=status.exhausted_until,
                    reason=status.reason,
                    headroom=standing.headroom,
                    active=active == profile.name,
                    enabled_at=self.enabled_at.get(profile.name),
                    circuit=circuit.state,
                    circuit_until=circuit.open_until,
                    probe_taken=profile.name in self.probing,
                )
            return views

    async def attempt_finished(
        self, profile: Profile, parsed: ParsedOutput, finished_at: datetime, cost_usd: float | None,
        settle: Settle | None = None, end: Write | None = None, key: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        """Record what the attempt used and what it says about the profile, then beat for its backend. `end`: the
        attempt's end, written with its use (`attempts_finished`); `key`: a gateway try's (`journal.attempt_key`)."""
        await self.attempts_finished(
            [(profile, parsed, finished_at, cost_usd)], settles=[settle] if settle else [], ends=[end] if end else [],
            keys=[key],
        )  # fmt: skip

    async def attempts_finished(
        self, done: list[tuple[Profile, ParsedOutput, datetime, float | None]], settles: Sequence[Settle] = (),
        ends: Sequence[Write] = (), keys: Sequence[tuple[int, int] | None] = (),
    ) -> None:  # fmt: skip
        """What the attempts used and what each says about its profile (the gateway's successes come
        batched; a run's attempt alone): each one's state and circuit step in order, their usage in one
        write, and each profile's windows and its backend's choice refreshed once, after all of them.
        `settles`: called as their records join the windows, with no await between, to stop counting them apart
        (a run's reservation, a gateway call's unrecorded use): never counted twice, nor not at all. `ends`: the
        attempts' ends (of their rows in the store), written in the same transaction as their use: a kill -9 between
        the two left an attempt closed and never counted (crash recovery counts an open one). `keys`: each gateway
        attempt's (`journal.attempt_key`), which the journal's replay after a kill -9 finds written."""
        if not done:
            for settle in settles:
                settle()
            return
        async with self._lock:
            # Each profile as it is now, not as it was when the attempt began: a `--limit` edited meanwhile came back
            # when the attempt ended (its ledger rebuilt and judged with the old limits).
            current = {p.name: p for p in await self.profiles.list()}
            keyed = list(keys) or [None] * len(done)  # a key for each, or none (not the gateway's)
            # One of a profile removed since counts for nothing (its records went with it), not even for a profile added
            # again under its name: that one's window counted an attempt it never made.
            kept = [((current[p.name], parsed, at, cost), key)
                    for (p, parsed, at, cost), key in zip(done, keyed, strict=True)
                    if p.name in current and current[p.name].created_at == p.created_at]  # fmt: skip
            done = [attempt for attempt, _ in kept]
            records = [NewUsage(p.name, at, "attempt", parsed.usage.total, cost or 0.0, parsed.session_id,
                                gateway_try=key)
                       for (p, parsed, at, cost), key in kept]  # fmt: skip
            try:
                ledgers = {p.name: await self._ledger(p, at) for p, _, at, _ in done}  # before the insert
                await self.usage.add(records, with_=ends)
                used: dict[str, list[tuple[float, float]]] = {}
                for record in records:
                    ledgers[record.profile].add(
                        record.at, record.tokens, 1, record.cost_usd, record.session_id, attempt=True
                    )
                    if record.tokens > 0:
                        used.setdefault(record.profile, []).append((record.tokens, record.cost_usd))
                # What one uses, known as these stop being counted apart (the settles), not only once read back from
                # the store (`_learn_typical`, below): a call in between was held at all that was left, and passed.
                for name, recent in used.items():
                    if self._typical.get(name) is None:
                        self._typical[name] = typical_of(recent)
            finally:
                for settle in settles:
                    settle()
            self._last_id = await self.usage.last_id()
            last: dict[str, Profile] = {}
            for profile, parsed, finished_at, _ in done:
                last[profile.name] = profile
                stored = self.states.get(profile.name) or StoredState(ProfileStatus())
                if parsed.windows:
                    stored.reported = list(parsed.windows)
                default_reset = timedelta(seconds=profile.default_reset_s) if profile.default_reset_s else None
                new = after_attempt(
                    stored.status, parsed.outcome, parsed.error_class, parsed.reset_at, parsed.message or "",
                    finished_at, **({"default_reset": default_reset} if default_reset else {}),
                )  # fmt: skip
                # Unchanged: the refresh below saves it once (a write per success was the cost this saves).
                if new != stored.status or parsed.windows or profile.name not in self.states:
                    await self._set(profile, stored, new, finished_at)
                old_circuit = self.circuit(profile.name)
                new_circuit = breaker.after_attempt(
                    old_circuit, parsed.error_class, parsed.outcome == "succeeded", finished_at, self.breaker_policy
                )
                if new_circuit != self.circuits.get(profile.name, Circuit()):
                    why = parsed.error_class or parsed.outcome
                    await self._set_circuit(profile, old_circuit, new_circuit, finished_at, f"attempt {why}")
            for name, profile in last.items():
                await self._learn_typical(name)
                await self._refresh(profile, self._pending())
            for backend in {p.backend for p in last.values()}:
                await self._switch(backend)

    async def set_enabled(self, profile: Profile, enabled: bool) -> None:
        """By hand: disable a profile, or bring one back (also after an auth failure, once fixed)."""
        async with self._lock:
            now = self.clock()
            stored = self.states.get(profile.name) or StoredState(ProfileStatus())
            new = ProfileStatus() if enabled else ProfileStatus("disabled", None, "disabled by hand")
            await self._set(profile, stored, new, now)
            if enabled:  # a run resting from its rate limit takes it back too (`ProfileView.enabled_at`)
                self.enabled_at[profile.name] = now
            await self._refresh(profile, self._pending())
            await self._switch(profile.backend)

    def status(self, name: str) -> ProfileStatus:
        """Profile `name`'s state as last judged (available when it has none yet)."""
        return self.states.get(name, StoredState(ProfileStatus())).status

    async def pin(self, profile: Profile) -> None:
        async with self._lock:
            previous, _ = self.active.get(profile.backend, (None, False))
            now = self.clock()
            self.active[profile.backend] = (profile.name, True)
            await self.usage.save_active(profile.backend, profile.name, True, now)
            await self.events.emit(now, "profile.switched", f"{profile.backend}: {profile.name} pinned by hand",
                                   backend=profile.backend, profile=profile.name, previous=previous,
                                   reason="pinned by hand")  # fmt: skip

    async def unpin(self, backend: str) -> None:
        async with self._lock:
            current, _ = self.active.get(backend, (None, False))
            self.active[backend] = (current, False)
            await self.usage.save_active(backend, current, False, self.clock())
            await self.events.emit(self.clock(), "profile.auto", f"{backend}: the heartbeat chooses again",
                                   backend=backend, profile=current)  # fmt: skip
            await self._switch(backend)

    async def forget(self, profile: str) -> None:
        async with self._lock:
            self.states.pop(profile, None)
            self.windows.pop(profile, None)
            self.circuits.pop(profile, None)
            if self.circuit_store is not None:
                await self.circuit_store.forget(profile)
            self._ingesters.pop(profile, None)
            self._ledgers.pop(profile, None)
            self._typical.pop(profile, None)
            self._unrecorded.pop(profile, None)
            self._unrecorded_costs.pop(profile, None)
            self.in_flight.pop(profile, None)
            self.enabled_at.pop(profile, None)
            self._offsets_json.pop(profile, None)
            self._keyed.discard(profile)
            await self.usage.forget(profile)
            for backend, (active, _) in list(self.active.items()):
                if active == profile:
                    self.active[backend] = (None, False)

    def _windows_now(self, profile: str, now: datetime) -> list[WindowUsage]:
        """The profile's windows as of now, with the gateway's finished calls not recorded yet (they were shown
        a beat late: `0req of 3req` just after three calls), as routing counts them."""
        ledger = self._ledgers.get(profile)
        if ledger is None:
            return self.windows.get(profile, [])
        pending = self._pending_use(profile)
        return [
            replace(w, used=w.used + pending.amount(w.limit.unit)) if pending is not None else w
            for w in ledger.advance(now)
        ]

    async def snapshot(self, profiles: list[Profile]) -> list[dict[str, Any]]:
        """What `fleetd usage` shows, one entry per profile, as of now."""
        async with self._lock:
            now = self.clock()
            for profile in profiles:
                await self._judge_if_due(profile, now)
                await self._know_typical(profile.name)  # `usage` judges a daily cost's room by it
        rows = []
        for profile in profiles:
            stored = self.states.get(profile.name, StoredState(ProfileStatus()))
            active, pinned = self.active.get(profile.backend, (None, False))
            rows.append({"profile": profile, "stored": stored, "windows": self._windows_now(profile.name, now),
                         "active": active == profile.name, "pinned": pinned and active == profile.name,
                         "in_flight": self.in_flight.get(profile.name, 0), "now": now,
                         "circuit": self.circuit(profile.name)})  # fmt: skip
        return rows


def _scrubbed(values: list[str | None], scrubber: Scrubber) -> list[str | None]:
    """`scrubber.text` of each value, in one pass over them joined by newlines when that gives the same: no value
    holds a newline (checked), and no key matched across one (it would have taken a newline with it: checked)."""
    present = [v for v in values if v]
    joined = "\n".join(present)
    if present and joined.count("\n") == len(present) - 1:
        clean = scrubber.text(joined)
        assert clean is not None
        if clean is joined or clean == joined:
            return values
        parts = clean.split("\n")
        if len(parts) == len(present):
            it = iter(parts)
            return [next(it) if v else v for v in values]
    return [scrubber.text(v) if v else v for v in values]


def _advance(stored: StoredState, part: Any) -> bool:
    """Move `stored` past a part of a read: its files' offsets, its garbled lines, the windows it reported. Whether
    the offsets moved."""
    for path in part.forgotten:
        stored.offsets.pop(path, None)
    stored.offsets.update(part.saved)
    stored.garbled_lines += part.garbled_lines
    if part.windows:
        stored.reported = list(part.windows)
    return bool(part.saved or part.forgotten)


def _give_back_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing). A read kept until the
    windows show it (`Heartbeat._ingest`) is freed once stored, but glibc keeps the pages of its megabytes of rows
    mapped: measured after a 542 MB first read, 140 MB RSS, 131 MB after this (what storing each part as it came
    left)."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes

        _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", False)
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None  # libc's malloc_trim once looked up; False: this libc has none


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a full listing is read and stored. A first read makes a few hundred
    thousand objects that stay (records, de-duplication keys, window entries), and with the collector on, passes over
    all of them as they pile up took half of the daemon's share of that read. Cycles made meanwhile (by anything in
    the daemon) are collected once it is back on, a few seconds later."""
    if not gc.isenabled():  # already off (nested, or by someone else): leave it as it is
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
