"""Hooks as the daemon manages them: rows in SQLite, a webhook's secret in the secret store (like a
profile's key: never in the database, the logs, the events or an answer), delivery by the dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetd.errors import Conflict, NotFound
from fleetd.hooks.dispatch import HookDispatcher, LastDelivery
from fleetd.hooks.model import validate_hook_input, validate_hook_name
from fleetd.profiles.secrets import SecretStore
from fleetd.profiles.service import KnownSecrets
from fleetd.records.hook import Delivery, Hook
from fleetd.store.events import EventLog
from fleetd.store.hooks import HookStore
from fleetd.timefmt import to_iso

log = logging.getLogger("fleetd.hooks")
# Profile names cannot hold ':' (records: NAME_RE), so a hook's secret never shares a profile's entry.
SECRET_PREFIX = "hook:"


def secret_name(hook: str) -> str:
    return SECRET_PREFIX + hook


async def secret_names(store: HookStore) -> list[str]:
    """For the scrubber (profiles.service.KnownSecrets): every hook secret's entry in the secret store."""
    return [secret_name(h.name) for h in await store.list() if h.has_secret]


class HookService:
    def __init__(
        self,
        store: HookStore,
        events: EventLog,
        secrets: SecretStore,
        known: KnownSecrets,
        *,
        clock: Callable[[], datetime],
        cwd: Path,
        backoff_base: float = 1.0,
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.known = known
        self.clock = clock
        self.dispatcher = HookDispatcher(
            store, events, secret=self.secret, known_secrets=known.values, clock=clock, cwd=cwd,
            backoff_base=backoff_base,
        )  # fmt: skip

    async def start(self) -> None:
        await self.dispatcher.start()

    async def stop(self, grace: float) -> None:
        await self.dispatcher.stop(grace)

    async def add(self, body: dict[str, Any]) -> Hook:
        hook, secret = validate_hook_input(body)
        hook = replace(hook, created_at=self.clock())
        with contextlib.suppress(NotFound):
            await self.store.get(hook.name)
            raise Conflict(f"hook {hook.name!r} already exists")
        # The secret goes in first and the row second: a refused secret leaves nothing behind.
        if secret is not None:
            await asyncio.to_thread(self.secrets.set, secret_name(hook.name), secret)
        try:
            saved = await self.store.insert(hook)
        except BaseException:
            if secret is not None:
                await asyncio.to_thread(self.secrets.delete, secret_name(hook.name))
            raise
        if secret is not None:
            self.known.put(secret_name(hook.name), secret)
        await self.dispatcher.reload()
        return saved

    async def list(self) -> list[Hook]:
        return await self.store.list()

    async def remove(self, name: str) -> None:
        hook = await self.store.get(validate_hook_name(name))
        await self.store.delete(hook.name)
        if hook.has_secret:
            await asyncio.to_thread(self.secrets.delete, secret_name(hook.name))
            self.known.drop(secret_name(hook.name))
        await self.dispatcher.reload()

    async def test(self, name: str) -> Delivery:
        """Deliver a synthetic `hook.test` event to hook NAME now, once (no retries: the answer is for a
        person waiting at a terminal). It is not written to the event log."""
        hook = await self.store.get(validate_hook_name(name))
        now = self.clock()
        event = {
            "id": 0,  # not in the event log
            "at": to_iso(now),
            "type": "hook.test",
            "backend": None,
            "profile": None,
            "message": f"a test delivery to hook {hook.name} (fleetd hook test)",
            "data": {"hook": hook.name},
        }
        delivery = await self.dispatcher.deliver(hook, event, retries=False)
        log.info("hook %s: test delivery %s: %s", hook.name, "ok" if delivery.ok else "failed", delivery.detail)
        return delivery

    def status(self, name: str) -> tuple[LastDelivery | None, int, int]:
        return self.dispatcher.last(name)

    async def secret(self, hook: Hook) -> str | None:
        return await asyncio.to_thread(self.secrets.get, secret_name(hook.name))
