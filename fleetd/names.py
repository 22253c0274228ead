"""The rules for names: a loop's, profile's, hook's and gateway key's, and a gateway route's.

Kept apart from the validation of everything else so the CLI can check a name before it becomes part of
a request's path (where a '/' would name another resource) without loading the daemon's models.
"""

from __future__ import annotations

import re

from fleetd.errors import InvalidArgument, shown

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A route's name is the model name clients send: letters, digits and the punctuation model names use.
ROUTE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def checked_name(what: str, name: object) -> str:
    """A loop's, profile's, hook's or gateway key's name: the one rule for names, with `what` in the error."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid {what} name {shown(name)}: "
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def checked_route_name(name: object) -> str:
    if not isinstance(name, str) or not ROUTE_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid route name {shown(name)}: the model name clients ask for, 1-128 letters, digits, "
            "'.', '_', ':' or '-', starting with a letter or digit"
        )
    return name
