"""The validation of user input into a profile (records.profile). Pure but for path checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fleetd.edits import known_fields, split_changes
from fleetd.errors import InvalidArgument, shown, shown_without_credentials
from fleetd.heartbeat.limits import parse_limits
from fleetd.loops.model import optional_text, validate_path
from fleetd.names import checked_name
from fleetd.records.profile import PRICE_FIELDS, TIERS, Profile, is_loopback
from fleetd.routing.policy import parse_usd
from fleetd.timefmt import DurationError, parse_duration

MAX_DEFAULT_RESET_S = 86400.0
# USD per million tokens. Far above any real price, and low enough that a cost (price times any
# token count fleetd can see) stays a finite number that JSON and SQLite can hold.
MAX_PRICE_PER_MTOK = 1_000_000.0


def validate_profile_name(name: object) -> str:
    return checked_name("profile", name)


def _base_url(value: str) -> str:
    message = f"invalid --base-url {shown(value)}: use http(s)://host[:port]/path"
    try:
        parsed = urlparse(value)
        parsed.port  # noqa: B018 - parsed lazily: a bad port raises here, not later in an adapter
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidArgument(message)
    except ValueError:  # e.g. "http://[::1" (an unclosed IPv6 bracket) or a port past 65535
        raise InvalidArgument(message) from None
    if any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidArgument(message)
    if "@" in parsed.netloc:  # it would be shown by `profile show`, `profile env` and every --json answer
        raise InvalidArgument(
            f"invalid --base-url {shown_without_credentials(value)}: no credentials in the URL; "
            "give the key with --api-key-stdin"
        )
    if parsed.query or parsed.fragment or value.endswith(("?", "#")):
        # fleetd appends the API's path (/chat/completions) to it; a key in the query would also be shown everywhere
        cut = min(i for i in (value.find("?"), value.find("#"), len(value)) if i >= 0)
        raise InvalidArgument(
            f"invalid --base-url {shown(value[: cut + 1] + '…')}: no query or fragment (fleetd appends the API's "
            "path to it); give a key with --api-key-stdin"
        )
    return value


def _price(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidArgument(f"invalid {flag} {shown(value)}: a number")
    try:
        price = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int past float's range
        raise InvalidArgument(f"invalid {flag} {shown(value)}: a number") from None
    if price < 0:
        raise InvalidArgument(f"{flag} cannot be negative")
    if not math.isfinite(price) or price > MAX_PRICE_PER_MTOK:
        raise InvalidArgument(
            f"invalid {flag} {shown(value)}: a finite number of USD per million tokens, "
            f"at most {MAX_PRICE_PER_MTOK:,.0f}"
        )
    return price


def validate_secret(value: object) -> str | None:
    """An API key as read from stdin: one line, not empty. Never quoted back in a message."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument("the API key must be a string")
    if not value.strip():
        raise InvalidArgument("the API key on stdin is empty")
    secret = value.strip()
    if "\n" in secret or "\r" in secret:
        raise InvalidArgument("the API key on stdin must be a single line")
    if "\x00" in secret:
        raise InvalidArgument("the API key on stdin contains a NUL byte")
    # Every key ends up in an HTTP header (the CLIs' or fleetd's own), which carries printable ASCII only: a
    # curly quote pasted with it failed each attempt. Where, not which: the message must not quote the key.
    odd = next((i for i, c in enumerate(secret) if not " " <= c <= "~"), None)
    if odd is not None:
        raise InvalidArgument(f"the API key on stdin has a character that is not printable ASCII (character {odd + 1})")
    return secret


def validate_profile_input(body: dict[str, Any], default_dir: Path) -> tuple[Profile, str | None]:
    """Returns the profile and the secret (API key) that came with it, which is kept apart."""
    known_fields(body, ("name", "backend", "api_key", "config_dir", "enabled", *EDITABLE), "profile")
    name = validate_profile_name(body.get("name"))
    backend = optional_text(body, "backend")
    if not backend:
        raise InvalidArgument("a profile needs --backend")
    secret = validate_secret(body.get("api_key"))
    base_url = optional_text(body, "base_url")
    if base_url is not None:
        base_url = _base_url(base_url)
    tier = body.get("tier")
    if tier is None:
        if base_url is not None and is_loopback(base_url) and secret is None:
            tier = "local"
        else:
            tier = "metered" if secret is not None else "subscription"
    if tier not in TIERS:
        raise InvalidArgument(f"invalid --tier {shown(tier)}: use local, subscription or metered")
    config_dir = body.get("config_dir")
    if config_dir is not None:
        config_dir = validate_path(config_dir, "config directory")
    prices = {key: _price(body, key) for key in PRICE_FIELDS}
    model = optional_text(body, "model")
    raw_limits = body.get("limits") or []
    if not isinstance(raw_limits, list) or not all(isinstance(x, str) for x in raw_limits):
        raise InvalidArgument("--limit values must be strings like 5h=4000000tok")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidArgument("enabled must be true or false")
    profile = Profile(
        name=name,
        backend=backend,
        tier=tier,
        config_dir=config_dir or str(default_dir / name),
        base_url=base_url or None,
        model=model or None,
        has_secret=secret is not None,
        enabled=enabled,
        limits=parse_limits(raw_limits),
        **prices,
    )
    if body.get("default_reset") not in (None, ""):
        try:
            profile.default_reset_s = parse_duration(str(body["default_reset"]))
        except DurationError as e:
            raise InvalidArgument(f"invalid --default-reset: {e}") from None
        if profile.default_reset_s > MAX_DEFAULT_RESET_S:
            raise InvalidArgument("--default-reset is at most 1d")
    profile.daily_cost = parse_usd(body.get("daily_cost"), "--daily-cost")
    return profile, secret


# -- editing: the stored profile as `profile add` input, the changes over it, validated again in full --------
CLEARABLE = ("base_url", "model", "limits", *PRICE_FIELDS, "default_reset", "daily_cost")
EDITABLE = ("tier", *CLEARABLE)


def profile_input(profile: Profile) -> dict[str, Any]:
    """The `profile add` body (without its key) that defines `profile`."""
    body: dict[str, Any] = {
        "name": profile.name,
        "backend": profile.backend,
        "tier": profile.tier,
        "config_dir": profile.config_dir,
        "base_url": profile.base_url,
        "model": profile.model,
        # Exact figures: `Limit.describe` rounds its window for reading.
        "limits": [f"{_number(lim.window_s)}={_number(lim.amount)}{lim.unit}" for lim in profile.limits],
        "default_reset": _number(profile.default_reset_s) if profile.default_reset_s is not None else None,
        "daily_cost": profile.daily_cost,
        "enabled": profile.enabled,
        **{key: getattr(profile, key) for key in PRICE_FIELDS},
    }
    return {key: value for key, value in body.items() if value is not None}


def _number(value: float) -> str:
    return format(value, "f").rstrip("0").rstrip(".")


def edited_profile_input(profile: Profile, changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` (fields to set, and `clear`: fields to unset) over the `profile add` body of `profile`."""
    given, clear = split_changes(
        changes, what="profile", name=profile.name, editable=EDITABLE, clearable=CLEARABLE,
        refused={"api_key": "a profile's key is changed by `fleetd profile set-key NAME --api-key-stdin`"},
    )  # fmt: skip
    body = {**profile_input(profile), **given}
    for key in clear:
        body.pop(key, None)
    return body
