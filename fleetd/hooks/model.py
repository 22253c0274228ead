"""The validation of user input into a hook (records.hook). Pure: no I/O."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from fleetd.edits import known_fields
from fleetd.errors import InvalidArgument, shown, shown_without_credentials
from fleetd.loops.model import optional_text
from fleetd.names import checked_name
from fleetd.records.event import parse_patterns
from fleetd.records.hook import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S, Hook
from fleetd.timefmt import DurationError, parse_duration

MAX_COMMAND = 4096
MAX_URL = 2048
# An HMAC key shorter than this guards little, and the scrubber leaves secrets under 8 characters alone.
MIN_SECRET = 16
MAX_SECRET = 1024


def validate_hook_name(name: object) -> str:
    return checked_name("hook", name)


def validate_hook_input(body: dict[str, Any]) -> tuple[Hook, str | None]:
    """The hook, and the webhook secret that came with it (kept apart: it goes to the secret store)."""
    known_fields(body, ("name", "on", "exec", "webhook", "secret", "timeout"), "hook")
    name = validate_hook_name(body.get("name"))
    if body.get("on") is None:
        raise InvalidArgument("a hook needs --on EVENTS, e.g. --on run.failed,circuit.opened")
    on = parse_patterns(body.get("on"))
    command, url = optional_text(body, "exec"), optional_text(body, "webhook")
    if (command is None) == (url is None):
        raise InvalidArgument("a hook needs exactly one of --exec COMMAND or --webhook URL")
    secret = body.get("secret")
    if command is not None:
        if secret is not None:
            raise InvalidArgument("--secret-stdin is for --webhook hooks (an --exec hook gets no secret)")
        target = _command(command)
    else:
        assert url is not None
        target = validate_url(url)
        if secret is not None:
            secret = _secret(secret)
    timeout = _timeout(body.get("timeout"))
    hook = Hook(name=name, on=on, kind="exec" if command is not None else "webhook", target=target,
                timeout_s=timeout, has_secret=secret is not None)  # fmt: skip
    return hook, secret


def _command(command: str) -> str:
    if not command.strip():
        raise InvalidArgument("--exec needs a command, e.g. --exec 'notify-send fleetd \"$FLEETD_EVENT_TYPE\"'")
    if len(command) > MAX_COMMAND:
        raise InvalidArgument(f"--exec command is longer than {MAX_COMMAND} characters")
    return command


def validate_url(url: str) -> str:
    """http(s)://host[:port]/path: the user's own endpoint. Credentials belong in --secret-stdin, not
    in the URL (which `hook list` shows and the database keeps)."""
    message = f"invalid --webhook {shown(url)}: use http(s)://host[:port]/path"
    if len(url) > MAX_URL:
        raise InvalidArgument(f"--webhook URL is longer than {MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidArgument(message)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily: a bad port raises here
    except ValueError:  # an unclosed IPv6 bracket, a port past 65535
        raise InvalidArgument(message) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(message)
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(
            f"--webhook {shown_without_credentials(url)}: no credentials in the URL; sign with --secret-stdin instead"
        )
    return url


def _secret(secret: object) -> str:
    if not isinstance(secret, str) or not secret.strip():
        raise InvalidArgument("--secret-stdin: the secret is empty")
    secret = secret.strip()
    if len(secret) < MIN_SECRET or len(secret) > MAX_SECRET:
        raise InvalidArgument(
            f"--secret-stdin: use {MIN_SECRET} to {MAX_SECRET} characters (e.g. `openssl rand -hex 32`)"
        )
    if any(not c.isprintable() for c in secret):
        raise InvalidArgument("--secret-stdin: the secret holds control characters")
    return secret


def _timeout(value: object) -> float:
    if value is None:
        return DEFAULT_TIMEOUT_S
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise InvalidArgument(f"invalid --timeout {shown(value)}: a duration, e.g. 10s")
    try:
        seconds = parse_duration(str(value)) if isinstance(value, str) else float(value)
    except DurationError as e:
        raise InvalidArgument(f"invalid --timeout: {e}") from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise InvalidArgument(f"invalid --timeout {shown(value)}: above 0s, at most {MAX_TIMEOUT_S:g}s")
    return seconds
