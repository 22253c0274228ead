"""The agents' own usage records in a profile's config directory, read incrementally.

Claude Code writes a transcript per session under ``<CLAUDE_CONFIG_DIR>/projects`` and Codex a rollout per thread
under ``<CODEX_HOME>/sessions``; both are append-only JSONL. Each scan reads only the bytes written since the last
one: a per-file offset, the partial last line carried over, and a file whose inode changed, that shrank or whose
byte before the offset is no longer what was read there is read again from the start (de-duplication keeps that
harmless). Plain synchronous file I/O, no clock of its own: the daemon calls scan() from a thread. Garbled lines
are counted, never raised.
"""

from __future__ import annotations

import base64
import copy
import gc
import itertools
import json
import logging
import multiprocessing
import os
import re
import stat
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, NamedTuple

import msgspec

from fleetd.records.result import TokenUsage, WindowState

MAX_KEYS = 200_000  # de-duplication keys remembered per profile (message ids resp. Codex event keys)
CHUNK_BYTES = 4 << 20
BATCH_RECORDS = 10_000  # records per part of a scan (`batches`): what one database transaction inserts
MAX_LINE_BYTES = 64 << 20  # a "line" longer than this without a newline is junk: dropped, not buffered forever
# A scan with this much to read parses its files in processes on the other cores (see `_JsonlTail._parsed`), handed
# out this many bytes or files at a time: a process costs ~0.1 s to start, a task a round trip.
PARALLEL_MIN_BYTES = 32 << 20
PARALLEL_TASK_BYTES = 4 << 20
PARALLEL_TASK_FILES = 64
# Tasks handed out ahead of the one whose files are being taken back: enough that the processes keep parsing while
# this reader waits for its last part to be stored (a task's result, a few hundred usage entries, is kept meanwhile).
PARALLEL_TASKS_AHEAD = 16
MAX_PARSING_PROCESSES = 4

log = logging.getLogger("fleetd.usage_files")

_STRIP = b" \t\r\n\x00"  # NUL padding is what a crash mid-write leaves behind on some filesystems
# ccusage's cheap pre-filter, tolerant of whitespace after the colon (pretty-printed or re-serialised lines).
_CLAUDE_USAGE_MARKER = re.compile(rb'"usage"\s*:\s*\{')
_CLAUDE_USAGE_KEY = b'"usage"'
_CLAUDE_USAGE_REST = re.compile(rb"\s*:\s*\{")
_SEMVER_PREFIX = re.compile(r"\d+\.\d+\.\d")
_CODEX_MARKERS = (b'"token_count"', b'"turn_context"', b'"session_meta"')
_CODEX_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens", "total_tokens")
_THREAD_ID = re.compile(r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")


class UsageRecord(NamedTuple):
    """One request's consumption (or, with requests=0, a later correction of one; see ClaudeTranscripts). A named
    tuple: a first read makes a hundred thousand, and a frozen dataclass costs several times more to make."""

    at: datetime  # aware, UTC
    usage: TokenUsage
    model: str | None
    session_id: str | None
    dedupe_key: str | None
    source_path: str
    requests: int = 1


# A record as the heartbeat stores it (`IngestResult.rows`): at as `to_iso` writes it, session id, dedupe key, tokens,
# requests, and at in POSIX seconds (what its windows count by).
UsageRow = tuple[str, str | None, str | None, int, int, float]


@dataclass
class FileOffset:
    """What is remembered per file between scans; ``state`` is the reader's per-file context (JSON-able)."""

    inode: int
    size: int
    offset: int  # bytes consumed, including the carried-over partial line
    partial: bytes = b""
    state: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "inode": self.inode,
            "size": self.size,
            "offset": self.offset,
            "partial": base64.b64encode(self.partial).decode("ascii"),
            "state": self.state,
        }

    @classmethod
    def from_json(cls, value: object) -> FileOffset:
        """Lenient: anything unreadable becomes offset 0, i.e. the file is read again from the start."""
        try:
            if isinstance(value, str | bytes):
                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise TypeError("not an object")
            inode, size, offset = (_non_negative(value.get(k)) for k in ("inode", "size", "offset"))
            partial = base64.b64decode(value.get("partial") or "", validate=True)
            state = value.get("state")
            if len(partial) > offset:
                raise ValueError("partial line longer than the offset")
            return cls(inode, size, offset, partial, dict(state) if isinstance(state, dict) else {})
        except (TypeError, ValueError):  # binascii.Error and JSONDecodeError are ValueErrors
            return cls(0, 0, 0)


@dataclass
class IngestResult:
    records: list[UsageRecord] = field(default_factory=list)
    # A reader with `as_rows` set gives its Claude Code records here instead, as rows (made in the parsing processes
    # for a first read: no datetime, TokenUsage or UsageRecord per record in the daemon).
    rows: list[UsageRow] = field(default_factory=list)
    windows: list[WindowState] = field(default_factory=list)  # latest Codex rate-limit snapshot, if a new one came
    garbled_lines: int = 0
    files_read: int = 0  # files with new bytes
    bytes_read: int = 0  # bytes actually read from disk this scan
    touched: set[str] = field(default_factory=set)  # files whose offset moved: persist these
    saved: dict[str, Any] = field(default_factory=dict)  # their offsets as JSON, made when the part was handed out
    forgotten: set[str] = field(default_factory=set)  # files no longer there: drop their offsets

    def merge(self, other: IngestResult) -> None:
        self.records += other.records
        self.rows += other.rows
        self.windows = other.windows or self.windows
        self.garbled_lines += other.garbled_lines
        self.files_read += other.files_read
        self.bytes_read += other.bytes_read
        self.touched |= other.touched
        self.forgotten |= other.forgotten
        self.saved.update(other.saved)


class _Parsed(NamedTuple):
    """What a parsing process made of one file (`_JsonlTail._read` there): the reader that sent it adopts it."""

    offset: FileOffset | None  # the file's offset after the read (None: not known there)
    touched: bool
    forgotten: bool
    entries: list[Any]  # what the reader there would have offered for de-duplication, in file order
    garbled_lines: int
    bytes_read: int
    files_read: int


