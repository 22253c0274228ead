"""The gateway's journal: what a kill -9 would take from the call log and the profiles' windows, kept in a file
until the store has it.

A finished call is written to the store in the recorder's next batch (recorder.py), up to a linger and a heartbeat
step later; a call under way is written only when it ends. A daemon killed meanwhile lost both: its calls were never
counted against their profiles' `--limit`s or daily costs, nor their keys' caps. So each attempt's start and each
call's end is first one line here (copied into a file mapped in memory, no fsync: what a process's death must not
lose, the page cache keeps; a power cut is the store's durability, not this file's), and the next start writes into
the store what it does not have yet (`read`, `GatewayStore.replay`): an ended call as it ended, a call under way as
`interrupted`, one request on the profile it was at, what it used unknown.

Lines go to a segment file, and each batch the recorder takes starts a new one (`rotate`): the old segments hold
nothing but that batch's ends and the starts of calls still under way, which are written again into the new one,
so they are removed once the batch is written (`written`). Replaying is idempotent: a call row is keyed by its id
(given here, before the call is forwarded) and each attempt's use by its call's id and its number (`attempt_key`),
so what was written before the kill is skipped.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from fleetd.records.gateway import OUTCOMES, AttemptUse, GatewayCall
from fleetd.timefmt import from_iso, to_iso

log = logging.getLogger("fleetd.gateway")
SEGMENT_BYTES = 256 * 1024  # a segment's size (one more follows when a batch's lines fill it)
INTERRUPTED = (
    "fleetd stopped while the call was under way (its stop grace ran out, or a crash or kill -9): what it "
    "used is not known"
)
# A call's fields as a line keeps them, in order (a list: no field names, no dict, on every call's path). Its logged
# bodies are not kept: a replayed call has none.
_ROW = ("key", "route", "api", "streamed", "outcome", "status", "error", "path", "profile", "model", "ttft_ms",
        "latency_ms", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
        "cost_usd")  # fmt: skip
_encode = msgspec.json.Encoder().encode


def attempt_key(call_id: int | None, attempt: int) -> tuple[int, int] | None:
    """The key of a call's `attempt`-th try (0 first) on its usage record: what makes replaying it idempotent."""
    return None if call_id is None else (call_id, attempt)


@dataclass
class Replay:
    calls: list[GatewayCall]
    uses: list[AttemptUse]
    segments: list[Path]


