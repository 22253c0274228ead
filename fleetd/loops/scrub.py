"""Keeps secrets out of captured output: every occurrence of a secret value becomes [REDACTED],
also when it arrives split across two reads, and in every string of a parsed record."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, TypeVar

REDACTED = b"[REDACTED]"
T = TypeVar("T")


class Scrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._texts = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._secrets = [s.encode() for s in self._texts]
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
        cut = len(buf) - self._open_end(buf)
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
        return data

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