def _parse_files(
    collector: type[_JsonlTail], config_dir: Path, files: list[tuple[str, FileOffset | None]], now: datetime,
    as_rows: bool = False,
) -> list[_Parsed]:  # fmt: skip
    """In a parsing process: each file read from its offset, as the sending reader would have read it."""
    reader = collector(config_dir, {path: prev for path, prev in files if prev is not None})
    reader.as_rows = as_rows
    parsed = []
    for path, _ in files:
        out = IngestResult()
        reader._read(Path(path), now, out)
        offset = reader._offsets.get(path)
        parsed.append(
            _Parsed(offset, path in out.touched, path in out.forgotten, reader._collected(), out.garbled_lines,
                    out.bytes_read, out.files_read)
        )  # fmt: skip
    return parsed


def _parsing_processes() -> int:
    """The cores this process may run on (at most MAX_PARSING_PROCESSES): a pool of one would only add its cost."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no sched_getaffinity
        cores = os.cpu_count() or 1
    return min(cores, MAX_PARSING_PROCESSES)


def _tasks(files: Iterable[tuple[Path, int]]) -> Iterator[list[Path]]:
    """(path, bytes to read) in order → the files in order, PARALLEL_TASK_BYTES or PARALLEL_TASK_FILES at a time."""
    task: list[Path] = []
    size = 0
    for path, more in files:
        if task and (size >= PARALLEL_TASK_BYTES or len(task) >= PARALLEL_TASK_FILES):
            yield task
            task, size = [], 0
        task.append(path)
        size += more
    if task:
        yield task


def _non_negative(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a non-negative integer: {value!r}")
    return value


def _count(value: object) -> int:
    """A token count: a non-negative int, 0 for anything else."""
    if type(value) is int:  # the usual case first
        return value if value > 0 else 0
    if isinstance(value, bool):
        return 0
    if isinstance(value, float) and value == value and 0 <= value < 1e18:
        return int(value)
    return value if isinstance(value, int) and value > 0 else 0


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:  # the usual case: what the agents write, `…Z`, is UTC already
        stamp = datetime.fromisoformat(value)
        if stamp.tzinfo is UTC:
            return stamp
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).astimezone(UTC)


_FAST = msgspec.json.Decoder()


def _decode(data: bytes) -> Any:
    """json.loads(data), mostly through msgspec: 2-3x faster on these lines, and decoding them is most of a scan.

    Invariant: a document msgspec accepts decodes to what json gives (big integers stay ints, floats round alike;
    orjson turns integers past 64 bits into floats, which would change a count). What msgspec rejects and json
    accepts (NaN and Infinity, 1e400, surrogates escaped or UTF-8-encoded, encodings json detects) json decides,
    so a line is garbled exactly when json rejects it. Raises what json raises."""
    try:
        return _FAST.decode(data)
    except (msgspec.DecodeError, RecursionError):  # rare: garbled lines and json's extensions
        return json.loads(data)


def _load_object(line: bytes) -> dict[str, Any] | None:
    try:
        value = _decode(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError: binary junk lands here
        return None
    return value if isinstance(value, dict) else None


def _looks_like_object(line: bytes) -> bool:
    """The cheap test every line gets (only candidate lines are JSON-decoded): one JSON object per line."""
    return line[:1] == b"{" and line[-1:] == b"}"


class _JsonlTail:
    """Per-file offsets over the *.jsonl files under some roots; subclasses interpret the lines."""

    def __init__(self, config_dir: Path | str, offsets: Mapping[str, FileOffset] | None) -> None:
        self.config_dir = Path(config_dir).expanduser()
        self._offsets: dict[str, FileOffset] = {
            str(path): offset for path, offset in (offsets or {}).items() if isinstance(offset, FileOffset)
        }
        self._lock = threading.Lock()
        self.parallel_min_bytes = PARALLEL_MIN_BYTES
        # True: records a subclass can give as rows (`IngestResult.rows`) come so; the heartbeat, which stores rows,
        # sets it. `scan` and the tests read UsageRecords.
        self.as_rows = False

    # A subclass that parses files in other processes names here the reader made there: one that collects what it
    # would offer for de-duplication (`_replay` offers it here). None: every file is read in the daemon's thread.
    _collector: ClassVar[type[_JsonlTail] | None] = None

    @property
    def watch_root(self) -> Path:
        raise NotImplementedError

    @property
    def offsets(self) -> dict[str, FileOffset]:
        """A copy: path → what to persist for it."""
        with self._lock:
            return copy.deepcopy(self._offsets)

    def scan(self, now: datetime, paths: Iterable[str | Path] | None = None) -> IngestResult:
        """Read what was appended since the last scan (of `paths` only, when given). Never raises on file
        contents or vanished files."""
        result = IngestResult()
        for batch in self.batches(now, paths, batch_records=0):
            result.merge(batch)
        return result

    def batches(
        self, now: datetime, paths: Iterable[str | Path] | None = None, *, batch_records: int | None = None
    ) -> Iterator[IngestResult]:
        """`scan` in parts of about `batch_records` records (0: one part), so that a first read of gigabytes never
        holds all of its records at once. Files are read whole into one part; windows come with the last part.

        `paths`: the files a watcher reported as changed; only those (under this reader's roots, with the reader's
        names) are read, and those gone are forgotten. Without it every file under the roots is listed: a stat per
        file, which is what a periodic beat can afford and a beat per appended line cannot.
        """
        now = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
        if batch_records is None:
            batch_records = BATCH_RECORDS
        result = IngestResult()
        with self._lock:
            if paths is None:
                listed: set[str] = set()
                candidates: Iterable[Path] = self._files()
            else:
                candidates = sorted({Path(p) for p in paths if self._mine(Path(p))}, key=str)
            for path, parsed in self._parsed(candidates, now):
                if paths is None:
                    listed.add(str(path))
                elif not path.exists():
                    self._forget(str(path), result)
                    continue
                if parsed is None:
                    self._read(path, now, result)
                else:
                    self._adopt(path, parsed, result)
                if batch_records and len(result.records) + len(result.rows) >= batch_records:
                    self._flush()
                    self._save(result)
                    yield result
                    result = IngestResult()
            if paths is None:
                for key in [k for k in self._offsets if k not in listed]:
                    if not os.path.exists(key):  # gone (deleted, archived): forget it; a listing hiccup keeps it
                        self._forget(key, result)
            self._flush()
            self._finish(now, result)
            self._save(result)
        yield result

    def _parsed(self, candidates: Iterable[Path], now: datetime) -> Iterator[tuple[Path, _Parsed | None]]:
        """Each candidate in order, with what a parsing process made of it; None: read it here.

        A scan with at least `parallel_min_bytes` to read (a first read of a config directory, a daemon back after
        days) is parsed by processes on the other cores, files handed out in order a few megabytes at a time and
        taken back in order, so that de-duplication sees the files in the order one reader would; each result is a
        file's usage entries, far smaller than its bytes, and only a few tasks are out at once (bounded memory).
        The processes are started as soon as the files looked at so far come to that much, and the first tasks
        handed out then: the rest of the files are stat'ed while the processes start (a spawned process takes
        ~0.1 s of a core to import what it needs, seconds on a busy machine).
        Anything going wrong with the processes (none can be started, one dies) leaves the rest to this thread."""
        workers = _parsing_processes()
        if self._collector is None or workers < 2:
            yield from ((path, None) for path in candidates)
            return
        listing = iter(candidates)
        head: list[tuple[Path, int]] = []
        unread = 0
        for path in listing:
            head.append((path, self._unread(path)))
            unread += head[-1][1]
            if unread >= self.parallel_min_bytes:
                break
        else:
            yield from ((path, None) for path, _ in head)
            return
        tasks = _tasks(itertools.chain(head, ((path, self._unread(path)) for path in listing)))
        out: deque[tuple[list[Path], Future[list[_Parsed]]]] = deque()  # tasks handed out, in order
        pool: ProcessPoolExecutor | None = None
        try:
            # spawn, not fork: the daemon has threads, and a forked child could inherit a lock one of them held.
            # A parsing process only parses: it makes no reference cycles for the collector to find, only work for it.
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=gc.disable)
            while True:
                while len(out) < PARALLEL_TASKS_AHEAD and (files := next(tasks, None)) is not None:
                    offsets = [(str(path), self._offsets.get(str(path))) for path in files]
                    out.append((files, pool.submit(_parse_files, self._collector, self.config_dir, offsets, now,
                                                          self.as_rows)))  # fmt: skip
                if not out:
                    break
                parsed = out[0][1].result()
                yield from zip(out.popleft()[0], parsed, strict=True)
        except Exception:  # BrokenProcessPool, OSError, a pickling error: the rest is read here, as without processes
            log.warning("parsing %s in other processes failed; reading the rest in the daemon", self.config_dir,
                        exc_info=True)  # fmt: skip
            for files, _ in out:
                yield from ((path, None) for path in files)
            for files in tasks:
                yield from ((path, None) for path in files)
        finally:
            if pool is not None:
                pool.shutdown(wait=not out, cancel_futures=True)

    def _unread(self, path: Path) -> int:
        """Bytes of `path` a read would take (0 when unknown)."""
        try:
            info = os.stat(path)
        except OSError:
            return 0
        prev = self._offsets.get(str(path))
        if prev is not None and prev.inode == info.st_ino and prev.offset <= info.st_size:
            return info.st_size - prev.offset
        return info.st_size

    def _adopt(self, path: Path, parsed: _Parsed, out: IngestResult) -> None:
        """What a parsing process made of a file, as if `_read` had read it here."""
        key = str(path)
        if parsed.forgotten:
            self._forget(key, out)
        elif parsed.offset is not None:
            self._offsets[key] = parsed.offset
            if parsed.touched:
                out.touched.add(key)
        out.garbled_lines += parsed.garbled_lines
        out.bytes_read += parsed.bytes_read
        out.files_read += parsed.files_read
        self._replay(parsed.entries, out)

    def _save(self, out: IngestResult) -> None:
        out.saved = {key: self._offsets[key].to_json() for key in out.touched if key in self._offsets}

    def _mine(self, path: Path) -> bool:
        if not self._wanted(path.name):
            return False
        return any(path.is_relative_to(root) for root in self._roots())

    def _forget(self, key: str, out: IngestResult) -> None:
        if self._offsets.pop(key, None) is not None:
            out.forgotten.add(key)

    # -- for subclasses --------------------------------------------------------------------------

    def _roots(self) -> list[Path]:
        raise NotImplementedError

    def _wanted(self, name: str) -> bool:
        return name.endswith(".jsonl")

    def _line(
        self, line: bytes, position: int, path: Path, state: dict[str, Any], now: datetime, out: IngestResult
    ) -> None:
        raise NotImplementedError

    def _finish(self, now: datetime, out: IngestResult) -> None:
        """After every file of a scan was read."""

    def _replay(self, entries: list[Any], out: IngestResult) -> None:
        """A file's entries as `_collector` collected them in a parsing process, offered here in file order."""
        raise NotImplementedError

    def _collected(self) -> list[Any]:
        """In a `_collector`: what it collected since the last call."""
        raise NotImplementedError

    def _flush(self) -> None:
        """The records read so far are handed out (a part of `batches`): none of them can be replaced any more."""

    def _lines(
        self, data: bytes, end: int, position: int, path: Path, state: dict[str, Any], now: datetime, out: IngestResult
    ) -> None:
        """The complete lines in data[:end] (which ends with a newline); `position`: the file offset of data[0]."""
        for line in data[:end].split(b"\n")[:-1]:
            self._safe_line(line, position, path, state, now, out)
            position += len(line) + 1

    # -- files and bytes -------------------------------------------------------------------------

    def _files(self) -> Iterator[Path]:
        for root in self._roots():
            found: list[Path] = []
            for folder, dirs, names in os.walk(root):  # no symlinked folders: no loops
                dirs.sort()
                found.extend(Path(folder, name) for name in names if self._wanted(name))
            yield from sorted(found, key=str)

    def _read(self, path: Path, now: datetime, out: IngestResult) -> None:
        key = str(path)
        prev = self._offsets.get(key)
        if prev is not None:  # the usual case of a full listing: nothing new, told by a stat without opening the file
            try:
                info = os.stat(key)
            except OSError:
                pass  # told below, as it opens the file
            else:
                if stat.S_ISREG(info.st_mode) and prev.inode == info.st_ino and prev.offset == info.st_size:
                    prev.size = info.st_size
                    return
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # vanished between listing and reading
            self._forget(key, out)
            return
        except OSError:  # unreadable for now (permissions, a directory named *.jsonl): try again next scan
            return
        with handle:
            try:
                info = os.fstat(handle.fileno())
            except OSError:
                return
            if not stat.S_ISREG(info.st_mode):
                return
            start, partial, state = 0, b"", {}
            if prev is not None and prev.inode == info.st_ino and prev.offset <= info.st_size:
                if prev.offset == info.st_size:
                    prev.size = info.st_size
                    return  # nothing new: nothing read
                start, partial, state = prev.offset, prev.partial, copy.deepcopy(prev.state)
                if start and not self._continues(handle, start, partial, out):
                    start, partial, state = 0, b"", {}  # rewritten in place (truncated and regrown)
            try:
                self._offsets[key] = self._consume(handle, path, info, start, partial, state, now, out)
                out.touched.add(key)
            except OSError:  # an I/O error mid-read: keep the old offset; de-duplication absorbs the re-read
                return

    @staticmethod
    def _continues(handle: BinaryIO, start: int, partial: bytes, out: IngestResult) -> bool:
        """The byte before the offset is still the one read there last time (a newline, or the partial's last)."""
        handle.seek(start - 1)
        before = handle.read(1)
        out.bytes_read += len(before)
        return before == (partial[-1:] or b"\n")

    def _consume(
        self,
        handle: BinaryIO,
        path: Path,
        info: os.stat_result,
        start: int,
        partial: bytes,
        state: dict[str, Any],
        now: datetime,
        out: IngestResult,
    ) -> FileOffset:
        handle.seek(start)
        buffer = bytearray(partial)  # a line still without its newline
        position = start - len(partial)  # file position of the next line's first byte
        offset = start
        while chunk := handle.read(CHUNK_BYTES):
            offset += len(chunk)
            out.bytes_read += len(chunk)
            if buffer:
                if b"\n" not in chunk:
                    buffer += chunk
                    data = b""
                else:
                    buffer += chunk
                    data = bytes(buffer)
                    buffer.clear()
            else:
                data = chunk  # the usual case: no copy
            cut = data.rfind(b"\n") + 1
            if cut:
                self._lines(data, cut, position, path, state, now, out)
                position += cut
                buffer += memoryview(data)[cut:]
            if len(buffer) > MAX_LINE_BYTES:
                # Keep one byte so the next scan's continuity check holds; the rest of this junk line, once
                # its newline comes, does not look like an object and is counted as garbled then.
                position += len(buffer) - 1
                del buffer[:-1]
        if offset > start:
            out.files_read += 1
        return FileOffset(info.st_ino, max(info.st_size, offset), offset, bytes(buffer), state)

    def _safe_line(
        self, raw: bytes, position: int, path: Path, state: dict[str, Any], now: datetime, out: IngestResult
    ) -> None:
        line = raw.strip(_STRIP)
        if not line:
            return
        if not _looks_like_object(line):
            out.garbled_lines += 1
            return
        try:
            self._line(line, position, path, state, now, out)
        except Exception:  # a shape nobody foresaw in one line must not cost the rest of the file
            out.garbled_lines += 1


