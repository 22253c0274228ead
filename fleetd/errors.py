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


class InvalidArgument(FleetdError):
    status = 400
    code = "invalid_argument"


class NotFound(FleetdError):
    status = 404
    code = "not_found"


class Conflict(FleetdError):
    status = 409
    code = "conflict"
