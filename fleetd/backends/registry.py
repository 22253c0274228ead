"""Backend names → adapters. A new backend is one module and one entry here."""

from __future__ import annotations

from fleetd.backends.base import Adapter
from fleetd.backends.command import CommandAdapter
from fleetd.errors import InvalidArgument

ADAPTERS: dict[str, Adapter] = {
    "command": CommandAdapter(),
}


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise InvalidArgument(f"unknown backend {name!r} (known: {known})") from None