# -- Claude Code --------------------------------------------------------------------------------


# gc=False: decoded from JSON, they cannot form a cycle, and untracked they cost the collector nothing (a first read
# makes hundreds of thousands).
class _ClaudeUsage(msgspec.Struct, gc=False):
    input_tokens: Any = None
    output_tokens: Any = None
    cache_read_input_tokens: Any = None
    cache_creation_input_tokens: Any = None
    cache_creation: Any = None
    speed: Any = None


class _ClaudeMessage(msgspec.Struct, gc=False):
    # UNSET: absent. ccusage tells an absent id or model (allowed) from a present one that is not a non-empty string.
    id: Any = msgspec.UNSET
    model: Any = msgspec.UNSET
    usage: _ClaudeUsage | None = None


class _ClaudeLine(msgspec.Struct, gc=False):
    """The fields of a transcript line that ccusage reads; the rest of the line (its content: most of its bytes) is
    skipped by the decoder without building anything. `message` None: no message object with a usage object."""

    timestamp: Any = None
    sessionId: Any = msgspec.UNSET
    requestId: Any = msgspec.UNSET
    isSidechain: Any = None
    version: Any = msgspec.UNSET
    message: _ClaudeMessage | None = None


_CLAUDE_LINE = msgspec.json.Decoder(_ClaudeLine)
_NOT_A_USAGE_LINE = _ClaudeLine()


