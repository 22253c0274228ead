"""Keeps secrets out of captured output: every occurrence of a secret value becomes [REDACTED],
also when it arrives split across two reads."""

from __future__ import annotations

REDACTED = b"[REDACTED]"


class Scrubber:
    def __init__(self, secrets: list[str]) -> None:
        self._secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self._hold = max((len(s) for s in self._secrets), default=0) - 1
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """Scrubbed output that is safe to release; up to (longest secret - 1) bytes are held back
        in case a secret continues in the next read."""
        if not self._secrets:
            return data
        buf = self._redact(self._pending + data)
        if self._hold <= 0:
            self._pending = b""
            return buf
        cut = max(len(buf) - self._hold, 0)
        # Never release a prefix of a secret that the held-back tail could complete.
        self._pending = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        out, self._pending = self._redact(self._pending), b""
        return out

    def _redact(self, data: bytes) -> bytes:
        for secret in self._secrets:
            data = data.replace(secret, REDACTED)
        return data

    def text(self, value: str | None) -> str | None:
        if value is None or not self._secrets:
            return value
        return self._redact(value.encode()).decode(errors="replace")
