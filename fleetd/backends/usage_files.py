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
import json
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from fleetd.backends.parsers.codex import parse_rollout
from fleetd.records.result import TokenUsage, WindowState

MAX_KEYS = 200_000  # de-duplication keys remembered per profile (message ids resp. Codex event keys)
CHUNK_BYTES = 4 << 20
BATCH_RECORDS = 5_000  # records per part of a scan (`batches`): what one database transaction inserts
MAX_LINE_BYTES = 64 << 20  # a "line" longer than this without a newline is junk: dropped, not buffered forever

_STRIP = b" \t\r\n\x00"  # NUL padding is what a crash mid-write leaves behind on some filesystems
# ccusage's cheap pre-filter, tolerant of whitespace after the colon (pretty-printed or re-serialised lines).
_CLAUDE_USAGE_MARKER = re.compile(rb'"usage"\s*:\s*\{')
_SEMVER_PREFIX = re.compile(r"\d+\.\d+\.\d")
_CODEX_MARKERS = (b'"token_count"', b'"turn_context"', b'"session_meta"')
_CODEX_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens", "total_tokens")
_THREAD_ID = re.compile(r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request's consumption (or, with requests=0, a later correction of one; see ClaudeTranscripts)."""

    at: datetime  # aware, UTC
    usage: TokenUsage
    model: str | None
    session_id: str | None
    dedupe_key: str | None
    source_path: str
    requests: int = 1


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
    windows: list[WindowState] = field(default_factory=list)  # latest Codex rate-limit snapshot, if a new one came
    garbled_lines: int = 0
    files_read: int = 0  # files with new bytes
    bytes_read: int = 0  # bytes actually read from disk this scan
    touched: set[str] = field(default_factory=set)  # files whose offset moved: persist these
    saved: dict[str, Any] = field(default_factory=dict)  # their offsets as JSON, made when the part was handed out
    forgotten: set[str] = field(default_factory=set)  # files no longer there: drop their offsets

    def merge(self, other: IngestResult) -> None:
        self.records += other.records
        self.windows = other.windows or self.windows
        self.garbled_lines += other.garbled_lines
        self.files_read += other.files_read
        self.bytes_read += other.bytes_read
        self.touched |= other.touched
        self.forgotten |= other.forgotten
        self.saved.update(other.saved)


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
            for path in candidates:
                if paths is None:
                    listed.add(str(path))
                elif not path.exists():
                    self._forget(str(path), result)
                    continue
                self._read(path, now, result)
                if batch_records and len(result.records) >= batch_records:
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


@dataclass(slots=True)
class _Kept:
    """The copy of a message that counts, after ccusage's collision rules, and what was emitted for it."""

    key: str
    request_ids: tuple[str | None, ...]
    sidechain: bool
    total: int
    speed: bool
    emitted: TokenUsage
    pending: int | None  # index of this scan's record for it, which can still be replaced outright


@dataclass(slots=True)
class _ClaudeEntry:
    at: datetime
    usage: TokenUsage
    model: str | None
    session_id: str | None
    message_id: str | None
    request_id: str | None
    sidechain: bool
    speed: bool
    source_path: str

    def record(self, usage: TokenUsage, key: str | None, requests: int = 1) -> UsageRecord:
        return UsageRecord(self.at, usage, self.model, self.session_id, key, self.source_path, requests)


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
        # Hashes of the raw (message id, usage … request id, sidechain) of lines already taken: Claude Code writes a
        # message once per content block, and a copy identical in all that decides the collision changes nothing.
        self._copies: OrderedDict[int, None] = OrderedDict()

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
        find, search = data.find, _CLAUDE_USAGE_MARKER.search
        hit = search(data, 0, end)
        marked = hit.start() if hit else end
        start = 0
        while start < end:
            stop = find(b"\n", start, end)  # found: data[end - 1] is a newline
            if data[start] == 0x7B and data[stop - 1] == 0x7D:  # "{" … "}", nothing to strip
                if marked < stop:
                    try:
                        self._marked(data, start, stop, path, out)
                    except Exception:  # a shape nobody foresaw in one line must not cost the rest of the file
                        out.garbled_lines += 1
            else:
                self._safe_line(data[start:stop], position + start, path, state, now, out)
            start = stop + 1
            if marked < start:
                hit = search(data, start, end)
                marked = hit.start() if hit else end

    def _marked(self, data: bytes, start: int, stop: int, path: Path, out: IngestResult) -> None:
        """A whole line data[start:stop] that contains the usage marker."""
        copy_key, message_at, usage_at = _copy_key(data, start, stop)
        if copy_key is not None and copy_key in self._copies:
            return
        line = data[start:stop]
        if _has_null_field(line):
            return
        obj = None
        if usage_at >= 0:  # Claude Code's own layout: decode the few hundred bytes around the content only
            obj = _around_content(data, start, stop, message_at, usage_at)
        if obj is None:
            obj = _load_object(line)
            if obj is None:
                out.garbled_lines += 1
                return
        if self._take(obj, path, out) and copy_key is not None:
            self._copies[copy_key] = None
            if len(self._copies) > self._max_keys:
                self._copies.popitem(last=False)

    def _line(
        self, line: bytes, position: int, path: Path, state: dict[str, Any], now: datetime, out: IngestResult
    ) -> None:
        if not _CLAUDE_USAGE_MARKER.search(line) or _has_null_field(line):
            return
        obj = _load_object(line)
        if obj is None:
            out.garbled_lines += 1
            return
        self._take(obj, path, out)

    def _take(self, obj: dict[str, Any], path: Path, out: IngestResult) -> bool:
        """A decoded line with the usage marker; True when it was a usage entry (offered for de-duplication)."""
        message = obj.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
        if not isinstance(message, dict) or not isinstance(usage, dict):
            return False  # "usage":{ elsewhere, e.g. in a Task tool's result on a user line
        at = _timestamp(obj.get("timestamp"))
        if at is None:
            out.garbled_lines += 1
            return False
        if not _valid_claude_entry(obj, message):
            return False
        model = _text(message.get("model"))
        # The total, as the attempt's own parser counts it: Claude Code reports a breakdown of zeros beside
        # a real total when the provider sends none, so the breakdown is only a fallback for a missing total.
        cache = usage.get("cache_creation")
        if usage.get("cache_creation_input_tokens") is None and isinstance(cache, dict):
            written = _count(cache.get("ephemeral_5m_input_tokens")) + _count(cache.get("ephemeral_1h_input_tokens"))
        else:
            written = _count(usage.get("cache_creation_input_tokens"))
        entry = _ClaudeEntry(
            at=at,
            usage=TokenUsage(
                input_tokens=_count(usage.get("input_tokens")),
                output_tokens=_count(usage.get("output_tokens")),
                cache_read_tokens=_count(usage.get("cache_read_input_tokens")),
                cache_write_tokens=written,
            ),
            model=None if model == "<synthetic>" else model,
            session_id=_text(obj.get("sessionId")) or self._session_from_path(path),
            message_id=_text(message.get("id")),
            request_id=_text(obj.get("requestId")),
            sidechain=obj.get("isSidechain") is True,
            speed=usage.get("speed") is not None,
            source_path=str(path),
        )
        self._offer(entry, out)
        return True

    def _offer(self, entry: _ClaudeEntry, out: IngestResult) -> None:
        if entry.message_id is None:
            out.records.append(entry.record(entry.usage, None))  # ccusage never de-duplicates these
            return
        kept = self._find(entry)
        if kept is None:
            key = f"{entry.message_id}:{entry.request_id}" if entry.request_id else entry.message_id
            kept = _Kept(
                key,
                (entry.request_id,),
                entry.sidechain,
                entry.usage.total,
                entry.speed,
                entry.usage,
                pending=len(out.records),
            )
            out.records.append(entry.record(entry.usage, key))
            self._remember(entry.message_id, kept)
            return
        if not _replaces(entry, kept):
            return
        if entry.request_id not in kept.request_ids:
            kept.request_ids += (entry.request_id,)
        kept.sidechain, kept.total, kept.speed = entry.sidechain, entry.usage.total, entry.speed
        if kept.pending is not None:
            out.records[kept.pending] = entry.record(entry.usage, kept.key)
            kept.emitted = entry.usage
            return
        before, now_ = kept.emitted, entry.usage
        extra = TokenUsage(
            max(0, now_.input_tokens - before.input_tokens),
            max(0, now_.output_tokens - before.output_tokens),
            max(0, now_.cache_read_tokens - before.cache_read_tokens),
            max(0, now_.cache_write_tokens - before.cache_write_tokens),
        )
        kept.emitted = before + extra
        if extra.total:
            out.records.append(entry.record(extra, f"{kept.key}+{entry.usage.total}", requests=0))

    def _find(self, entry: _ClaudeEntry) -> _Kept | None:
        assert entry.message_id is not None
        copies = self._seen.get(entry.message_id)
        if not copies:
            return None
        self._seen.move_to_end(entry.message_id)
        exact = next((k for k in copies if entry.request_id in k.request_ids), None)
        if exact is not None:
            return exact
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


def _valid_claude_entry(obj: dict[str, Any], message: dict[str, Any]) -> bool:
    """ccusage's is_valid_usage_entry: optional fields, but when present, well-formed and not empty."""
    version = obj.get("version")
    if "version" in obj and not (isinstance(version, str) and _SEMVER_PREFIX.match(version)):
        return False
    for where, key in ((obj, "sessionId"), (obj, "requestId"), (message, "id"), (message, "model")):
        if key in where and not (isinstance(value := where[key], str) and value):
            return False
    return True


_COPY_MESSAGE = b'"message":{"id":"'
_COPY_USAGE = b'"usage":{'
_COPY_REQUEST = b'"requestId":"'
_NULL_FIELDS = frozenset(
    b"id cwd model speed costUSD version sessionId requestId isApiErrorMessage cache_read_input_tokens "
    b"cache_creation_input_tokens".split()
)
_SPACE = b" \t\n\r\f\v"


def _copy_key(data: bytes, start: int, stop: int) -> tuple[int | None, int, int]:
    """For a line in Claude Code's own layout (`{…"message":{"id":"…",…,"usage":{…}…},"requestId":"…",…}`): a hash
    of what decides a collision (message id, the bytes from the usage object to the request id, the sidechain flag),
    where the message and the usage object start. (None, -1, -1) for any other layout."""
    usage_at = data.rfind(_COPY_USAGE, start, stop)
    if usage_at < 0:
        return None, -1, -1
    request_at = data.find(_COPY_REQUEST, usage_at, stop)
    message_at = data.find(_COPY_MESSAGE, start, usage_at)
    if request_at < 0 or message_at < 0:
        return None, -1, -1
    id_end = data.find(b'"', message_at + len(_COPY_MESSAGE), usage_at)
    request_end = data.find(b'"', request_at + len(_COPY_REQUEST), stop)
    if id_end < 0 or request_end < 0:
        return None, -1, -1
    sidechain = data.find(b'"isSidechain":true', start, message_at) >= 0
    key = (data[message_at + len(_COPY_MESSAGE) : id_end], data[usage_at:request_end], sidechain)
    return hash(key), message_at, usage_at


def _around_content(data: bytes, start: int, stop: int, message_at: int, usage_at: int) -> dict[str, Any] | None:
    """The line decoded without its message content, which is most of its bytes and nothing ccusage reads.

    Claude Code writes `…"message":{…,"content":[…],"stop_reason":…,"usage":{…}…},…}`: the bytes up to the content
    array, `null`, and the bytes from the array's end (its last `],"stop_reason":` before the usage object) on are
    decoded as one document. That is the full line's decoding with `content: null` whenever the content array is
    well-formed and spells no structural `],"stop_reason":` of its own; anything after it that is not the message's
    remaining keys and the line's own, or any other layout, does not decode or is not found: None, and the caller
    decodes the whole line.
    """
    content_at = data.find(b'"content":[', message_at, usage_at)
    if content_at < 0:
        return None
    after = data.rfind(b'],"stop_reason":', content_at, usage_at)
    if after < 0:
        return None
    try:
        # msgspec alone: it refuses trailing bytes and anything json would decode differently; what it rejects,
        # the caller's full decode settles.
        value = _FAST.decode(data[start : content_at + 10] + b"null" + data[after + 1 : stop])
    except (msgspec.DecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _has_null_field(line: bytes) -> bool:
    """ccusage's skip rule: `"<one of its fields>"\\s*:\\s*null` anywhere in the line (as _CLAUDE_NULL_FIELD, but
    looking back from each `null`, which is far rarer in a line than the quotes the regular expression starts at)."""
    at = line.find(b"null")
    while at >= 0:
        end = at
        while end and line[end - 1] in _SPACE:
            end -= 1
        if end and line[end - 1] == 0x3A:  # ":"
            end -= 1
            while end and line[end - 1] in _SPACE:
                end -= 1
            if end > 1 and line[end - 1] == 0x22:  # the key's closing quote
                opening = line.rfind(b'"', 0, end - 1)
                if opening >= 0 and line[opening + 1 : end - 1] in _NULL_FIELDS:
                    return True
        at = line.find(b"null", at + 4)
    return False


def _replaces(entry: _ClaudeEntry, kept: _Kept) -> bool:
    if entry.sidechain != kept.sidechain:
        return kept.sidechain
    if entry.usage.total != kept.total:
        return entry.usage.total > kept.total
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
