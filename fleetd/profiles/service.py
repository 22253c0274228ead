"""Profiles as the daemon manages them: records in SQLite, secrets in the secret store, a private
config directory each. Blocking keyring calls run in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fleetd.backends.registry import backend_names, get_adapter, profile_adapter
from fleetd.errors import Conflict, FleetdError, InvalidArgument, NotFound, shown
from fleetd.gateway.model import checked_step
from fleetd.heartbeat.service import Heartbeat, Settle, Write
from fleetd.heartbeat.state import cost_cap_taken, cost_room_at
from fleetd.heartbeat.switch import USABLE
from fleetd.heartbeat.windows import reaches
from fleetd.loops.model import shown_path
from fleetd.paths import UnsafeDirectory, private_dir
from fleetd.profiles.model import (
    edited_profile_input,
    validate_profile_input,
    validate_profile_name,
    validate_secret,
)
from fleetd.profiles.secrets import SecretStore
from fleetd.records.loop import ChainStep, Loop
from fleetd.records.money import day_since, usd, usd_apart
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput
from fleetd.routing.router import NO_COST_ROOM, NO_ROOM, OVER_COST, World
from fleetd.store.attempts import AttemptStore
from fleetd.store.gateway import GatewayStore
from fleetd.store.loops import LoopStore
from fleetd.store.profiles import ProfileStore
from fleetd.timefmt import local_text

log = logging.getLogger("fleetd.profiles")
# How soon a run waiting on room that attempts under way take looks again by itself: each attempt's end wakes it
# (`Heartbeat.room_freed`); this only bounds the wait if that never comes.
PENDING_RECHECK = timedelta(minutes=5)
# Another profile's key shorter than this is not scrubbed from every run's output: a placeholder such as
# "none" for a local server guards nothing and would mangle everyone's output. An attempt's own key is
# scrubbed from its output whatever its length.
MIN_SHARED_SECRET_LEN = 8


class KnownSecrets:
    """Every profile's key, held in the daemon's memory only (never written anywhere), so that any attempt's
    output — and the agents' own records — can be scrubbed of all of them, not just the attempt's own.

    Loaded from the secret store on first use, then kept current by `put` and `drop` as keys are added,
    replaced and removed. A load that could not read every key is not kept: the next use tries again.

    A key replaced or removed is retired, not forgotten: it stays scrubbed until the daemon stops, since a
    run started under it may still print it and old output shown again may hold it. (No run outlives the
    daemon, and at start the secret store holds only current keys.)"""

    def __init__(
        self, secrets: SecretStore, profiles: ProfileStore, more: Callable[[], Awaitable[list[str]]] | None = None
    ) -> None:
        self.secrets = secrets
        self.profiles = profiles
        # The names of other secrets in the same store to scrub too (webhook secrets: hooks/service.py).
        self.more = more
        self._by_profile: dict[str, str] | None = None
        self._retired: set[str] = set()
        self._generation = 0  # bumped by put/drop: a load that overlapped one is stale

    async def values(self) -> frozenset[str]:
        by_profile = self._by_profile
        while by_profile is None:
            generation = self._generation
            by_profile, complete = await self._load()
            if generation != self._generation:
                by_profile = None  # a key came or went while loading: read again
            elif complete:
                self._by_profile = by_profile
        return frozenset(v for v in (*by_profile.values(), *self._retired) if len(v) >= MIN_SHARED_SECRET_LEN)

    async def current(self, name: str) -> str | None:
        """`name`'s key now, from memory once loaded (put/drop follow every add, set-key and removal, so no
        caller keeps a key of its own that a rotation would leave stale); read from the store when the
        last load could not read every key."""
        await self.values()
        if self._by_profile is not None:
            return self._by_profile.get(name)
        return await asyncio.to_thread(self.secrets.get, name)

    async def _load(self) -> tuple[dict[str, str], bool]:
        loaded: dict[str, str] = {}
        complete = True
        names = [profile.name for profile in await self.profiles.list() if profile.has_secret]
        names += await self.more() if self.more is not None else []
        for name in names:
            try:
                value = await asyncio.to_thread(self.secrets.get, name)
            except Exception as e:  # a key we cannot read is a key the attempts cannot use either
                # Only our own one-line message or the exception's type: a foreign one could quote anything.
                why = e.message if isinstance(e, FleetdError) else type(e).__name__
                log.warning("cannot read the secret of %s, to scrub output of it: %s", name, why)
                complete = False
                continue
            if value:
                loaded[name] = value
        return loaded, complete

    def put(self, profile: str, secret: str, replaced: str | None = None) -> None:
        """`profile`'s key is `secret` now; `replaced`, the key it had, is retired."""
        self._generation += 1
        self._retire(replaced)
        if self._by_profile is not None:
            self._retire(self._by_profile.get(profile))
            self._by_profile[profile] = secret
        self._retired.discard(secret)

    def drop(self, profile: str, removed: str | None = None) -> None:
        self._generation += 1
        self._retire(removed)
        if self._by_profile is not None:
            self._retire(self._by_profile.pop(profile, None))

    def _retire(self, secret: str | None) -> None:
        if secret:
            self._retired.add(secret)


