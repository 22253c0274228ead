"""A run's output file, capped to its tail, with live followers.

The file grows to cap + slack, then is rewritten to a one-line marker plus the last `cap` bytes
(amortised: each byte is copied at most cap/slack times). On close it is cut to exactly the tail.
Followers read by logical offset, so a compaction under them only skips what was dropped.

fleetd's own notes are whole lines and never split a CLI's line: a note made while the output stands in
the middle of a line (a chunk ended there) is held until that line ends, or until `end_line` (the attempt's
output is complete) or close ends the line for the CLI.

The file is made by `create_file`, which any thread may call (an attempt's launch thread does, so that the
creation's journal write is not the event loop's), or else at the first write, read or close. One that
cannot be made fails that first call (the run fails, saying why) and every later one is a no-op.

A write that fails once the file exists (disk full, EIO, a quota) loses that output, not the run: the next
write that succeeds starts with a note of how many bytes were lost and why, and the run ends as it ends.

If the file is deleted under a live run (someone cleans up the logs directory), the next write, read or
close notices and makes a new one with the directories, carrying over everything from the still-open old
file and a note saying so: output is never silently written into a deleted file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from pathlib import Path

CHUNK = 64 * 1024
log = logging.getLogger("fleetd.runlog")


class RunLog:
    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.slack = max(cap // 4, 4096)
        # A bare descriptor, written and read at explicit offsets: a buffered file object cost each run an
        # fstat and an lseek (with the GIL held) and its objects, for a log that most often stays empty.
        # Invariant: set once, under _creating, by whichever thread comes first (`create_file`).
        self._fd: int | None = None
        self._creating = threading.Lock()
        self.unwritable: OSError | None = None  # why the file could not be made: nothing is written then
        self._recreate_failed = False
        self.dropped = 0  # logical bytes no longer in the file
        self.header_len = 0
        self.data_len = 0  # bytes of output in the file after the header
        self.closed = False
        self._changed: asyncio.Event | None = None  # made by a follower that waits (most runs have none)
        # Invariant: _held is empty unless _mid_line (notes wait only for a line to end).
        self._mid_line = False  # the last byte written was not a newline
        self._held: list[bytes] = []
        self._owed_newline = False  # end_line ended a line that the next write must start after
        self.lost = 0  # bytes of output that could not be written (disk full, EIO) since the last write that could
        self._lost_why: OSError | None = None

    @property
    def end(self) -> int:
        """Logical offset of the end of output written so far."""
        return self.dropped + self.data_len

    def write(self, data: bytes) -> None:
        if not data or self.closed or not self._ensure_file():
            return
        if self._owed_newline:
            data = b"\n" + data
        if self._held and (end := data.find(b"\n")) != -1:
            # The line the notes waited for ends here: they go right after it.
            held, self._held = b"".join(self._held), []
            data = data[: end + 1] + held + data[end + 1 :]
        self._put(data)

    def note(self, text: str) -> None:
        """A line from fleetd itself, in the run's output: at once when the output is at a line's start,
        else as soon as the current line ends."""
        if self.closed:
            return
        line = f"[fleetd] {text}\n".encode()
        if self._mid_line and not self._owed_newline:
            self._held.append(line)
        else:
            self.write(line)

    def end_line(self) -> None:
        """The output so far is complete (an attempt ended): its unfinished last line is over. Notes held for it
        are written now; otherwise the newline is owed to whatever is written next, so output that simply ends
        without one (a command's) is left as it was."""
        if not self._mid_line or self.closed:
            return
        if self._held:
            held, self._held = b"".join(self._held), []
            if self._ensure_file():
                self._put(b"\n" + held)
        else:
            self._owed_newline = True

    def _put(self, data: bytes) -> None:
        assert self._fd is not None  # `_ensure_file` came first
        given = len(data)
        if self.lost:  # on a line of its own, before what comes now
            why = self._lost_why.strerror if self._lost_why and self._lost_why.strerror else self._lost_why
            note = f"[fleetd] {self.lost} bytes of output lost: cannot write the run log: {why}\n".encode()
            data = (b"\n" if self._mid_line else b"") + note + data
        offset = self.header_len + self.data_len
        try:
            _write_at(self._fd, data, offset)
        except OSError as e:
            if not self.lost:
                log.warning("cannot write the run log %s: %s (its output is lost until it can)", self.path, e)
            with contextlib.suppress(OSError):  # what a partial write left is cut off: the note says it is lost
                os.ftruncate(self._fd, offset)
            self.lost, self._lost_why = self.lost + given, e
            return
        self.lost, self._lost_why = 0, None
        self._owed_newline = False
        self.data_len += len(data)
        self._mid_line = not data.endswith(b"\n")
        if self.data_len > self.cap + self.slack:
            try:
                self._compact()
            except OSError as e:  # tried again at the next write; the file is only over its cap meanwhile
                log.warning("cannot cap the run log %s: %s", self.path, e)
        self._notify()

    def close(self) -> None:
        if self.closed:
            return
        if self._held:  # output that simply ends without a newline is left as it is
            self.end_line()
        if self._ensure_file():
            assert self._fd is not None
            if self.data_len > self.cap:
                try:
                    self._compact()
                except OSError as e:  # the run's end is its own: its log is only over its cap
                    log.warning("cannot cap the run log %s: %s", self.path, e)
            os.close(self._fd)
        self.closed = True
        self._notify()

    def _compact(self) -> None:
        assert self._fd is not None
        excess = self.data_len - self.cap
        tail = _read_at(self._fd, self.cap, self.header_len + excess)
        self.dropped += excess
        header = f"[fleetd] output capped at {self.cap} bytes: {self.dropped} earlier bytes dropped\n".encode()
        _write_at(self._fd, header + tail, 0)
        os.ftruncate(self._fd, len(header) + len(tail))
        self.header_len, self.data_len = len(header), len(tail)

    def create_file(self) -> None:
        """Make the file, if nothing has yet: from any thread. Raises OSError when it cannot be made (and
        from then on nothing is written)."""
        with self._creating:
            if self._fd is not None or self.closed:
                return
            if self.unwritable is not None:
                raise self.unwritable
            try:
                self._fd = _create(self.path)
            except OSError as e:
                self.unwritable = e
                raise

    def _ensure_file(self) -> bool:
        """Make the file if nothing has yet (its failure raises, once); recreate it if it is no longer at `path`
        (deleted, or its directory was). False: there is no file to write (it could not be made)."""
        if self._fd is None:
            if self.unwritable is not None:
                return False
            self.create_file()
            return True
        try:
            here = os.stat(self.path)
            mine = os.fstat(self._fd)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                return True
        except FileNotFoundError:
            pass
        try:
            new = _create(self.path)
        except OSError as e:
            if not self._recreate_failed:  # once: the run goes on, and its output stays readable live
                self._recreate_failed = True
                log.warning("cannot recreate the deleted run log %s: %s", self.path, e)
            return True
        # The old file is still open: its content moves over whole, so nothing is lost.
        size = self.header_len + self.data_len
        try:
            _write_at(new, _read_at(self._fd, size, 0), 0)
        except OSError as e:  # (disk full) the old file stays this run's, readable live; tried again next write
            os.close(new)
            if not self._recreate_failed:
                self._recreate_failed = True
                log.warning("cannot recreate the deleted run log %s: %s", self.path, e)
            return True
        os.close(self._fd)
        self._fd = new
        self._recreate_failed = False
        log.warning("run log %s was deleted during the run: recreated it", self.path)
        self.note("this log file was deleted while the run was writing it: recreated it, with all output so far")
        return True

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def read_from(self, pos: int, mid_line: bool = False) -> tuple[bytes, int]:
        """Output from logical offset `pos`; returns (data, next offset). `mid_line`: what the reader was given
        last did not end its line (a note of bytes dropped goes on a line of its own). Synchronous on purpose:
        no compaction can happen between computing the file offset and reading."""
        prefix = b""
        if pos < self.dropped:
            start = b"\n" if mid_line else b""
            prefix = start + f"[fleetd] {self.dropped - pos} bytes dropped by the output cap\n".encode()
            pos = self.dropped
        if not self.closed and not self._ensure_file():
            return prefix, pos  # the file could not be made: there is nothing to read
        # Our own handle, not the path: it is the file we write even if the path was deleted meanwhile
        # (or, once closed, the file as it was left). pread leaves the writer's position alone.
        if self.closed:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self.header_len + (pos - self.dropped))
                    data = f.read(min(CHUNK, self.end - pos))
            except FileNotFoundError:
                return prefix + b"\n[fleetd] the log file was deleted after the run ended\n", self.end
        else:
            assert self._fd is not None
            data = os.pread(self._fd, min(CHUNK, self.end - pos), self.header_len + (pos - self.dropped))
        return prefix + data, pos + len(data)

    async def wait_for_more(self, pos: int, timeout: float) -> None:
        if pos < self.end or self.closed:
            return
        if self._changed is None:
            self._changed = asyncio.Event()
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def _create(path: Path) -> int:
    # The directory is made only when missing (an mkdir of one that exists costs about as much as
    # making it, on every run); directories fleetd makes are private, the output may hold anything.
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _read_at(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0 and (chunk := os.pread(fd, size, offset)):
        parts.append(chunk)
        size, offset = size - len(chunk), offset + len(chunk)
    return b"".join(parts)
