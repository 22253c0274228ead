"""The daemon's in-memory cache of every profile's key, which all output is scrubbed of."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from fleetd.profiles.secrets import SecretStoreUnavailable
from fleetd.profiles.service import KnownSecrets
from fleetd.records.profile import Profile

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY_A, KEY_B = "sk-key-of-a-0123456789", "sk-key-of-b-9876543210"


def profile(name: str, has_secret: bool = True) -> Profile:
    return Profile(name, "claude_code", "api", f"/nowhere/{name}", has_secret=has_secret, created_at=T0, updated_at=T0)


class Store:
    """A secret store and a profile store in one: the cache reads both."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = dict(keys)
        self.profiles = [profile(name) for name in keys] + [profile("login", has_secret=False)]
        self.gets = 0
        self.refuse = False
        self.listing: asyncio.Event | None = None  # when set, list() waits for it

    def get(self, name: str) -> str | None:
        self.gets += 1
        if self.refuse:
            raise SecretStoreUnavailable("the OS keyring is locked")
        return self.keys.get(name)

    async def list(self) -> list[Profile]:
        snapshot = list(self.profiles)
        if self.listing is not None:
            await self.listing.wait()
        return snapshot


def known(store: Store) -> KnownSecrets:
    return KnownSecrets(store, store)  # type: ignore[arg-type]


def test_loads_once_then_follows_adds_and_removals() -> None:
    async def go() -> None:
        store = Store({"a": KEY_A, "b": KEY_B, "short": "none"})
        cache = known(store)
        # A placeholder key ("none") is not worth mangling every run's output for.
        assert await cache.values() == {KEY_A, KEY_B}
        assert store.gets == 3
        cache.put("c", "sk-key-of-c-55555")
        cache.drop("a")
        # A removed profile's key stays scrubbed until the daemon stops: a run of it may still print it.
        assert await cache.values() == {KEY_A, KEY_B, "sk-key-of-c-55555"}
        assert store.gets == 3  # from memory

    asyncio.run(go())


def test_an_unreadable_key_is_not_cached_as_absent() -> None:
    async def go() -> None:
        store = Store({"a": KEY_A})
        store.refuse = True
        cache = known(store)
        assert await cache.values() == set()
        store.refuse = False
        assert await cache.values() == {KEY_A}

    asyncio.run(go())


def test_a_key_added_while_loading_is_not_lost() -> None:
    async def go() -> None:
        store = Store({"a": KEY_A})
        store.listing = asyncio.Event()
        cache = known(store)
        loading = asyncio.create_task(cache.values())
        await asyncio.sleep(0)  # the load has listed the profiles: only "a"
        store.keys["b"] = KEY_B
        store.profiles.append(profile("b"))
        cache.put("b", KEY_B)
        store.listing.set()
        assert await loading == {KEY_A, KEY_B}
        assert await cache.values() == {KEY_A, KEY_B}

    asyncio.run(go())


def test_a_rotated_key_is_scrubbed_with_the_new_one_loaded_or_not() -> None:
    """`profile set-key`: output may hold the old key (a run started under it, old output shown again)."""

    async def go() -> None:
        new_a = "sk-new-key-of-a-4242424242"
        loaded = known(Store({"a": KEY_A, "b": KEY_B}))
        assert await loaded.values() == {KEY_A, KEY_B}
        loaded.put("a", new_a)  # the cache knew the old key itself
        assert await loaded.values() == {KEY_A, new_a, KEY_B}

        store = Store({"a": KEY_A, "b": KEY_B})
        cold = known(store)
        cold.put("a", new_a, replaced=KEY_A)  # rotated before any use: the service hands the old key over
        store.keys["a"] = new_a
        assert await cold.values() == {KEY_A, new_a, KEY_B}
        cold.put("a", KEY_A, replaced=new_a)  # rotated back: the current key is not "retired"
        assert KEY_A in await cold.values()

    asyncio.run(go())


def test_the_current_key_follows_a_rotation_and_a_removal() -> None:
    async def go() -> None:
        store = Store({"a": KEY_A})
        cache = known(store)
        assert await cache.current("a") == KEY_A
        store.keys["a"] = KEY_B
        cache.put("a", KEY_B, replaced=KEY_A)
        assert await cache.current("a") == KEY_B
        cache.drop("a", KEY_B)
        assert await cache.current("a") is None
        store.keys["a"] = KEY_A
        store.refuse = True  # a load that could not read every key is not kept: the store is asked each time
        fresh = known(store)
        with pytest.raises(SecretStoreUnavailable):
            await fresh.current("a")
        store.refuse = False
        assert await fresh.current("a") == KEY_A

    asyncio.run(go())