class Journal:
    """Appends to segment files under `directory`; gives call ids from `first_id` on. With no directory (a proxy
    made without a daemon, in tests) it keeps nothing and gives no ids: the store numbers the calls."""

    def __init__(self, directory: Path | None, first_id: int = 1) -> None:
        self.directory = directory
        self._next_id = first_id
        self._open: dict[int, list[bytes]] = {}  # the start lines of each call under way, by call id
        self._segment = 0
        self._map: mmap.mmap | None = None  # the segment being written, mapped
        self._at = 0  # where its next line goes
        self._paths: list[Path] = []  # the segments since the last rotation (more than one when one filled)
        self._started = time.time_ns()
        self._failing = False  # the last line could not be written (said once, until one can)

    def new_id(self) -> int | None:
        if self.directory is None:
            return None
        self._next_id += 1
        return self._next_id - 1

    @property
    def under_way(self) -> int:
        """Calls whose attempt has begun and which have not ended."""
        return len(self._open)

    def began(self, call: GatewayCall, attempt: int, profile: str, at: datetime) -> None:
        """Attempt `attempt` of `call` goes to `profile`'s provider now."""
        if call.id is None:
            return
        line = _line(["b", call.id, attempt, profile, to_iso(at), to_iso(call.at), call.key, call.route, call.api,
                      call.streamed])  # fmt: skip
        self._open.setdefault(call.id, []).append(line)
        self._append(line)

    def ended(self, call: GatewayCall, use: AttemptUse | None = None) -> None:
        """`call` ended as its fields say; `use`: what its last attempt used, when that goes to the store with the call
        (a success), not on its own (a failure, written as it happened)."""
        if call.id is None:
            return
        self._open.pop(call.id, None)
        used = None if use is None else [use.profile, to_iso(use.at), use.tokens, use.cost_usd, *use.key]
        self._append(_line(["f", call.id, to_iso(call.at), [getattr(call, k) for k in _ROW], used]))

    def dropped(self, call: GatewayCall) -> None:
        """`call` ended with nothing for the call log (cancelled before it had an answer): not under way any more."""
        if call.id is not None and self._open.pop(call.id, None) is not None:
            self._append(_line(["d", call.id]))  # its start, in this segment still, is not a call under way

    def rotate(self) -> list[Path]:
        """Start a new segment, the starts of the calls under way copied into it; returns the old ones, to remove once
        what was queued until now is written (`written`)."""
        old, self._paths = self._paths, []
        self._unmap()
        if self._open:
            self._append(b"".join(line for lines in self._open.values() for line in lines))
        return old

    def written(self, segments: list[Path]) -> None:
        for segment in segments:
            try:
                segment.unlink(missing_ok=True)
            except OSError as e:  # replayed again at the next start, where it changes nothing
                log.warning("gateway: cannot remove journal segment %s: %s", segment, e)

    def close(self) -> None:
        """At a stop, everything written: the last segment goes too, unless a call is somehow still under way."""
        if not self._open:
            self.written(self.rotate())
        self._unmap()

    def _append(self, data: bytes) -> None:
        """Into the mapped segment: a copy in memory, no system call. A `write` gave up the GIL and waited to have it
        back behind the store's thread, twice a call: 10-15 % of the gateway's throughput. The pages are the file's
        in the page cache, which a kill -9 leaves to the kernel to write."""
        if self.directory is None:
            return
        try:
            if self._map is None or self._at + len(data) > len(self._map):
                self._new_segment(max(SEGMENT_BYTES, len(data)))
            assert self._map is not None
            self._map[self._at : self._at + len(data)] = data
            self._at += len(data)
        except (OSError, ValueError) as e:  # the call still goes to the store: only a kill -9 now could lose it
            self._unmap()
            if not self._failing:  # once, not at every line of every call while the disk is full
                log.warning("gateway: cannot write the journal (%s): a kill -9 now would lose calls", e)
            self._failing = True
            return
        if self._failing:
            self._failing = False
            log.warning("gateway: the journal is written again")

    def _new_segment(self, size: int) -> None:
        self._unmap()
        assert self.directory is not None
        self._segment += 1
        # Named by this journal's start and its count: a daemon that has the same pid as the last one (in a container,
        # pid 1 at every start) must not reuse the name of a segment a failed replay kept.
        path = self.directory / f"{self._started}-{self._segment:08d}.jsonl"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # Its blocks taken now: a page of a sparse file written through the map when the disk is full is a
            # SIGBUS, not an error.
            os.posix_fallocate(fd, 0, size)
            self._map = mmap.mmap(fd, size)
        except OSError:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self._paths.append(path)
        self._at = 0

    def _unmap(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def _line(entry: list[Any]) -> bytes:
    return _encode(entry) + b"\n"


def read(directory: Path) -> Replay:
    """What the segments under `directory` hold that the store may not: every ended call, and every call with a
    start and no end as interrupted. A line cut short (the disk filled, the machine died mid-write) is skipped."""
    segments = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []  # in any order: an end outranks a start
    ended: dict[int, list[Any]] = {}
    began: dict[int, dict[int, list[Any]]] = {}
    gone: set[int] = set()  # dropped: ended with nothing for the call log
    readable = []
    for segment in segments:
        try:
            data = segment.read_bytes()
        except OSError as e:  # left where it is, for a start that can read it
            log.error("gateway: cannot read journal segment %s: %s", segment, e)
            continue
        readable.append(segment)
        # A segment is mapped at its full size: its lines end where the zeros it was made with begin.
        end = data.find(b"\0")
        for raw in (data if end < 0 else data[:end]).splitlines():
            try:
                entry = msgspec.json.decode(raw)
                kind, call_id = entry[0], int(entry[1])
                if kind == "f":
                    ended[call_id] = entry
                elif kind == "d":
                    gone.add(call_id)
                else:
                    began.setdefault(call_id, {})[int(entry[2])] = entry
            except (msgspec.DecodeError, ValueError, IndexError, TypeError):
                log.warning("gateway: journal %s: a damaged line skipped", segment.name)
    found = [(call_id, "end", functools.partial(_ended, call_id, entry)) for call_id, entry in ended.items()]
    found += [(call_id, "start", functools.partial(_interrupted, call_id, attempts))
              for call_id, attempts in began.items() if call_id not in ended and call_id not in gone]  # fmt: skip
    calls: list[GatewayCall] = []
    uses: list[AttemptUse] = []
    for call_id, which, build in found:
        try:
            call, its = build()
            _check(call, its)
        except (ValueError, TypeError, IndexError):
            log.warning("gateway: journal: call %s's %s is damaged; skipped", call_id, which)
            continue
        calls.append(call)
        uses.extend(its)
    calls.sort(key=lambda c: c.id or 0)
    return Replay(calls, uses, readable)


def _ended(call_id: int, entry: list[Any]) -> tuple[GatewayCall, list[AttemptUse]]:
    """An ended call as its end's line has it, with its last try's use when that went to the store with the call."""
    _, _, at, row, used = entry
    call = GatewayCall(_at(at), **dict(zip(_ROW, row, strict=True)), id=call_id)
    if used is None:
        return call, []
    profile, used_at, tokens, cost, _, attempt = used
    return call, [AttemptUse(profile, _at(used_at), tokens, cost, (call_id, attempt))]


def _interrupted(call_id: int, attempts: dict[int, list[Any]]) -> tuple[GatewayCall, list[AttemptUse]]:
    """A call with starts and no end: `interrupted`, one request on each profile it tried (its tries that failed were
    written as they failed: their records are found and skipped)."""
    tries = [attempts[n] for n in sorted(attempts)]
    _, _, _, profile, _, call_at, key, route, api, streamed = tries[-1]
    path = [{"profile": t[3], "model": None, "status": None, "class": None, "latency_ms": 0} for t in tries]
    call = GatewayCall(_at(call_at), key, route, api, streamed, outcome="interrupted", error=INTERRUPTED, path=path,
                       profile=profile, id=call_id)  # fmt: skip
    return call, [AttemptUse(t[3], _at(t[4]), 0, 0.0, (call_id, n)) for n, t in attempts.items()]


def _check(call: GatewayCall, uses: list[AttemptUse]) -> None:
    """ValueError unless the line's fields are what the store takes (a line that decodes can still be wrong: written by
    another version, or by hand), so that one such line does not keep the rest out of the store at every start."""
    text = (call.route, call.api)
    maybe_text = (call.key, call.error, call.profile, call.model)
    counts = (call.latency_ms, call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens)
    if not (
        _count(call.id) and call.id > 0
        and all(isinstance(v, str) and v for v in text) and all(v is None or isinstance(v, str) for v in maybe_text)
        and isinstance(call.streamed, bool) and call.outcome in OUTCOMES and isinstance(call.path, list)
        and all(_count(v) for v in counts) and all(v is None or _count(v) for v in (call.status, call.ttft_ms))
        and isinstance(call.cost_usd, int | float) and call.cost_usd >= 0
        and all(isinstance(u.profile, str) and _count(u.tokens) and isinstance(u.cost_usd, int | float)
                and _count(u.key[1]) for u in uses)
    ):  # fmt: skip
        raise ValueError(f"call {call.id}: a field of the wrong kind")


def _count(value: object) -> bool:
    """A whole number SQLite's INTEGER holds (a larger one failed the whole replay)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _at(text: str) -> datetime:
    at = from_iso(text)
    if at is None:
        raise ValueError(text)
    return at
