"""Keeps secrets out of captured output: every occurrence of a secret value becomes [REDACTED],
also when it arrives split across two reads, written with JSON's escapes (`\\u0073k-…`, `\\/`), and in
every string of a parsed record."""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Iterable
from typing import Any, TypeVar

REDACTED = b"[REDACTED]"
T = TypeVar("T")
# The end of a read that may be the start of a JSON escape of an ASCII character, completed by the next read.
_OPEN_ESCAPE = re.compile(rb"\\(?:u(?:0(?:0(?:[0-7][0-9A-Fa-f]?)?)?)?)?\Z")


def _escapes_of(secrets: list[bytes]) -> re.Pattern[bytes]:
    """JSON's escapes (`\\u0073`, `\\u006B`, `\\/`) of the characters the secrets have: what a JSON writer may put
    for any of them. Only those: an agent's colored output escapes thousands of control characters no key has,
    and decoding them all cut the scrubber's rate from hundreds of MB/s to 14."""
    chars = {c for secret in secrets for c in secret if c < 0x80}
    if not chars:
        return re.compile(rb"(?!)()()")  # matches nothing
    hexes = b"|".join(b"%02x" % c for c in sorted(chars))
    slash = rb"|(/)" if ord("/") in chars else rb"|(?!)()"
    return re.compile(rb"\\(?:u00(?i:(" + hexes + rb"))" + slash + rb")")


class _Decoded:
    """`data` with a secret's escaped characters decoded, and the way back from an offset in it to one in `data`."""

    def __init__(self, data: bytes, escapes: re.Pattern[bytes]) -> None:
        out, pos = bytearray(), 0
        self._at: list[int] = []  # offset in the decoded bytes of each escaped character
        self._extra: list[int] = [0]  # bytes the escapes before it added: _extra[j] for the first j escapes
        for m in escapes.finditer(data):
            out += data[pos : m.start()]
            self._at.append(len(out))
            out.append(int(m[1], 16) if m[1] else ord("/"))
            self._extra.append(self._extra[-1] + m.end() - m.start() - 1)
            pos = m.end()
        out += data[pos:]
        self.bytes = bytes(out)

    def offset(self, i: int) -> int:
        """The offset in `data` of decoded offset `i` (an escaped character: where its escape starts)."""
        return i + self._extra[bisect.bisect_left(self._at, i)]


class Scrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._texts = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._secrets = [s.encode() for s in self._texts]
        self._escapes = _escapes_of(self._secrets)
        self._pending = b""

    def fresh(self) -> Scrubber:
        """Another scrubber of the same secrets, for another stream (each holds back its own tail)."""
        return Scrubber(self._texts)

    def feed(self, data: bytes) -> bytes:
        """Scrubbed output that is safe to release. Held back: the end that begins a secret, in case the
        secret continues in the next read (and nothing else, so a live log does not lag behind)."""
        if not self._secrets:
            return data
        buf = self._redact(self._pending + data)
        open_escape = _OPEN_ESCAPE.search(buf, max(0, len(buf) - 6))
        body = buf[: open_escape.start()] if open_escape else buf
        if b"\\" in body and self._escapes.search(body):
            decoded = _Decoded(body, self._escapes)
            cut = decoded.offset(len(decoded.bytes) - self._open_end(decoded.bytes))
        else:
            cut = len(body) - self._open_end(body)
        self._pending = buf[cut:]
        return buf[:cut]

    def _open_end(self, buf: bytes) -> int:
        """The length of the longest end of `buf` that is the start of a secret.
        Invariant: every position a secret could still start at lies within that end."""
        longest = 0
        if not buf:
            return 0
        last = buf[-1]
        for secret in self._secrets:
            for k in range(min(len(secret) - 1, len(buf)), longest, -1):
                if secret[k - 1] == last and buf.endswith(secret[:k]):
                    longest = k
                    break
        return longest

    def flush(self) -> bytes:
        out, self._pending = self._redact(self._pending), b""
        return out

    def _redact(self, data: bytes) -> bytes:
        for secret in self._secrets:
            data = data.replace(secret, REDACTED)
        if b"\\" not in data or not self._escapes.search(data):
            return data
        # A secret some of whose characters are escaped: found in the decoded bytes, cut from `data`.
        decoded, spans = _Decoded(data, self._escapes), []
        for secret in self._secrets:  # the longest first, as above
            start = decoded.bytes.find(secret)
            while start != -1:
                end = start + len(secret)
                if not any(a < end and start < b for a, b in spans):
                    spans.append((start, end))
                start = decoded.bytes.find(secret, start + 1)
        out, pos = bytearray(), 0
        for a, b in sorted(spans):
            out += data[pos : decoded.offset(a)] + REDACTED
            pos = decoded.offset(b)
        return bytes(out + data[pos:])

    def text(self, value: str | None) -> str | None:
        if value is None:
            return value
        marker = REDACTED.decode()
        for secret in self._texts:
            value = value.replace(secret, marker)
        return value

    def record(self, value: T) -> T:
        """`value` with every string in it scrubbed: dataclass fields, list, tuple and dict members, at any
        depth. A parser can decode a key the stream never showed byte for byte (a JSON escape), and a field
        added later is covered without anyone remembering to."""
        if not self._texts:
            return value
        return self._clean(value)  # type: ignore[no-any-return]

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self._clean(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._clean(v) for v in value)
        if isinstance(value, dict):
            return {self._clean(k): self._clean(v) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {f.name: self._clean(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
            return dataclasses.replace(value, **changes)
        return value