def _claude_line(line: bytes) -> _ClaudeLine | None:
    """The line's fields as `json.loads` reads them; None when json rejects the line (garbled).

    Invariant: decoded straight into the struct only when json would accept the line too. msgspec skips the fields a
    struct does not name without decoding their strings, so it would take invalid UTF-8 there: such a line (rare:
    nearly every line is ASCII, which `isascii` tells at memory speed) is first checked as json decodes bytes. Every
    other line msgspec accepts, json accepts with the same values (see `_decode`); what msgspec rejects, or a message
    or usage that is not an object, json and the generic path decide, as before."""
    if line.isascii() or _utf8(line):
        try:
            return _CLAUDE_LINE.decode(line)
        except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
            pass
    obj = _load_object(line)
    if obj is None:
        return None
    try:
        return msgspec.convert(obj, _ClaudeLine)
    except msgspec.ValidationError:  # its message or usage is not an object (or null)
        return _NOT_A_USAGE_LINE


def _marker(data: bytes, start: int, end: int) -> int:
    """Where the next usage marker in data[start:end] is (`end`: none). `"usage"` is searched for with bytes.find,
    several times faster than the regular expression, which then only checks what follows it."""
    at = data.find(_CLAUDE_USAGE_KEY, start, end)
    while at >= 0:
        if _CLAUDE_USAGE_REST.match(data, at + len(_CLAUDE_USAGE_KEY), end):
            return at
        at = data.find(_CLAUDE_USAGE_KEY, at + len(_CLAUDE_USAGE_KEY), end)
    return end


def _spells_marker(line: bytes) -> bool:
    """Claude Code's own spelling, found from the end (the usage object is near it), else the marker's any."""
    return line.rfind(b'"usage":{') >= 0 or _marker(line, 0, len(line)) < len(line)


def _utf8(line: bytes | memoryview) -> bool:
    try:
        str(line, "utf-8", "surrogatepass")  # as json.loads decodes bytes
    except UnicodeDecodeError:
        return False
    return True


