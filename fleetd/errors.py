"""Errors that carry an API code and map to a 4xx answer and a CLI exit status."""

from __future__ import annotations


class FleetdError(Exception):
    """A user-facing error: `code` is stable, the message is one line."""

    status = 400
    code = "invalid_argument"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


def shown(value: object, limit: int = 60) -> str:
    """A user's value quoted for an error message and cut short, so a 5,000-character path or
    number still gives one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def shown_without_credentials(url: str) -> str:
    """A URL that carries `user:password@`, quoted for an error message without them."""
    scheme, sep, rest = url.partition("://")
    return shown(f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url.rpartition("@")[2])


class InvalidArgument(FleetdError):
    status = 400
    code = "invalid_argument"


class NotFound(FleetdError):
    status = 404
    code = "not_found"


class Conflict(FleetdError):
    status = 409
    code = "conflict"


class NoProfile(FleetdError):
    """An agent loop that no profile could run: the fix is another command (`fleetd profile add …`)."""

    status = 409
    code = "no_profile"
