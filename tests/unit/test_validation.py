"""Input validation at the edge: every number fleetd keeps is finite and bounded, every path and
text can be handed to the OS, and a refusal names the field. Table-driven over the pure validators."""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleetd.errors import InvalidArgument
from fleetd.heartbeat.limits import MAX_LIMIT_AMOUNT, parse_limit
from fleetd.loops.model import MAX_OUTPUT_CAP, validate_loop_input
from fleetd.loops.schedule import build_trigger, never_fires
from fleetd.profiles.model import MAX_PRICE_PER_MTOK, validate_profile_input
from fleetd.records.loop import Schedule

LOOP = {"name": "x", "every": "1h", "command": "true"}
PROFILE = {"name": "p", "backend": "claude_code"}


def loop(**fields: Any) -> dict[str, Any]:
    return {**LOOP, **fields}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"timeout": "9" * 400}, "too long"),
        ({"timeout": math.inf}, "invalid --timeout"),
        ({"timeout": True}, "invalid --timeout"),
        ({"timeout": ["1h"]}, "invalid --timeout"),
        ({"output_cap": MAX_OUTPUT_CAP + 1}, "invalid --output-cap"),
        ({"output_cap": 10**30}, "invalid --output-cap"),
        ({"output_cap": 1023}, "invalid --output-cap"),
        ({"output_cap": 4096.0}, "invalid --output-cap"),
        ({"output_cap": True}, "invalid --output-cap"),
        ({"enabled": "no"}, "enabled must be true or false"),
        ({"dir": "/tmp\x00"}, "directory contains a NUL byte"),
        ({"dir": "/" + "d" * 300}, "File name too long"),
        ({"dir": "/d" * 2100}, "longer than 4096 bytes"),
        ({"dir": 5}, "directory must be a string"),
        ({"prompt_file": "/etc/hostname\x00"}, "prompt file contains a NUL byte"),
        ({"env": ["A=1", "B=2", "A=2"]}, "--env 'A' given twice: give each variable once"),  # A=2 silently won
        ({"command": "true\x00"}, "command contains a NUL byte"),
        ({"timezone": "UTC\x00"}, "timezone contains a NUL byte"),
        ({"env": ["A=b\x00"]}, "contains a NUL byte"),
        ({"env": {"A": 1}}, "must be a string"),
        ({"env": ["A\n=b"]}, "invalid environment variable name"),
        ({"agent_args": ["-x\x00"]}, "--agent-arg"),
        ({"name": "x\n"}, "invalid loop name"),
    ],
)
def test_loop_input_refused(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment.replace("(", r"\(")):
        validate_loop_input(loop(**fields), "UTC")


def test_loop_input_bounds_are_inclusive() -> None:
    assert validate_loop_input(loop(output_cap=MAX_OUTPUT_CAP), "UTC").output_cap == MAX_OUTPUT_CAP
    assert validate_loop_input(loop(timeout="36500d"), "UTC").timeout_s == 36500 * 86400


def test_a_refused_message_stays_short() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_loop_input(loop(dir="/" + "d" * 5000), "UTC")
    assert len(caught.value.message) < 200


def test_a_trigger_without_fires_is_named_by_its_kind() -> None:
    assert never_fires(Schedule("cron", "0 0 31 2 *", "UTC")) == "cron expression '0 0 31 2 *' never fires"
    assert never_fires(Schedule("at", "2001-01-01T00:00", "UTC")) == "--at 2001-01-01T00:00 is in the past"


def test_an_at_time_past_the_calendar_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        build_trigger(Schedule("at", "9999-12-31T23:59:59-12:00", "UTC"), datetime.now(UTC))


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"price_input": math.inf}, "a finite number"),
        ({"price_input": "inf"}, "a finite number"),
        ({"price_output": math.nan}, "a finite number"),
        ({"price_output": "nan"}, "a finite number"),
        ({"price_cache_read": 10**400}, "a number"),
        ({"price_cache_write": MAX_PRICE_PER_MTOK * 2}, "at most"),
        ({"price_input": True}, "a number"),
        ({"price_input": -0.5}, "cannot be negative"),
        ({"limits": ["5h=" + "9" * 400 + "tok"]}, "at most"),
        ({"base_url": "http://[::1"}, "invalid --base-url"),
        ({"base_url": "http://localhost:99999"}, "invalid --base-url"),
        ({"base_url": "http://host/a b"}, "invalid --base-url"),
        ({"base_url": 5}, "base_url must be a string"),
        ({"config_dir": "/tmp/x\x00"}, "contains a NUL byte"),
        ({"config_dir": "relative"}, "must be an absolute path"),
        ({"model": "m\x00"}, "model contains a NUL byte"),
        ({"model": ["m"]}, "model must be a string"),
        ({"api_key": "sk-\x00x"}, "NUL byte"),
        ({"enabled": 1}, "enabled must be true or false"),
    ],
)
def test_profile_input_refused(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        validate_profile_input({**PROFILE, **fields}, Path("/tmp/profiles"))


def test_profile_prices_at_the_bound_are_kept() -> None:
    profile, _ = validate_profile_input({**PROFILE, "price_input": MAX_PRICE_PER_MTOK, "price_output": 0}, Path("/"))
    assert (profile.price_input, profile.price_output) == (MAX_PRICE_PER_MTOK, 0.0)


@pytest.mark.parametrize("text", ["5h=" + "9" * 400 + "tok", "5h=1000000001Mtok", "99999999999w=5tok", "5h=0tok"])
def test_limit_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid --limit"):
        parse_limit(text)


def test_limit_at_the_bound_is_kept() -> None:
    assert parse_limit("5h=1000000000Mtok").amount == MAX_LIMIT_AMOUNT


@pytest.mark.parametrize("text", ["1d=0.0000001usd", "24h=0.003usd", "5h=2.5usd", "5h=4000000tok", "1d=3req"])
def test_a_limit_is_written_as_it_can_be_typed_back(text: str) -> None:
    # `1d=0.0000001usd` was shown as `1d=1e-07usd`, which `--limit` refuses.
    assert parse_limit(text).describe() == text.replace("24h", "1d")
    assert parse_limit(parse_limit(text).describe()) == parse_limit(text)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"fix it\x00now", "contains a NUL byte at 6"),  # the run failed "fleetd could not run it: embedded null byte"
        (b"caf\xe9 au lait", "is not UTF-8 text (byte 0xe9 at 3)"),  # reached the command as U+FFFD, silently
    ],
)
def test_a_prompt_file_that_is_not_text_is_refused_at_add_and_fails_its_run_saying_why(
    tmp_path: Path, content: bytes, message: str
) -> None:
    from fleetd.loops.model import read_prompt

    path = tmp_path / "prompt.txt"
    path.write_bytes(content)
    body = {"name": "p", "every": "1h", "command": "cat", "prompt_file": str(path)}
    with pytest.raises(InvalidArgument, match=rf"^prompt file {path} {re.escape(message)}"):
        validate_loop_input(body, "UTC")
    path.write_text("fine")
    loop = validate_loop_input(body, "UTC")
    path.write_bytes(content)  # changed since: each run reads it
    with pytest.raises(InvalidArgument, match=rf"^prompt file {path} {re.escape(message)}"):
        read_prompt(loop)
    path.unlink()
    os.mkfifo(path)  # it held the daemon's event loop until something wrote to it
    with pytest.raises(InvalidArgument, match=rf"^prompt file {path} is not a regular file"):
        read_prompt(loop)