@dataclass(slots=True)
class _Kept:
    """The copy of a message that counts, after ccusage's collision rules, and what was emitted for it."""

    key: str
    request_ids: tuple[str | None, ...]
    sidechain: bool
    total: int
    speed: bool
    emitted: tuple[int, int, int, int]  # its counts, as `_ClaudeEntry.counts`
    pending: int | None  # index of this scan's record (or row) for it, which can still be replaced outright


class _ClaudeEntry(NamedTuple):
    """A usage line, before de-duplication: plain values, cheap to make (most lines are copies that lose) and to
    send from a parsing process. One sent for a reader `as_rows` has no `at`: its `stamp` and `epoch` instead, made
    in the parsing process (the daemon then makes no datetime per record)."""

    at: datetime | None
    counts: tuple[int, int, int, int]  # input, output, cache read, cache write
    total: int
    model: str | None
    session_id: str | None
    message_id: str | None
    request_id: str | None
    sidechain: bool
    speed: bool
    source_path: str
    stamp: str | None = None  # at as `to_iso` writes it
    epoch: float = 0.0  # at in POSIX seconds

    def record(self, counts: tuple[int, ...], key: str | None, requests: int = 1) -> UsageRecord:
        assert self.at is not None  # a reader that is not `as_rows` is sent `at`
        return UsageRecord(self.at, TokenUsage(*counts), self.model, self.session_id, key, self.source_path, requests)

    def row(self, tokens: int, key: str | None, requests: int = 1) -> UsageRow:
        if self.stamp is None:
            assert self.at is not None
            return _iso(self.at), self.session_id, key, tokens, requests, self.at.timestamp()
        return self.stamp, self.session_id, key, tokens, requests, self.epoch


def _iso(at: datetime) -> str:
    """`to_iso`'s text of a UTC datetime (what the readers make)."""
    return at.isoformat(timespec="milliseconds")


_VERSIONS: dict[str, bool] = {}  # version → whether it is N.N.N…: a handful of versions, on every line


def _valid_claude_entry(obj: _ClaudeLine, message: _ClaudeMessage) -> bool:
    """ccusage's is_valid_usage_entry: optional fields, but when present, well-formed and not empty."""
    version = obj.version
    if version is not msgspec.UNSET:
        if not isinstance(version, str):
            return False
        valid = _VERSIONS.get(version)
        if valid is None:
            valid = bool(_SEMVER_PREFIX.match(version))
            if len(_VERSIONS) < 1000:
                _VERSIONS[version] = valid
        if not valid:
            return False
    for value in (obj.sessionId, obj.requestId, message.id, message.model):
        if value is not msgspec.UNSET and not (isinstance(value, str) and value):
            return False
    return True


def _claude_counts(usage: _ClaudeUsage) -> tuple[int, int, int, int]:
    """Input, output, cache read, cache write. The total as the attempt's own parser counts it: Claude Code reports a
    breakdown of zeros beside a real total when the provider sends none, so the breakdown is only a fallback for a
    missing total."""
    given, out, read, written = (
        usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens
    )  # fmt: skip
    if type(given) is type(out) is type(read) is type(written) is int and min(given, out, read, written) >= 0:
        return given, out, read, written  # the usual case: four counts
    cache = usage.cache_creation
    if written is None and isinstance(cache, dict):
        written = _count(cache.get("ephemeral_5m_input_tokens")) + _count(cache.get("ephemeral_1h_input_tokens"))
    else:
        written = _count(written)
    return _count(given), _count(out), _count(read), written


