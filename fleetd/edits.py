"""Input bodies checked for their fields: a POST's against the fields it knows (`known_fields`), and a PATCH
body (`loop edit`, `profile edit`) split into the fields to set and `clear`, the fields to unset, checked
against what may be edited, before the caller lays them over the stored definition's `add` body."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from fleetd.errors import InvalidArgument, shown


def known_fields(body: Mapping[str, Any], known: Collection[str], what: str) -> None:
    """Refuse a field `what`'s body does not have: a typo (`timout`) or a CLI flag's name (`paused`) was
    dropped without a word, and the thing saved without it."""
    for key in body:
        if key not in known:
            raise InvalidArgument(f"unknown {what} field {shown(key)} (fields: {', '.join(known)})")


def split_changes(
    changes: dict[str, Any],
    *,
    what: str,
    name: str,
    editable: Collection[str],
    clearable: Collection[str],
    refused: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """(fields to set, fields to clear). `what` names the thing ("loop"), `name` its name (which cannot
    change); `refused` says, per field, how that field is changed instead. Raises InvalidArgument."""
    clear = changes.get("clear") or []
    if not isinstance(clear, list) or not all(isinstance(key, str) for key in clear):
        raise InvalidArgument("clear must be a list of field names")
    for key in clear:
        if key not in clearable:
            raise InvalidArgument(f"cannot clear {shown(key)} (clearable: {', '.join(clearable)})")
    given = {key: value for key, value in changes.items() if key != "clear" and value is not None}
    for key in given:
        if key == "name":
            if given[key] != name:
                raise InvalidArgument(f"a {what} cannot be renamed: add the new one and remove the old")
        elif refused and key in refused:
            raise InvalidArgument(refused[key])
        elif key not in editable:
            raise InvalidArgument(f"cannot edit {shown(key)} (editable: {', '.join(editable)})")
        elif key in clear:
            raise InvalidArgument(f"{key} is both given and cleared: give one")
    return given, clear
