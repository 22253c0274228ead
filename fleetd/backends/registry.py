"""Backend names → adapters. A new backend is one module and one entry here."""

from __future__ import annotations

from fleetd.backends.aider import AiderAdapter
from fleetd.backends.base import Adapter
from fleetd.backends.claude_code import ClaudeCodeAdapter
from fleetd.backends.codex import CodexAdapter
from fleetd.backends.command import CommandAdapter
from fleetd.backends.gemini import GeminiAdapter
from fleetd.backends.openai_compat import OpenAICompatAdapter
from fleetd.errors import InvalidArgument

ADAPTERS: dict[str, Adapter] = {
    "command": CommandAdapter(),
    "claude_code": ClaudeCodeAdapter(),
    "codex": CodexAdapter(),
    "gemini": GeminiAdapter(),
    "aider": AiderAdapter(),
    "openai_compat": OpenAICompatAdapter(),
}


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise InvalidArgument(f"unknown backend {name!r} (known: {known})") from None


def profile_adapter(name: str) -> Adapter:
    """The adapter of a backend that takes profiles (InvalidArgument naming those, for another)."""
    adapter = ADAPTERS.get(name)
    if adapter is None:
        known = ", ".join(sorted(n for n, a in ADAPTERS.items() if a.needs_profile))
        raise InvalidArgument(f"unknown backend {name!r} (backends with profiles: {known})")
    if not adapter.needs_profile:
        raise InvalidArgument(f"the {name} backend takes no profiles")
    return adapter


def backend_names() -> tuple[str, ...]:
    return tuple(ADAPTERS)


def routed_backends() -> tuple[str, ...]:
    """The backends whose runs the router drives: those that run under a profile."""
    return tuple(name for name, adapter in ADAPTERS.items() if adapter.needs_profile)
