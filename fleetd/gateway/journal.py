"""The gateway's journal: what a kill -9 would take from the call log and the profiles' windows, kept in a file
until the store has it.

A finished call is written to the store in the recorder's next batch (recorder.py), up to a linger and a heartbeat
step later; a call under way is written only when it ends. A daemon killed meanwhile lost both: its calls were never
counted against their profiles' `--limit`s or daily costs, nor their keys' caps. So each attempt's start and each
call's end is first one line appended here (one `write`, no fsync: what a process's death must not lose, the page
cache keeps; a power cut is the store's durability, not this file's), and the next start writes into the store what
it does not have yet (`read`, `GatewayStore.replay`): an ended call as it ended, a call under way as `interrupted`,
one request on the profile it was at, what it used unknown.

Lines go to a segment file, and each batch the recorder takes starts a new one (`rotate`): the old segment holds
nothing but that batch's ends and the starts of calls still under way, which are written again into the new one,
so it is removed once its batch is written (`written`). Replaying is idempotent: a call row is keyed by its id
(given here, before the call is forwarded) and each attempt's use by `<call id>.<attempt>` (`attempt_key`), so
what was written before the kill is skipped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetd.records.gateway import AttemptUse, GatewayCall
from fleetd.timefmt import from_iso, to_iso

log = logging.getLogger("fleetd.gateway")
INTERRUPTED = "fleetd stopped while the call was under way (a crash or kill -9): what it used is not known"
_HEAD = ("at", "key", "route", "api", "streamed")  # the fields a call has from its start
_NOT_KEPT = ("request_body", "response_body")  # a replayed call row has no logged bodies


def attempt_key(call_id: int | None, attempt: int) -> str | None:
    """The key of a call's `attempt`-th try (0 first) on its usage record: what makes replaying it idempotent."""
    return None if call_id is None else f"{call_id}.{attempt}"


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
        self._fd: int | None = None
        self._path: Path | None = None

    def new_id(self) -> int | None:
        if self.directory is None:
            return None
        self._next_id += 1
        return self._next_id - 1

    def began(self, call: GatewayCall, attempt: int, profile: str, at: datetime) -> None:
        """Attempt `attempt` of `call` goes to `profile`'s provider now."""
        if call.id is None:
            return
        head = {k: to_iso(call.at) if k == "at" else getattr(call, k) for k in _HEAD}
        line = _line({"b": call.id, "n": attempt, "profile": profile, "at": to_iso(at), "call": head})
        self._open.setdefault(call.id, []).append(line)
        self._append(line)

    def ended(self, call: GatewayCall, use: AttemptUse | None = None) -> None:
        """`call` ended as its fields say; `use`: what its last attempt used, when that goes to the store with the call
        (a success), not on its own (a failure, written as it happened)."""
        if call.id is None:
            return
        self._open.pop(call.id, None)
        row = {k: v for k, v in asdict(call).items() if k not in _NOT_KEPT}
        row["at"] = to_iso(call.at)
        entry: dict[str, Any] = {"f": call.id, "call": row}
        if use is not None:
            entry["use"] = {"profile": use.profile, "at": to_iso(use.at), "tokens": use.tokens, "cost": use.cost_usd,
                            "key": use.key}  # fmt: skip
        self._append(_line(entry))

    def dropped(self, call: GatewayCall) -> None:
        """`call` ended with nothing for the call log (cancelled before it had an answer): not under way any more."""
        if call.id is not None and self._open.pop(call.id, None) is not None:
            self._append(_line({"d": call.id}))  # its start, in this segment still, is not a call under way

    def rotate(self) -> Path | None:
        """Start a new segment, the starts of the calls under way copied into it; returns the old one, to remove once
        what was queued until now is written (`written`)."""
        old, fd = self._path, self._fd
        self._path = self._fd = None
        if fd is not None:
            os.close(fd)
        if self._open:
            self._append(b"".join(line for lines in self._open.values() for line in lines))
        return old

    def written(self, segment: Path | None) -> None:
        if segment is not None:
            try:
                segment.unlink(missing_ok=True)
            except OSError as e:  # replayed again at the next start, where it changes nothing
                log.warning("gateway: cannot remove journal segment %s: %s", segment, e)

    def close(self) -> None:
        """At a stop, everything written: the last segment goes too, unless a call is somehow still under way."""
        old = self.rotate() if not self._open else None
        self.written(old)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _append(self, data: bytes) -> None:
        if self.directory is None:
            return
        try:
            if self._fd is None:
                self._segment += 1
                self._path = self.directory / f"{os.getpid()}-{self._segment:08d}.jsonl"
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.write(self._fd, data)
        except OSError as e:  # the call is answered and still goes to the store: only a kill -9 now could lose it
            log.warning("gateway: cannot write the journal (%s): a kill -9 now would lose calls", e)


def _line(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def read(directory: Path) -> Replay:
    """What the segments under `directory` hold that the store may not: every ended call, and every call with a
    start and no end as interrupted. A line cut short (the disk filled, the machine died mid-write) is skipped."""
    segments = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []  # in any order: an end outranks a start
    ended: dict[int, dict[str, Any]] = {}
    began: dict[int, dict[int, dict[str, Any]]] = {}
    gone: set[int] = set()  # dropped: ended with nothing for the call log
    for segment in segments:
        with open(segment, "rb") as f:
            for raw in f:
                try:
                    entry = json.loads(raw)
                    if "f" in entry:
                        ended[int(entry["f"])] = entry
                    elif "d" in entry:
                        gone.add(int(entry["d"]))
                    else:
                        began.setdefault(int(entry["b"]), {})[int(entry["n"])] = entry
                except (ValueError, KeyError, TypeError):
                    log.warning("gateway: journal %s: a damaged line skipped", segment.name)
    calls: list[GatewayCall] = []
    uses: list[AttemptUse] = []
    for call_id, entry in ended.items():
        try:
            row = entry["call"]
            calls.append(GatewayCall(**{**row, "at": _at(row["at"]), "id": call_id}))
            if (use := entry.get("use")) is not None:
                uses.append(AttemptUse(use["profile"], _at(use["at"]), use["tokens"], use["cost"], use["key"]))
        except (ValueError, KeyError, TypeError):
            log.warning("gateway: journal: call %s's end is damaged; skipped", call_id)
    for call_id, attempts in began.items():
        if call_id in ended or call_id in gone:
            continue
        try:
            tries = [attempts[n] for n in sorted(attempts)]
            head = tries[-1]["call"]
            path = [{"profile": t["profile"], "model": None, "status": None, "class": None, "latency_ms": 0}
                    for t in tries]  # fmt: skip
            calls.append(GatewayCall(_at(head["at"]), head["key"], head["route"], head["api"], bool(head["streamed"]),
                                     outcome="interrupted", error=INTERRUPTED, path=path, profile=tries[-1]["profile"],
                                     id=call_id))  # fmt: skip
            uses.extend(AttemptUse(t["profile"], _at(t["at"]), 0, 0.0, f"{call_id}.{n}") for n, t in attempts.items())
        except (ValueError, KeyError, TypeError):
            log.warning("gateway: journal: call %s's start is damaged; skipped", call_id)
    calls.sort(key=lambda c: c.id or 0)
    return Replay(calls, uses, segments)


def _at(text: str) -> datetime:
    at = from_iso(text)
    if at is None:
        raise ValueError(text)
    return at