class ClaudeTranscripts(_JsonlTail):
    """Claude Code transcripts: ``<dir>/projects/**/*.jsonl``, subagent files included.

    ccusage's rules: only lines containing ``"usage":{``; lines with a null in one of its listed fields, a version
    that is not N.N.N…, or an empty id are skipped; model ``<synthetic>`` means no model; cache writes are
    cache_creation_input_tokens, or ephemeral_5m + ephemeral_1h of ``cache_creation`` when that total is missing
    (as the attempt's parser counts them: ccusage prefers the breakdown, which Claude Code may report as zeros).
    De-duplication by (message.id, requestId) across all files and scans (sidechain copies match by message.id
    alone); on a collision the non-sidechain copy wins, then the larger total, then the one with ``speed``.
    Within one scan the winner simply replaces the loser. A winner that arrives in a later scan, after its loser
    was already returned, comes as a correction: a record (requests=0) of what it adds per field, with dedupe_key
    ``"<key>+<its total>"``. Nothing can be taken back, so a smaller winner adds nothing.
    """

    def __init__(
        self, config_dir: Path | str, offsets: Mapping[str, FileOffset] | None = None, *, max_keys: int = MAX_KEYS
    ) -> None:
        super().__init__(config_dir, offsets)
        self._max_keys = max(1, max_keys)
        self._seen: OrderedDict[str, list[_Kept]] = OrderedDict()  # message id → kept copies, oldest first
        self._touched: list[_Kept] = []
        # What decides a collision, of the entries offered from one file (`_copies_of`): Claude Code writes a message
        # once per content block, and a copy identical in all of that changes nothing (it neither replaces the kept
        # copy nor, the order being total, anything that replaced it), so it is not offered again.
        self._copies: set[tuple[Any, ...]] = set()
        self._copies_of = ""

    @property
    def watch_root(self) -> Path:
        return self.config_dir / "projects"

    def _roots(self) -> list[Path]:
        return [self.watch_root]

    def _lines(
        self, data: bytes, end: int, position: int, path: Path, state: dict[str, Any], now: datetime, out: IngestResult
    ) -> None:
        """Most lines carry no usage (prompts, tool output, progress): only their first and last byte are looked at.
        The usage marker is searched for once over the whole buffer, not line by line."""
        if self._decoded_at_once(data, end, path, out):
            return
        find = data.find
        marked = _marker(data, 0, end)
        start = 0
        source = str(path)
        while start < end:
            stop = find(b"\n", start, end)  # found: data[end - 1] is a newline
            if data[start] == 0x7B and data[stop - 1] == 0x7D:  # "{" … "}", nothing to strip
                if marked < stop:
                    try:
                        self._marked(data[start:stop], path, source, out)
                    except Exception:  # a shape nobody foresaw in one line must not cost the rest of the file
                        out.garbled_lines += 1
            else:
                self._safe_line(data[start:stop], position + start, path, state, now, out)
            start = stop + 1
            if marked < start:
                marked = _marker(data, start, end)

    def _decoded_at_once(self, data: bytes, end: int, path: Path, out: IngestResult) -> bool:
        """The lines in data[:end] decoded by one msgspec call (it skips what the struct does not name at C speed, four
        times faster than finding the marker and decoding the marked lines one by one), then the lines with a usage
        object taken as `_marked` takes them. False, having done nothing, when that would not give what the lines
        read one by one give: a line json refuses or reads otherwise (the whole buffer is then decoded only if it is
        UTF-8, as json reads bytes), a line with no object or more than one, a message or usage that is no object."""
        view = memoryview(data)[:end]
        if not data.isascii() and not _utf8(view):
            return False
        try:
            objs = _CLAUDE_LINE.decode_lines(view)
        except (msgspec.DecodeError, RecursionError):
            return False
        wanted = [i for i, obj in enumerate(objs) if obj.message is not None and obj.message.usage is not None]
        # Where those lines are: objects are the lines that are not blank (JSON whitespace only), one each.
        spans: list[tuple[int, int]] = []
        find, count, start, taken = data.find, 0, 0, 0
        target = wanted[0] if wanted else -1
        while start < end:
            stop = find(b"\n", start, end)
            if stop > start and (data[start] == 0x7B or data[start:stop].strip(b" \t\r")):
                if count == target:
                    spans.append((start, stop))
                    taken += 1
                    target = wanted[taken] if taken < len(wanted) else -1
                count += 1
            start = stop + 1
        if count != len(objs):
            return False  # a line held two objects
        source = str(path)
        for (start, stop), i in zip(spans, wanted, strict=True):
            try:
                self._counted(objs[i], data[start:stop], path, source, out, marked=False)
            except Exception:  # a shape nobody foresaw in one line must not cost the rest of the file
                out.garbled_lines += 1
        return True

    def _line(
        self, line: bytes, position: int, path: Path, state: dict[str, Any], now: datetime, out: IngestResult
    ) -> None:
        if _CLAUDE_USAGE_MARKER.search(line):
            self._marked(line, path, str(path), out)

    def _marked(self, line: bytes, path: Path, source: str, out: IngestResult) -> None:
        """A line with the usage marker."""
        self._counted(_claude_line(line), line, path, source, out)

    def _counted(
        self, obj: _ClaudeLine | None, line: bytes, path: Path, source: str, out: IngestResult, marked: bool = True
    ) -> None:
        """A line decoded (None: json refuses it); `marked`: it is known to spell the usage marker, which a line read
        one by one must to be looked at all (a usage object under an escaped key is not read). Skipped when it has a
        null in one of ccusage's fields (not counted as garbled, whatever else is wrong with it). Both cost a look
        through the line, so they are asked last, when the line would count: most usage lines are copies that
        change nothing."""
        message = obj.message if obj is not None else None
        usage = message.usage if message is not None else None
        if obj is None or usage is None:
            if obj is None and not _has_null_field(line):
                out.garbled_lines += 1
            return  # garbled; or "usage":{ elsewhere, e.g. in a Task tool's result on a user line
        assert message is not None
        at = _timestamp(obj.timestamp)
        if at is None:
            if (marked or _spells_marker(line)) and not _has_null_field(line):
                out.garbled_lines += 1
            return
        counts = _claude_counts(usage)
        sidechain, speed = obj.isSidechain is True, usage.speed is not None
        mid, rid = message.id, obj.requestId
        copy_key = None
        if mid is not msgspec.UNSET:  # entries without a message id are never de-duplicated: each counts
            if source != self._copies_of:
                self._copies.clear()
                self._copies_of = source
            copy_key = (mid, rid, counts, sidechain, speed)
            # A copy is told before the entry is checked (most usage lines are copies): valid or not, it is not
            # offered. Ids of another type, which the check refuses, may not hash.
            if type(mid) is str and (type(rid) is str or rid is msgspec.UNSET) and copy_key in self._copies:
                return
        if not _valid_claude_entry(obj, message):
            return
        if not (marked or _spells_marker(line)) or _has_null_field(line):
            return
        if copy_key is not None:
            self._copies.add(copy_key)
        model = message.model
        self._offer(
            _ClaudeEntry(
                at,
                counts,
                counts[0] + counts[1] + counts[2] + counts[3],
                None if model is msgspec.UNSET or model == "<synthetic>" else model,
                obj.sessionId if obj.sessionId is not msgspec.UNSET else self._session_from_path(path),
                None if mid is msgspec.UNSET else mid,
                None if rid is msgspec.UNSET else rid,
                sidechain,
                speed,
                source,
            ),
            out,
        )

    def _offer(self, entry: _ClaudeEntry, out: IngestResult) -> None:
        as_rows = self.as_rows
        if entry.message_id is None:  # ccusage never de-duplicates these
            if as_rows:
                out.rows.append(entry.row(entry.total, None))
            else:
                out.records.append(entry.record(entry.counts, None))
            return
        kept = self._find(entry)
        if kept is None:
            key = f"{entry.message_id}:{entry.request_id}" if entry.request_id else entry.message_id
            if as_rows:
                pending = len(out.rows)
                out.rows.append(entry.row(entry.total, key))
            else:
                pending = len(out.records)
                out.records.append(entry.record(entry.counts, key))
            kept = _Kept(key, (entry.request_id,), entry.sidechain, entry.total, entry.speed, entry.counts, pending)
            self._remember(entry.message_id, kept)
            return
        if not _replaces(entry, kept):
            return
        if entry.request_id not in kept.request_ids:
            kept.request_ids += (entry.request_id,)
        kept.sidechain, kept.total, kept.speed = entry.sidechain, entry.total, entry.speed
        if kept.pending is not None:
            kept.emitted = entry.counts
            if as_rows:
                out.rows[kept.pending] = entry.row(entry.total, kept.key)
            else:
                out.records[kept.pending] = entry.record(entry.counts, kept.key)
            return
        before = kept.emitted
        extra = tuple(max(0, now_ - was) for now_, was in zip(entry.counts, before, strict=True))
        kept.emitted = (before[0] + extra[0], before[1] + extra[1], before[2] + extra[2], before[3] + extra[3])
        if any(extra):
            key = f"{kept.key}+{entry.total}"
            if as_rows:
                out.rows.append(entry.row(sum(extra), key, requests=0))
            else:
                out.records.append(entry.record(extra, key, requests=0))

    def _replay(self, entries: list[Any], out: IngestResult) -> None:
        make = _ClaudeEntry._make
        for values in entries:
            self._offer(make(values), out)

    def _find(self, entry: _ClaudeEntry) -> _Kept | None:
        assert entry.message_id is not None
        copies = self._seen.get(entry.message_id)
        if not copies:
            return None
        self._seen.move_to_end(entry.message_id)
        for kept in copies:
            if entry.request_id in kept.request_ids:
                return kept
        # /btw-style sidechain replays carry the parent's message with a new request id.
        return next((k for k in copies if entry.sidechain or k.sidechain), None)

    def _remember(self, message_id: str, kept: _Kept) -> None:
        self._seen.setdefault(message_id, []).append(kept)
        self._seen.move_to_end(message_id)
        self._touched.append(kept)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)

    def _flush(self) -> None:
        for kept in self._touched:
            kept.pending = None
        self._touched.clear()

    def _session_from_path(self, path: Path) -> str | None:
        """projects/<project>/<session>.jsonl or projects/<project>/<session>/…/<file>.jsonl."""
        try:
            parts = path.relative_to(self.watch_root).parts
        except ValueError:
            return None
        if len(parts) >= 3:
            return parts[1]
        return Path(parts[-1]).stem if parts else None


