from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleetd.backends.parsers.claude_code import parse_stream_json
from fleetd.loops.scrub import Scrubber
from fleetd.records.result import ParsedOutput, TokenUsage, WindowState

SECRET = "sk-ant-api03-SECRETVALUE"


@pytest.mark.parametrize("split", range(1, 40))
def test_secret_split_across_reads_is_redacted(split: int) -> None:
    data = f"key is {SECRET} and again {SECRET}.".encode()
    s = Scrubber([SECRET])
    out = s.feed(data[:split]) + s.feed(data[split:]) + s.flush()
    assert out == b"key is [REDACTED] and again [REDACTED]."


def test_byte_at_a_time() -> None:
    s = Scrubber([SECRET, "short"])
    data = f"{SECRET}short{SECRET[:-1]}x".encode()
    out = b"".join(s.feed(bytes([b])) for b in data) + s.flush()
    assert SECRET.encode() not in out and b"short" not in out
    assert out == b"[REDACTED][REDACTED]" + SECRET[:-1].encode() + b"x"


def test_no_secrets_passes_through_and_text_is_scrubbed() -> None:
    assert Scrubber([]).feed(b"abc") == b"abc"
    assert Scrubber([SECRET]).text(f"error: bad key {SECRET}") == "error: bad key [REDACTED]"


def test_only_an_end_that_begins_a_secret_is_held_back() -> None:
    s = Scrubber([SECRET])
    # A live log does not lag: a line that cannot be the start of the key is released whole.
    assert s.feed(b"progress 10%\n") == b"progress 10%\n"
    assert s.feed(b"key sk-ant-a") == b"key "
    assert s.feed(b"pi03-SECRETVALUE!") == b"[REDACTED]!"
    assert s.feed(b"sk-ant") == b""
    assert s.feed(b" no") == b"sk-ant no"
    assert s.flush() == b""


def test_each_stream_holds_back_its_own_tail() -> None:
    out, err = (base := Scrubber([SECRET])).fresh(), base.fresh()
    assert out.feed(SECRET[:10].encode()) == b""
    assert err.feed(b"stderr line\n") == b"stderr line\n"
    assert out.feed(SECRET[10:].encode()) + out.flush() == b"[REDACTED]"


def test_record_scrubs_every_string_at_any_depth() -> None:
    window = WindowState(60, 100.0, None, name=f"window {SECRET}")
    parsed = ParsedOutput(
        "failed", "auth", usage=TokenUsage(1, 2), model=SECRET, session_id=f"s-{SECRET}",
        final_text=f"{SECRET}{SECRET}", windows=[window], message=f"Invalid API key {SECRET}",
    )  # fmt: skip
    clean = Scrubber([SECRET, "other-key-123"]).record(parsed)
    assert clean == ParsedOutput(
        "failed", "auth", usage=TokenUsage(1, 2), model="[REDACTED]", session_id="s-[REDACTED]",
        final_text="[REDACTED][REDACTED]", windows=[WindowState(60, 100.0, None, name="window [REDACTED]")],
        message="Invalid API key [REDACTED]",
    )  # fmt: skip
    assert parsed.model == SECRET  # a new record: the parser's own is left alone
    nested = {"k": [(f"a{SECRET}", 1)], SECRET: None}
    assert Scrubber([SECRET]).record(nested) == {"k": [("a[REDACTED]", 1)], "[REDACTED]": None}
    assert Scrubber([]).record(parsed) is parsed


def test_a_json_escaped_key_is_redacted_in_the_bytes_too() -> None:
    """A JSON writer may escape any character of a key (`\\u0073k-…`, `\\/`): the raw log, `runs logs --raw` and a
    gateway client had the key once parsed. The bytes are scrubbed as decoded; the rest is left as it was."""
    escaped = f"\\u{ord(SECRET[0]):04x}{SECRET[1:5]}\\u00{ord(SECRET[5]):02X}{SECRET[6:]}"
    line = '{"result":"Invalid API key ' + escaped + ' \\u0041\\n\\/ ok"}\n'
    s = Scrubber([SECRET])
    stdout = (s.feed(line.encode()) + s.flush()).decode()
    assert stdout == '{"result":"Invalid API key [REDACTED] \\u0041\\n\\/ ok"}\n'
    parsed = parse_stream_json(stdout, "", 1, datetime(2026, 1, 1, tzinfo=UTC), UTC)
    assert parsed.message is not None and SECRET not in parsed.message


@pytest.mark.parametrize("split", range(1, 60))
def test_an_escaped_key_split_across_reads_anywhere_is_redacted(split: int) -> None:
    escaped = f"\\u{ord(SECRET[0]):04x}{SECRET[1:-1]}\\u{ord(SECRET[-1]):04x}"
    data = f"a\\/b {escaped} {SECRET} \\u005c".encode()
    s = Scrubber([SECRET])
    out = s.feed(data[:split]) + s.feed(data[split:]) + s.flush()
    assert out == b"a\\/b [REDACTED] [REDACTED] \\u005c"


def test_an_escape_cut_at_a_reads_end_holds_back_the_key_it_may_continue() -> None:
    s = Scrubber([SECRET])
    assert s.feed(b"key sk-an\\u00") == b"key "  # "sk-an" and an escape that may be its "t"
    assert s.feed(b"74-api03-SECRETVALUE.") + s.flush() == b"[REDACTED]."
