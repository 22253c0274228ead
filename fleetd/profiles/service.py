"""Profiles as the daemon manages them: records in SQLite, secrets in the secret store, a private
config directory each. Blocking keyring calls run in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetd.backends.registry import get_adapter
from fleetd.backends.result import ParsedOutput
from fleetd.errors import Conflict, InvalidArgument, NotFound
from fleetd.heartbeat.service import Heartbeat
from fleetd.loops.model import Loop
from fleetd.paths import UnsafeDirectory, private_dir
from fleetd.profiles.model import Profile, validate_profile_input
from fleetd.profiles.secrets import SecretStore
from fleetd.routing.policy import candidates
from fleetd.store.loops import LoopStore
from fleetd.store.profiles import ProfileStore


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
    ) -> None:
        self.store = store
        self.loops = loops
        self.secrets = secrets
        self.heartbeat = heartbeat
        self.profiles_dir = profiles_dir
        self.clock = clock

    async def add(self, body: dict[str, Any]) -> Profile:
        profile, secret = validate_profile_input(body, self.profiles_dir)
        adapter = get_adapter(profile.backend)
        if not adapter.needs_profile:
            raise InvalidArgument(f"the {profile.backend} backend takes no profiles")
        if profile.backend == "openai_compat" and not profile.base_url:
            raise InvalidArgument("an openai_compat profile needs --base-url")
        profile.created_at = profile.updated_at = self.clock()
        # The secret goes in first and the row second: a refused secret leaves nothing behind, and a
        # duplicate name is caught before touching the keyring.
        with contextlib.suppress(NotFound):
            await self.store.get(profile.name)
            raise Conflict(f"profile {profile.name!r} already exists")
        config_dir = Path(profile.config_dir)
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

    async def remove(self, name: str) -> None:
        profile = await self.store.get(name)
        users = [lp.name for lp in await self.loops.list() if name in lp.profiles]
        if users:
            raise Conflict(f"profile {name!r} is in the pool of loop(s) {', '.join(users)}; change those first")
        if profile.has_secret:
            await asyncio.to_thread(self.secrets.delete, name)
        await self.store.delete(name)
        await self.heartbeat.forget(name)
        default_dir = self.profiles_dir / name
        if Path(profile.config_dir) == default_dir:
            # fleetd made this directory; a directory the user named stays theirs.
            shutil.rmtree(default_dir, ignore_errors=True)

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
        }

    # -- ProfileSource, for the executor ----------------------------------------------------------

    async def plan(self, loop: Loop) -> tuple[list[Profile], datetime | None]:
        """The loop's pool, usable profiles in the order to try, and the earliest reset of the rest."""
        pool = candidates(loop.profiles, await self.store.list(loop.backend), loop.backend)
        return await self.heartbeat.plan(pool)

    def reserve(self, profile: Profile) -> None:
        self.heartbeat.reserve(profile.name)

    def release(self, profile: Profile) -> None:
        self.heartbeat.release(profile.name)

    async def attempt_finished(
        self, profile: Profile, parsed: ParsedOutput, finished_at: datetime, cost_usd: float | None
    ) -> None:
        await self.heartbeat.attempt_finished(profile, parsed, finished_at, cost_usd)

    async def run_waiting(self, loop: Loop, run_id: int, until: datetime) -> None:
        await self.heartbeat.events.emit(
            self.clock(), "run.waiting", f"run {run_id} of loop {loop.name} waits until {until.isoformat()}",
            backend=loop.backend, run_id=run_id, loop=loop.name, until=until,
        )  # fmt: skip

    async def secret(self, profile: Profile) -> str | None:
        return await asyncio.to_thread(self.secrets.get, profile.name)