class ProfileService:
    def __init__(
        self,
        store: ProfileStore,
        loops: LoopStore,
        secrets: SecretStore,
        heartbeat: Heartbeat,
        *,
        profiles_dir: Path,
        clock: Callable[[], datetime],
        known: KnownSecrets | None = None,
        attempts: AttemptStore | None = None,
        routes: GatewayStore | None = None,
    ) -> None:
        self.store = store
        self.routes = routes  # the gateway's routes, read only: their chains name profiles too
        self.attempt_costs = attempts
        self.loops = loops
        self.secrets = secrets
        self.known = known if known is not None else KnownSecrets(secrets, store)
        self.heartbeat = heartbeat
        self.profiles_dir = profiles_dir
        self.clock = clock
        # Each capped profile's cost in the last 24 h as `world` last read it, and when that read began (monotonic).
        self._spent: dict[str, tuple[float, float]] = {}
        # When each profile over its daily cost has room again, by the spend and attempt cost it was found for: the
        # gateway reads the world four times a second, and the window's costs are read again only when those change.
        self._cost_room: dict[str, tuple[tuple[float, float, float | None, datetime | None], datetime | None]] = {}

    async def add(self, body: dict[str, Any]) -> Profile:
        profile, secret = validate_profile_input(body, self.profiles_dir)
        if profile.name in backend_names() and profile.name != profile.backend:
            # parse_chain takes a backend's name for the backend: `--chain codex` never meant this profile. Named
            # like its own backend it is one of that backend's profiles, which the step takes.
            raise InvalidArgument(
                f"a profile named {profile.name!r} must be a {profile.name} profile: --chain and --review read the "
                f"name as the {profile.name} backend"
            )
        adapter = profile_adapter(profile.backend)
        adapter.validate_profile(profile)
        profile.created_at = profile.updated_at = self.clock()
        # The secret goes in first and the row second: a refused secret leaves nothing behind, and a
        # duplicate name is caught before touching the keyring.
        with contextlib.suppress(NotFound):
            await self.store.get(profile.name)
            raise Conflict(f"profile {profile.name!r} already exists")
        config_dir = Path(profile.config_dir)
        if owner := await self._config_dir_owner(config_dir):
            # Two logins in one directory overwrite each other, their usage is counted twice, and removing
            # one profile removed the other's login with the directory.
            raise Conflict(
                f"config directory {shown_path(str(config_dir))} is profile {owner}'s: give each profile its own "
                "(one login with several models: one profile, and STEP@MODEL in --chain)"
            )
        created = self._prepare_config_dir(profile.name, config_dir)
        try:
            if secret is not None:
                await asyncio.to_thread(self.secrets.set, profile.name, secret)
            try:
                await self.store.insert(profile)
            except BaseException:
                if secret is not None:
                    await asyncio.to_thread(self.secrets.delete, profile.name)
                raise
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    config_dir.rmdir()  # only if still empty: never anything the user or an agent put there
            raise
        if secret is not None:
            self.known.put(profile.name, secret)
        await self.heartbeat.beat()  # `fleetd usage` shows it, and its windows, at once
        return profile

    def _prepare_config_dir(self, name: str, config_dir: Path) -> bool:
        """Create the profile's directory (0700) or check an existing one; True when created here.

        A directory the user names is never chmod'ed, and at most its last component is created."""
        try:
            if config_dir == self.profiles_dir / name:
                private_dir(self.profiles_dir, "fleetd's profiles directory", parents=False)
            return private_dir(config_dir, f"the config directory of profile {name}", parents=False)
        except UnsafeDirectory as e:
            raise InvalidArgument(str(e)) from None
        except OSError as e:  # a file in the way, no permission, a name too long: the user's to fix
            raise InvalidArgument(f"cannot use config directory {shown_path(str(config_dir))}: {e.strerror}") from None

    async def remove(self, name: str) -> None:
        profile = await self.store.get(name)
        users = await self._users(name)
        if users:
            raise Conflict(f"profile {name!r} is still named by {', '.join(users)}: change or remove those first")
        if busy := self.heartbeat.in_flight.get(name, 0):  # a backend step's attempt names no profile beforehand
            one = busy == 1
            what, ended = ("attempt or gateway call", "that has") if one else ("attempts or gateway calls", "they have")
            raise Conflict(f"profile {name!r} has {busy} {what} under way: remove it once {ended} ended "
                           "(fleetd runs list --status running)")  # fmt: skip
        if profile.has_secret:
            # Read before it is deleted: a run of this profile may still print it, so it stays scrubbed.
            removed = None
            with contextlib.suppress(Exception):
                removed = await self.secret(profile)
            await asyncio.to_thread(self.secrets.delete, name)
            self.known.drop(name, removed)
        await self.store.delete(name)
        await self.heartbeat.forget(name)
        self._spent.pop(name, None)
        self._cost_room.pop(name, None)
        default_dir = self.profiles_dir / name
        if Path(profile.config_dir) == default_dir and not await self._config_dir_owner(default_dir):
            # fleetd made this directory; a directory the user named stays theirs, and one another profile
            # was given (before that was refused) stays that profile's.
            shutil.rmtree(default_dir, ignore_errors=True)

    async def _config_dir_owner(self, config_dir: Path) -> str | None:
        """The profile whose config directory `config_dir` is (the same directory by another path too)."""
        mine = os.path.realpath(config_dir)
        for other in await self.store.list():
            if os.path.realpath(other.config_dir) == mine:
                return other.name
        return None

    async def _users(self, name: str) -> list[str]:
        """What names profile `name` and would be left pointing at nothing without it: a loop's pool, chain
        or review step, or a gateway route's chain."""
        users = []
        for lp in await self.loops.list():
            where = [what for what, names in (("pool", lp.profiles),
                                              ("chain", [p for step in lp.chain for p in step.profiles]),
                                              ("review", lp.review.profiles if lp.review else ()))
                     if name in names]  # fmt: skip
            if where:
                users.append(f"loop {lp.name} ({', '.join(where)})")
        for route in await self.routes.routes() if self.routes is not None else []:
            if any(name in step.profiles for step in route.chain):
                users.append(f"route {route.name}")
        return users

    async def edit(self, name: str, changes: dict[str, Any]) -> Profile:
        """`changes` over the stored profile, checked as a whole like `profile add`; nothing saved on error.
        The heartbeat judges it again at once (new limits, a new tier)."""
        old = await self.store.get(validate_profile_name(name))
        profile, _ = validate_profile_input(edited_profile_input(old, changes), self.profiles_dir)
        get_adapter(profile.backend).validate_profile(profile)
        profile.has_secret, profile.enabled = old.has_secret, old.enabled
        profile.created_at, profile.updated_at = old.created_at, self.clock()
        await self._check_routes(profile)
        saved = await self.store.replace(profile)
        await self.heartbeat.beat()
        return saved

    async def _check_routes(self, profile: Profile) -> None:
        """The gateway routes over `profile` still work with it as edited: a cleared --model left a step that
        asked the provider for the route's own name."""
        for route in await self.routes.routes() if self.routes is not None else []:
            for step in route.chain:
                if profile.name in step.profiles:
                    try:
                        checked_step(step, profile, route.api)
                    except InvalidArgument as e:
                        raise InvalidArgument(f"route {route.name} would not work: {e.message}") from None

    async def set_key(self, name: str, body: dict[str, Any]) -> Profile:
        """Store a new API key for `name` (or its first). Output is scrubbed of the old key too (`KnownSecrets`)."""
        profile = await self.store.get(validate_profile_name(name))
        secret = validate_secret(body.get("api_key"))
        if secret is None:
            raise InvalidArgument("no key given: pipe it in with --api-key-stdin")
        old = await self.secret(profile) if profile.has_secret else None
        await asyncio.to_thread(self.secrets.set, name, secret)
        if not profile.has_secret:
            try:
                await self.store.set_has_secret(name, True, self.clock())
            except BaseException:
                await asyncio.to_thread(self.secrets.delete, name)  # no key the profile's row does not know of
                raise
        self.known.put(name, secret, replaced=old)
        return await self.store.get(name)

    async def get(self, name: str) -> Profile:
        return await self.store.get(name)

    async def list(self) -> list[Profile]:
        return await self.store.list()

    async def reset_circuit(self, name: str) -> Profile:
        profile = await self.store.get(name)
        await self.heartbeat.reset_circuit(profile)
        return profile

    async def usage(self) -> list[dict[str, Any]]:
        """`fleetd usage`: each profile's standing as the heartbeat judges it now, and what it spent of its daily
        cost cap (a profile over it showed as `available`, with nothing to say why runs passed it over)."""
        rows = await self.heartbeat.snapshot(await self.store.list())
        now = self.clock()
        for row in rows:
            profile = row["profile"]
            spent, room_at = None, None
            if profile.daily_cost is not None and self.attempt_costs is not None:
                recorded = await self.attempt_costs.profile_cost_since(profile.name, day_since(now, profile.created_at))
                spent = recorded + self.heartbeat.unrecorded_cost(profile.name)
                # When it is usable again by itself, as a run waiting for it is told (the table said only "over").
                room_at = await self._cost_room_at(profile, recorded, now)
            row["daily_cost_spent"], row["daily_cost_room_at"] = spent, room_at
            # Spent; and, as routing judges it, passed over: spent, or no room for one more attempt of its typical cost
            # (routes then say "no room in its daily cost": the table said "over" at $0.0276 of $0.03).
            row["daily_cost_reached"] = spent is not None and reaches(spent, profile.daily_cost)
            row["daily_cost_over"] = spent is not None and cost_cap_taken(
                spent, profile.daily_cost, self.heartbeat.in_flight.get(profile.name, 0),
                self.heartbeat.typical(profile.name),
            )  # fmt: skip
        return rows

    async def pin(self, name: str) -> Profile:
        """Make `name` its backend's active profile until it is exhausted or `auto` is asked."""
        profile = await self.store.get(name)
        status = self.heartbeat.status(profile.name)
        if status.state not in USABLE:  # a pin holds only while the profile is usable: this one ended at once
            why = f": {status.reason}" if status.reason else ""
            raise Conflict(f"profile {name} is {status.state}{why}; it cannot be the active one now")
        circuit = self.heartbeat.circuit(profile.name)
        if circuit.state == "open" and circuit.open_until is not None:  # the next choice would end the pin at once
            raise Conflict(
                f"profile {name}'s circuit is open until {local_text(circuit.open_until)}; it cannot be the active one "
                f"now (`fleetd profile reset-circuit {name}` closes it)"
            )
        await self.heartbeat.pin(profile)
        return profile

    async def auto(self, backend: str) -> str | None:
        """Hand `backend`'s choice back to the heartbeat; its active profile now (NotFound: no such profile)."""
        profile_adapter(backend)  # an unknown backend is bad input (exit 2), not a backend without profiles (exit 1)
        if not any(p.backend == backend for p in await self.store.list()):
            raise NotFound(f"no profile for backend {shown(backend)}")
        await self.heartbeat.unpin(backend)
        active, _ = self.heartbeat.active.get(backend, (None, False))
        return active

    async def set_enabled(self, name: str, enabled: bool) -> Profile:
        await self.store.set_enabled(name, enabled, self.clock())
        profile = await self.store.get(name)
        await self.heartbeat.set_enabled(profile, enabled)
        return profile

    async def environment(self, name: str) -> dict[str, Any]:
        """What a shell needs to use this profile's login by hand, and its backend's login command."""
        profile = await self.store.get(name)
        adapter = get_adapter(profile.backend)
        secret = await self.secret(profile) if profile.has_secret else None
        change = adapter.profile_env(profile, secret)
        return {
            "profile": profile.name,
            "backend": profile.backend,
            "set": change.set,
            "unset": list(change.unset),
            "login_argv": adapter.login_argv(profile),
            "auth": adapter.auth_state(profile),
            "auth_hint": adapter.auth_hint(profile),
        }

    # -- ProfileSource, for the executor ----------------------------------------------------------

    async def world(self, steps: list[ChainStep], direct: bool = False) -> tuple[World, dict[str, Profile]]:
        """What the router needs to know now about every profile the chain could use. `direct`: the
        gateway calls the provider itself, so a CLI missing from this host does not make a profile unusable."""
        backends = {step.backend for step in steps}
        profiles = [p for p in await self.store.list() if p.backend in backends]
        views = await self.heartbeat.views(profiles)
        now = self.clock()
        cost_room: dict[str, datetime | None] = {}
        for profile in profiles:
            if profile.daily_cost is not None and self.attempt_costs is not None:
                began = time.monotonic()
                spent = await self.attempt_costs.profile_cost_since(profile.name, day_since(now, profile.created_at))
                self._spent[profile.name] = (began, spent)
                cost_room[profile.name] = await self._cost_room_at(profile, spent, now)
        # No await from here on: the attempts under way are counted as they stand when the caller's attempt
        # reserves its profile (the executor reserves before its next await), so two cannot both take the last room.
        for profile in profiles:
            adapter = get_adapter(profile.backend)
            # The gateway (`direct`) calls the API itself: a missing CLI does not matter there, a missing key does.
            why = (None if direct else adapter.unavailable(profile)) or adapter.auth_problem(profile)
            # Before one has ended, each attempt under way is held at all that is left (they go one at a time).
            over, cost_busy = self._daily_cost_taken(profile, unknown_takes_rest=True) or (None, False)
            no_room, room_at, busy = None, None, False
            if full := self.heartbeat.no_room(profile):
                no_room, room_at, busy = full
                if busy:
                    # Taken by attempts under way: look again when one ends (they may use less than their profile's
                    # typical attempt, or nothing), not only when the window's records leave it (hours).
                    room_at = min(room_at, now + PENDING_RECHECK)
            elif over is not None and cost_busy:
                # Its daily cost, likewise: a wait as for a limit's room (a run with --on-exhausted wait failed).
                said = f"daily cost {over.removeprefix(NO_COST_ROOM)}" if over.startswith(NO_COST_ROOM) else over
                no_room, room_at, busy, over = said.removeprefix(NO_ROOM), now + PENDING_RECHECK, True, None
            probe_taken = profile.name in self.heartbeat.probing
            # What one of its attempts costs, for a run's --max-cost to look ahead by: not where its CLI stops itself.
            typical = self.heartbeat.typical(profile.name)
            views[profile.name] = replace(views[profile.name], unavailable=why, over_daily_cost=over, no_room=no_room,
                                          room_at=room_at, room_pending=busy, probe_taken=probe_taken,
                                          cost_room_at=cost_room.get(profile.name) if over else None,
                                          attempt_cost=typical.cost_usd if typical and not adapter.takes_cost_cap
                                          else None, attempt_tokens=typical.tokens if typical else None)  # fmt: skip
        return World(now, views), {p.name: p for p in profiles}

    async def _cost_room_at(self, profile: Profile, spent: float, now: datetime) -> datetime | None:
        """When `profile`, its daily cost taken by what it spent (`spent`, recorded, and what is not yet), has room
        again for an attempt of what its recent ones cost, should nothing more be spent; None: it has room now."""
        assert profile.daily_cost is not None and self.attempt_costs is not None
        unrecorded = self.heartbeat.unrecorded_cost(profile.name)
        typical = self.heartbeat.typical(profile.name)
        if not cost_cap_taken(spent + unrecorded, profile.daily_cost, 0, typical):
            return None
        # Read only while taken: each cost of the window, not a sum.
        found_for = (spent + unrecorded, profile.daily_cost, typical.cost_usd if typical else None, profile.created_at)
        known = self._cost_room.get(profile.name)
        # Found again once its time has come: a cost that left may have been replaced by one of the same amount since,
        # the spend unchanged.
        if known is None or known[0] != found_for or known[1] is None or known[1] <= now:
            costs = await self.attempt_costs.profile_costs_since(profile.name, day_since(now, profile.created_at))
            costs += [(now, unrecorded)] if unrecorded else []
            known = self._cost_room[profile.name] = (found_for, cost_room_at(costs, profile.daily_cost, typical))
        return known[1]

    def _daily_cost_taken(self, profile: Profile, unknown_takes_rest: bool = False) -> tuple[str, bool] | None:
        """`cost_cap_taken` of the profile's `--daily-cost` (spent as of the last `world`, and its attempts under way
        at what its recent ones cost): why, and whether only attempts under way take it (they may end cheaper: a
        gateway client comes back in a second, a run waits for one to end); or None."""
        read = self._spent.get(profile.name)
        if profile.daily_cost is None or read is None:
            return None
        spent = read[1] + self.heartbeat.unrecorded_cost(profile.name)
        cap = profile.daily_cost
        under_way = self.heartbeat.in_flight.get(profile.name, 0)
        typical = self.heartbeat.typical(profile.name)
        if not cost_cap_taken(spent, cap, under_way, typical, unknown_takes_rest):
            return None
        shown, cap_shown = usd_apart(spent, cap)
        if reaches(spent, cap):
            return f"{OVER_COST}{shown} of {cap_shown} in the last 24 h", False
        if typical is None:  # one at a time, as a key's calls (eight parallel calls spent $2.61 of a $1 cap)
            return (f"{NO_ROOM}{shown} of its {cap_shown} daily cost spent, {under_way} "
                    f"attempt(s) under way, what one costs not known yet"), True  # fmt: skip
        ways = f", {under_way} attempt(s) under way" if under_way else ""
        return (
            f"{NO_COST_ROOM}{shown} of {cap_shown} spent in the last 24 h{ways}, and one costs about "
            f"{usd(typical.cost_usd)}",
            # Only the attempts under way take it: there is room again as they end (they may cost less).
            under_way > 0 and not cost_cap_taken(spent, cap, 0, typical),
        )

    def room_taken(self, profile: Profile) -> tuple[str, datetime | None] | None:
        """`world`'s judgement of the profile's limits and daily cost with what is under way now, again, for a
        caller that awaited since it read the world (the gateway): why there is no room for its attempt, and
        when there is again (None: not by itself)."""
        now = self.clock()
        status = self.heartbeat.status(profile.name)
        if status.state == "exhausted" and (status.exhausted_until is None or status.exhausted_until > now):
            # Exhausted since the world was read (by its own count as a call ended): a call let through then was
            # counted a success that took the exhaustion back, and the next went through too.
            until = status.exhausted_until or now + timedelta(minutes=1)
            return f"exhausted until {local_text(until)}", until
        cost = self._daily_cost_taken(profile, unknown_takes_rest=True)
        if cost is not None:
            why, busy = cost
            if busy:
                return why, now + timedelta(seconds=1)
            # Spent: room again when `world` last found it (as the call's client is told), else not by itself.
            known = self._cost_room.get(profile.name)
            return why, known[1] if known is not None and known[1] is not None and known[1] > now else None
        full = self.heartbeat.no_room(profile)
        if full is None:
            return None
        why, until, busy = full
        # Taken by calls under way: a client comes back in a second, not at the window's end (they may free it).
        return f"{NO_ROOM}{why}", now + timedelta(seconds=1) if busy else until

    def claim_probe(self, profile: Profile) -> bool:
        return self.heartbeat.claim_probe(profile.name)

    def reserve(self, profile: Profile) -> None:
        self.heartbeat.reserve(profile.name)

    def unrecorded(self, profile: Profile, tokens: int, cost_usd: float) -> None:
        self.heartbeat.unrecorded(profile.name, tokens, cost_usd)

    def unsettled(self, profile: Profile, tokens: int, cost_usd: float) -> None:
        self.heartbeat.unsettled(profile.name, tokens, cost_usd)

    def recorded_use(self, profile: Profile) -> None:
        self.heartbeat.recorded_use(profile.name)

    def recorded_cost(self, profile: Profile, written_at: float) -> None:
        """The call log has the oldest unrecorded call of `profile` since `written_at` (monotonic): a spend read
        begun before then does not show its cost, so it is added there until the next `world` reads it again."""
        cost = self.heartbeat.recorded_cost(profile.name)
        read = self._spent.get(profile.name)
        if read is not None and read[0] < written_at:
            self._spent[profile.name] = (read[0], read[1] + cost)

    def free_probe(self, profile: Profile) -> None:
        self.heartbeat.free_probe(profile.name)

    def release(self, profile: Profile, probe: bool = False) -> None:
        self.heartbeat.release(profile.name, probe)

    async def attempt_finished(
        self, profile: Profile, parsed: ParsedOutput, finished_at: datetime, cost_usd: float | None,
        settle: Settle | None = None, end: Write | None = None, key: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        await self.heartbeat.attempt_finished(profile, parsed, finished_at, cost_usd, settle, end, key)

    async def attempts_finished(
        self, done: list[tuple[Profile, ParsedOutput, datetime, float | None]], settles: Sequence[Settle] = (),
        keys: Sequence[tuple[int, int] | None] = (),
    ) -> None:  # fmt: skip
        await self.heartbeat.attempts_finished(done, settles, keys=keys)

    async def candidate_skipped(self, loop: Loop, run_id: int, profile: str, why: str) -> None:
        await self.heartbeat.events.emit(
            self.clock(), "candidate.unavailable", f"run {run_id} of loop {loop.name} skipped {why}",
            backend=None, profile=profile, run_id=run_id, loop=loop.name,
        )  # fmt: skip

    async def secret(self, profile: Profile) -> str | None:
        return await asyncio.to_thread(self.secrets.get, profile.name)

    def key_missing(self, profile: Profile) -> str:
        """What an attempt of `profile`, which has a key, says when the secret store no longer holds it."""
        return (
            f"profile {profile.name}'s API key is not in the secret store ({self.secrets.description}): "
            f"fleetd profile set-key {profile.name} --api-key-stdin, then fleetd profile enable {profile.name}"
        )

    async def logged_in(self, profile: Profile) -> bool:
        """Whether a login profile's CLI credentials are where its CLI keeps them (`profile show` then has no login
        to ask for). Reads files."""
        adapter = get_adapter(profile.backend)
        if adapter.auth != "login" or profile.has_secret:
            return False
        return await asyncio.to_thread(adapter.login_problem, profile, os.environ) is None

    async def has_key_missing(self, profile: Profile) -> bool:
        """Whether `profile` has a key that the secret store no longer holds (an unusable store: not known here,
        `fleetd doctor` says why)."""
        if not profile.has_secret:
            return False
        try:
            return await self.secret(profile) is None
        except Exception:
            return False

    async def current_secret(self, profile: Profile) -> str | None:
        """The profile's key as of its last add or set-key, from memory: for a caller on every request's path
        (the gateway), which must never keep a key of its own (`KnownSecrets.current`)."""
        return await self.known.current(profile.name)

    async def known_secrets(self) -> frozenset[str]:
        return await self.known.values()