class _ClaudeCollector(ClaudeTranscripts):
    """ClaudeTranscripts in a parsing process: the entries it would offer are collected, for the reader that sent
    the files to offer in order (de-duplication spans all files, so it is done in one place)."""

    def __init__(self, config_dir: Path | str, offsets: Mapping[str, FileOffset] | None = None) -> None:
        super().__init__(config_dir, offsets)
        self._entries: list[_ClaudeEntry] = []
        self._same: dict[str | None, str | None] = {}

    def _offer(self, entry: _ClaudeEntry, out: IngestResult) -> None:
        self._entries.append(entry)

    def _collected(self) -> list[Any]:
        """As plain tuples: a named tuple pickles and unpickles through Python code, several times slower. A model
        and a session id, decoded anew on each line, are sent as one string each (pickle then writes each once per
        task, and the daemon makes each once)."""
        entries, self._entries = self._entries, []
        same = self._same
        if self.as_rows:  # at as the heartbeat stores and counts it, made here rather than in the daemon
            return [(None, e.counts, e.total, same.setdefault(e.model, e.model),
                     same.setdefault(e.session_id, e.session_id), e.message_id, e.request_id, e.sidechain, e.speed,
                     e.source_path, _iso(e.at), e.at.timestamp()) for e in entries if e.at is not None]  # fmt: skip
        return [(e.at, e.counts, e.total, same.setdefault(e.model, e.model),
                 same.setdefault(e.session_id, e.session_id), e.message_id, e.request_id, e.sidechain, e.speed,
                 e.source_path, None, 0.0) for e in entries]  # fmt: skip


ClaudeTranscripts._collector = _ClaudeCollector

_NULL_FIELDS = frozenset(
    b"id cwd model speed costUSD version sessionId requestId isApiErrorMessage cache_read_input_tokens "
    b"cache_creation_input_tokens".split()
)
_SPACE = b" \t\n\r\f\v"  # what \s matches in a bytes regular expression
_STOP_NULLS = b'"stop_reason":null,"stop_sequence":null'
_STOP_FIRST = _STOP_NULLS.index(b"null")  # where its first null is in it
_STOP_SECOND = _STOP_NULLS.index(b"null", _STOP_FIRST + 4) - _STOP_FIRST  # and its second, from the first


def _has_null_field(line: bytes) -> bool:
    """ccusage's skip rule: `"<one of its fields>"\\s*:\\s*null` anywhere in the line; looked for backwards from each
    `null` (a line has two or three), each step a C call: a regular expression would start at every quote."""
    at = line.find(b"null")
    if (
        at >= _STOP_FIRST
        and line.startswith(_STOP_NULLS, at - _STOP_FIRST)
        and line.find(b"null", at + 4) == at + _STOP_SECOND
        and line.find(b"null", at + _STOP_SECOND + 4) < 0
    ):
        # Claude Code's usual two, its message's stop_reason and stop_sequence, and no other null: told in one pass
        # through the line, each find taking up where the last stopped (counting them and then looking for the
        # pair took two)
        return False
    while at >= 0:
        colon = line.rfind(b":", 0, at)
        if colon > 0 and not line[colon + 1 : at].strip(_SPACE):
            closing = line.rfind(b'"', 0, colon)
            if closing > 0 and not line[closing + 1 : colon].strip(_SPACE):
                opening = line.rfind(b'"', 0, closing)
                if opening >= 0 and line[opening + 1 : closing] in _NULL_FIELDS:
                    return True
        at = line.find(b"null", at + 4)
    return False


def _replaces(entry: _ClaudeEntry, kept: _Kept) -> bool:
    if entry.sidechain != kept.sidechain:
        return kept.sidechain
    if entry.total != kept.total:
        return entry.total > kept.total
    return entry.speed and not kept.speed


# -- Codex --------------------------------------------------------------------------------------


