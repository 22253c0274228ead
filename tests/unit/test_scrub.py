from __future__ import annotations

import pytest

from fleetd.loops.scrub import Scrubber

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
