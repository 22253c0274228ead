"""A run's output file, capped to its tail, with live followers.

The file grows to cap + slack, then is rewritten to a one-line marker plus the last `cap` bytes
(amortised: each byte is copied at most cap/slack times). On close it is cut to exactly the tail.
Followers read by logical offset, so a compaction under them only skips what was dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

CHUNK = 64 * 1024


class RunLog:
    def __init__(self, path: Path, cap: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.cap = cap
        self.slack = max(cap // 4, 4096)
        self._file = open(path, "w+b")  # noqa: SIM115 - lives as long as the run
        self.dropped = 0  # logical bytes no longer in the file
        self.header_len = 0
        self.data_len = 0  # bytes of output in the file after the header
        self.closed = False
        self._changed = asyncio.Event()

    @property
    def end(self) -> int:
        """Logical offset of the end of output written so far."""
        return self.dropped + self.data_len

    def write(self, data: bytes) -> None:
        if not data or self.closed:
            return
        self._file.write(data)
        self._file.flush()
        self.data_len += len(data)
        if self.data_len > self.cap + self.slack:
            self._compact()
        self._notify()

    def note(self, text: str) -> None:
        """A line from fleetd itself, in the run's output."""
        self.write(f"\n[fleetd] {text}\n".encode())

    def close(self) -> None:
        if self.closed:
            return
        if self.data_len > self.cap:
            self._compact()
        self._file.close()
        self.closed = True
        self._notify()

    def _compact(self) -> None:
        excess = self.data_len - self.cap
        self._file.seek(self.header_len + excess)
        tail = self._file.read(self.cap)
        self.dropped += excess
        header = f"[fleetd] output capped at {self.cap} bytes: {self.dropped} earlier bytes dropped\n".encode()
        self._file.seek(0)
        self._file.write(header + tail)
        self._file.truncate()
        self._file.flush()
        self.header_len, self.data_len = len(header), len(tail)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def read_from(self, pos: int) -> tuple[bytes, int]:
        """Output from logical offset `pos`; returns (data, next offset). Synchronous on purpose:
        no compaction can happen between computing the file offset and reading."""
        prefix = b""
        if pos < self.dropped:
            prefix = f"[fleetd] {self.dropped - pos} bytes dropped by the output cap\n".encode()
            pos = self.dropped
        with open(self.path, "rb") as f:
            f.seek(self.header_len + (pos - self.dropped))
            data = f.read(min(CHUNK, self.end - pos))
        return prefix + data, pos + len(data)

    async def wait_for_more(self, pos: int, timeout: float) -> None:
        if pos < self.end or self.closed:
            return
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