class CodexRollouts(_JsonlTail):
    """Codex rollouts: ``<dir>/sessions/YYYY/MM/DD/rollout-*-<thread id>.jsonl`` and ``<dir>/archived_sessions/``.

    One record per ``event_msg``/``token_count`` whose usage moved: ``last_token_usage`` when present, else the
    difference from the file's previous ``total_token_usage`` (a total that went down is a reset: counted whole).
    An event whose running total equals the previous one is a re-emit (Codex repeats token_count on rate-limit
    updates) and counts nothing; all-zero usage counts nothing. OpenAI semantics in: input includes the cached
    part. Model from the preceding ``turn_context``. dedupe_key ``"<thread id>:<line timestamp>"`` (or the line's
    ordinal, or ``@<byte offset>``), remembered across files (an archived copy is the same thread) and scans.
    A spawned sub-agent's or fork's rollout starts by replaying its parent's token_count events: those (the first
    one, those in the same second, and those older than the child itself) only set the running total.
    Windows: the latest rate_limits snapshot per limit id, by line timestamp, returned whenever a newer one came.
    """

    def __init__(
        self, config_dir: Path | str, offsets: Mapping[str, FileOffset] | None = None, *, max_keys: int = MAX_KEYS
    ) -> None:
        super().__init__(config_dir, offsets)
        self._max_keys = max(1, max_keys)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._snapshots: dict[str, tuple[datetime, int, dict[str, Any]]] = {}  # limit id → (at, order, line)
        self._order = 0
        self._new_snapshot = False

    @property
    def watch_root(self) -> Path:
        return self.config_dir / "sessions"

    def _roots(self) -> list[Path]:
        return [self.watch_root, self.config_dir / "archived_sessions"]

    def _wanted(self, name: str) -> bool:
        return name.startswith("rollout-") and name.endswith(".jsonl")

    def _line(
        self, line: bytes, position: int, path: Path, state: dict[str, Any], now: datetime, out: IngestResult
    ) -> None:
        if not any(marker in line for marker in _CODEX_MARKERS):
            return
        obj = _load_object(line)
        if obj is None:
            out.garbled_lines += 1
            return
        payload = obj.get("payload") if isinstance(obj.get("payload"), dict) else obj.get("msg")
        if not isinstance(payload, dict):
            return
        kind = obj.get("type")
        if kind == "session_meta":
            _session_meta(state, obj, payload)
        elif kind == "turn_context":
            state["model"] = _text(payload.get("model")) or state.get("model")
        elif payload.get("type") == "token_count":
            self._token_count(obj, payload, position, path, state, now, out)

    def _token_count(
        self,
        obj: dict[str, Any],
        payload: dict[str, Any],
        position: int,
        path: Path,
        state: dict[str, Any],
        now: datetime,
        out: IngestResult,
    ) -> None:
        stamp = _text(obj.get("timestamp"))
        at = _timestamp(stamp)
        info = payload.get("info") if isinstance(payload.get("info"), dict) else {}
        total = _codex_usage(info.get("total_token_usage"))
        last = _codex_usage(info.get("last_token_usage"))
        if _replayed(state, at):
            if total is not None:
                state["totals"] = list(total)
            return
        limits = payload.get("rate_limits")
        if isinstance(limits, dict):
            self._snapshot(limits, stamp, at or now)
        delta = _delta(state, total, last)
        if delta is None or not any(delta[:4]):
            return
        thread = _thread_id(path) or _text(state.get("thread")) or path.stem
        ordinal = obj.get("ordinal")
        if stamp:
            key = f"{thread}:{stamp}"
        elif isinstance(ordinal, int) and not isinstance(ordinal, bool):
            key = f"{thread}:#{ordinal}"
        else:
            key = f"{thread}:@{position}"
        if key in self._seen:
            self._seen.move_to_end(key)
            return
        self._seen[key] = None
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        given, cached, output = delta[0], min(delta[1], delta[0]), delta[2]
        usage = TokenUsage(input_tokens=given - cached, output_tokens=output, cache_read_tokens=cached)
        model = _text(payload.get("model")) or _text(info.get("model")) or _text(state.get("model"))
        out.records.append(UsageRecord(at or now, usage, model, thread, key, str(path)))

    def _snapshot(self, limits: dict[str, Any], stamp: str | None, at: datetime) -> None:
        limit_id = _text(limits.get("limit_id")) or "codex"
        previous = self._snapshots.get(limit_id)
        if previous is not None and previous[0] > at:
            return  # an older snapshot (an archived copy, a file read again) does not win
        self._order += 1
        line = {
            "timestamp": stamp or at.isoformat(),
            "type": "event_msg",
            "payload": {"type": "token_count", "rate_limits": limits},
        }
        self._snapshots[limit_id] = (at, self._order, line)
        self._new_snapshot = True

    def _finish(self, now: datetime, out: IngestResult) -> None:
        if not self._new_snapshot:
            return
        self._new_snapshot = False
        latest = sorted(self._snapshots.values(), key=lambda snap: (snap[0], snap[1]))
        # Imported here: a parsing process (spawned, importing this module) never needs Codex's output parser.
        from fleetd.backends.parsers.codex import parse_rollout

        out.windows = parse_rollout("\n".join(json.dumps(snap[2]) for snap in latest), now, UTC)


def _thread_id(path: Path) -> str | None:
    match = _THREAD_ID.search(path.name.removesuffix(".jsonl"))
    return match.group(1) if match else None


def _session_meta(state: dict[str, Any], obj: dict[str, Any], payload: dict[str, Any]) -> None:
    """The file's first session_meta only: a replayed history may carry the parent's too."""
    if state.get("meta"):
        return
    state["meta"] = True
    state["thread"] = _text(payload.get("id"))
    source = payload.get("source")
    subagent = source.get("subagent") if isinstance(source, dict) else None
    spawned = isinstance(subagent, dict) and "thread_spawn" in subagent
    if spawned or _text(payload.get("forked_from_id")):
        created = _timestamp(payload.get("timestamp")) or _timestamp(obj.get("timestamp"))
        state["child"] = True
        state["created"] = created.isoformat() if created else None


def _replayed(state: dict[str, Any], at: datetime | None) -> bool:
    """Whether a child rollout's token_count is still its parent's replayed history."""
    if not state.get("child") or state.get("replay_done"):
        return False
    second = at.replace(microsecond=0).isoformat() if at else ""
    first = state.get("replay_second")
    if first is None:
        state["replay_second"] = second
        return True
    created = _timestamp(state.get("created"))
    if (second and second == first) or (at is not None and created is not None and at < created):
        return True
    state["replay_done"] = True
    return False


def _codex_usage(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, dict):
        return None
    numbers = [_count(value.get(name)) for name in _CODEX_FIELDS]
    if "total_tokens" not in value:
        numbers[4] = numbers[0] + numbers[2]
    return tuple(numbers)


def _delta(
    state: dict[str, Any], total: tuple[int, ...] | None, last: tuple[int, ...] | None
) -> tuple[int, ...] | None:
    stored = state.get("totals")
    previous = tuple(stored) if isinstance(stored, list) and len(stored) == len(_CODEX_FIELDS) else None
    if total is not None:
        state["totals"] = list(total)
        if total == previous:
            return None  # a re-emit: the running total did not move
    if last is not None:
        return last
    if total is None:
        return None
    if previous is None or any(now_ < before for now_, before in zip(total, previous, strict=True)):
        return total  # the file's first total, or the running total was reset
    return tuple(now_ - before for now_, before in zip(total, previous, strict=True))
