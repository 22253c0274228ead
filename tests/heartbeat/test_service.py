"""The heartbeat service on a real SQLite file with an injected clock: windows of hours pass in
milliseconds; concurrent starts are spread by reservations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetd.backends import usage_files
from fleetd.heartbeat.limits import parse_limit
from fleetd.heartbeat.service import Heartbeat
from fleetd.records.loop import ChainStep
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput, TokenUsage
from fleetd.routing.router import World, expand
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.profiles import ProfileStore
from fleetd.store.usage import NewUsage, UsageStore

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def run(
    tmp_path: Path,
    body: Callable[[Heartbeat, Clock, UsageStore, list[Profile]], Awaitable[None]],
    *,
    backend: str = "claude_code",
    limits: tuple[str, ...] = ("5h=1000tok",),
) -> None:
    async def go() -> None:
        db = await Database.open(tmp_path / "hb.db")
        clock = Clock()
        store, usage = ProfileStore(db), UsageStore(db)
        profiles = []
        for name in ("a", "b"):
            p = Profile(name, backend, "subscription", str(tmp_path / name), limits=[parse_limit(x) for x in limits],
                        created_at=T0, updated_at=T0)  # fmt: skip
            await store.insert(p)
            profiles.append(p)
        hb = Heartbeat(store, usage, EventLog(db), clock=clock, interval=3600, near_limit=0.9)
        await hb.start()
        try:
            await body(hb, clock, usage, profiles)
        finally:
            await hb.stop()
            await db.close()

    asyncio.run(go())


def ok(tokens: int) -> ParsedOutput:
    return ParsedOutput("succeeded", usage=TokenUsage(input_tokens=tokens))


def test_a_five_hour_window_fills_and_empties_with_the_clock(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        await hb.attempt_finished(a, ok(600), clock.now, None)
        clock.now += timedelta(hours=1)
        await hb.attempt_finished(a, ok(450), clock.now, None)
        assert hb.states["a"].status.state == "exhausted"
        # Back under the limit when the first 600 roll out, 5 h after they were used.
        assert hb.states["a"].status.exhausted_until == T0 + timedelta(hours=5)
        assert hb.active["claude_code"] == ("b", False)
        clock.now = T0 + timedelta(hours=5, seconds=1)
        await hb.beat()
        assert hb.states["a"].status.state == "available" and hb.states["a"].status.unconfirmed
        await hb.attempt_finished(a, ok(10), clock.now, None)
        assert not hb.states["a"].status.unconfirmed

    run(tmp_path, body)


def test_rate_limit_reset_from_the_cli_wins_and_restart_keeps_it(tmp_path: Path) -> None:
    reset = T0 + timedelta(hours=3, minutes=17)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        limited = ParsedOutput("failed", "rate_limited", reset_at=reset, message="You've hit your limit")
        await hb.attempt_finished(profiles[0], limited, clock.now, None)
        assert hb.states["a"].status.exhausted_until == reset
        reloaded = await usage.load_states()
        assert reloaded["a"].status.exhausted_until == reset and reloaded["a"].status.state == "exhausted"
        views = await hb.views(profiles)
        assert (views["a"].state, views["a"].until, views["b"].state) == ("exhausted", reset, "available")
        clock.now = reset + timedelta(seconds=1)
        views = await hb.views(profiles)
        assert views["a"].state == "available"  # back after its reset (unconfirmed until an attempt succeeds)

    run(tmp_path, body)


def test_usage_shows_a_profile_whose_reset_has_passed_as_back_not_exhausted_until_the_next_beat(tmp_path: Path) -> None:
    # `usage` said `exhausted … RESETS IN 0ms` for up to a beat after the reset.
    reset = T0 + timedelta(minutes=30)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        limited = ParsedOutput("failed", "rate_limited", reset_at=reset, message="You've hit your limit")
        await hb.attempt_finished(profiles[0], limited, clock.now, None)
        [before, _] = await hb.snapshot(profiles)
        assert before["stored"].status.state == "exhausted"
        clock.now = reset + timedelta(seconds=1)
        [after, _] = await hb.snapshot(profiles)
        assert after["stored"].status.state == "available" and after["stored"].status.unconfirmed

    run(tmp_path, body)


def test_concurrent_starts_are_spread_by_reservations(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        await usage.add([NewUsage("a", clock.now, "agent", 300), NewUsage("b", clock.now, "agent", 320)])
        await hb.beat()

        async def first() -> str:
            world = World(clock.now, await hb.views(profiles))
            return expand(0, ChainStep("claude_code", ("a", "b")), world, frozenset({"subscription"}))[0][0].profile

        assert await first() == "a"  # 70 % headroom against 68 %
        hb.reserve("a")  # the first run took it
        assert await first() == "b"
        hb.release("a")
        assert await first() == "a"

    run(tmp_path, body)


def test_agent_records_are_stored_once_per_dedupe_key(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        added = await usage.add([NewUsage("a", clock.now, "agent", 5, dedupe_key="m1:r1")])
        again = await usage.add([NewUsage("a", clock.now, "agent", 5, dedupe_key="m1:r1")])
        assert (added, again) == (1, 0)

    run(tmp_path, body)


# -- fleetd's own sessions, counted once whichever side is recorded first --------------------------
# In the trial the file watcher read the agent's transcript (or rollout) tens of ms before the attempt's
# own record existed, and the run was counted twice. These tests put both orders on one clock.

SESSION = "5aa38dd8-1274-4880-8e41-b78b3ad268ce"
BY_HAND = "0199a213-81c0-7800-8aa1-bbab2a035a53"


def agent_writes(profile: Profile, session: str, tokens: int, stamp: str = "2026-11-21T07:59:00.000Z") -> None:
    """The agent's own record of one request of `session`, as Claude Code or Codex writes it."""
    if profile.backend == "claude_code":
        path = Path(profile.config_dir, "projects", "-home-user-project", f"{session}.jsonl")
        line = {"type": "assistant", "sessionId": session, "version": "2.1.330", "requestId": f"req-{session}",
                "timestamp": stamp, "message": {"id": f"msg-{session}", "model": "claude-opus-5-5",
                "usage": {"input_tokens": tokens, "output_tokens": 0, "cache_read_input_tokens": 0,
                          "cache_creation_input_tokens": 0}}}  # fmt: skip
    else:
        path = Path(profile.config_dir, "sessions", "2026", "11", "21", f"rollout-2026-11-21T07-58-00-{session}.jsonl")
        counts = {"input_tokens": tokens, "cached_input_tokens": 0, "output_tokens": 0, "reasoning_output_tokens": 0,
                  "total_tokens": tokens}  # fmt: skip
        info = {"last_token_usage": counts, "total_token_usage": counts}
        line = {"timestamp": stamp, "type": "event_msg", "payload": {"type": "token_count", "info": info}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, separators=(",", ":")) + "\n")


def own_attempt(tokens: int, session: str = SESSION) -> ParsedOutput:
    return ParsedOutput("succeeded", usage=TokenUsage(input_tokens=tokens), session_id=session)


def used(hb: Heartbeat, profile: str) -> list[float]:
    return [w.used for w in hb.windows[profile]]


BOTH_UNITS = ("5h=1000tok", "5h=10req")


@pytest.mark.parametrize("backend", ["claude_code", "codex"])
def test_own_session_ingested_before_its_attempt_is_recorded_counts_once(tmp_path: Path, backend: str) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        agent_writes(a, SESSION, 300)
        await hb.beat()  # the watcher's beat, while the attempt is still in flight
        assert used(hb, "a") == [300, 1]  # what the agent has used so far does count meanwhile
        clock.now += timedelta(milliseconds=40)
        await hb.attempt_finished(a, own_attempt(300), clock.now, None)
        assert used(hb, "a") == [300, 1]
        await hb.beat()
        assert used(hb, "a") == [300, 1]

    run(tmp_path, body, backend=backend, limits=BOTH_UNITS)


@pytest.mark.parametrize("backend", ["claude_code", "codex"])
def test_own_session_ingested_after_its_attempt_is_recorded_counts_once(tmp_path: Path, backend: str) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        await hb.attempt_finished(a, own_attempt(300), clock.now, None)
        agent_writes(a, SESSION, 300)
        clock.now += timedelta(milliseconds=40)
        await hb.beat()
        assert used(hb, "a") == [300, 1]

    run(tmp_path, body, backend=backend, limits=BOTH_UNITS)


@pytest.mark.parametrize("backend", ["claude_code", "codex"])
def test_a_session_by_hand_and_fleetds_own_are_both_counted(tmp_path: Path, backend: str) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a, b = profiles
        agent_writes(a, BY_HAND, 200)  # someone using the same login by hand
        agent_writes(a, SESSION, 300)
        await hb.beat()
        await hb.attempt_finished(a, own_attempt(300), clock.now, None)
        assert used(hb, "a") == [500, 2]
        # The same session id on another profile is that profile's business, not a's.
        await hb.attempt_finished(b, own_attempt(50, BY_HAND), clock.now, None)
        assert used(hb, "a") == [500, 2] and used(hb, "b") == [50, 1]

    run(tmp_path, body, backend=backend, limits=BOTH_UNITS)


def test_the_near_limit_threshold_is_the_daemons_setting(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        await usage.add([NewUsage("a", clock.now, "agent", 920)])
        await hb.beat()
        assert hb.states["a"].status.state == "near_limit"  # 92 % ≥ the default 90 %
        hb.near_limit = 0.95
        await hb.beat()
        assert hb.states["a"].status.state == "available"

    run(tmp_path, body)


def test_stop_is_bounded_when_a_watch_event_lands_in_the_same_instant(tmp_path: Path) -> None:
    # The watcher's only effect is to wake the beat loop. Waking it in the same loop iteration as
    # stop() cancels it let Python 3.11's wait_for return the wake-up and drop the cancellation:
    # the beat loop ran on and stop() awaited it forever (a daemon that ignored SIGTERM).
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        for _ in range(5):
            await asyncio.sleep(0)  # the beat loop is now waiting for its next wake-up
        loop = asyncio.get_running_loop()
        began = loop.time()
        hb._wake.set()  # what a change in a watched directory does
        stopping = asyncio.ensure_future(hb.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        assert done, "heartbeat.stop() did not return"
        assert loop.time() - began < 2
        assert [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("heartbeat")] == []

    run(tmp_path, body)


def test_an_open_circuit_moves_the_active_profile_and_says_why(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a, _ = profiles
        await hb.beat()
        assert hb.active["claude_code"][0] == "a"
        overloaded = ParsedOutput("failed", "transient", message="529 Overloaded")
        for _ in range(3):
            await hb.attempt_finished(a, overloaded, clock.now, None)
        assert hb.circuit("a").state == "open"
        assert hb.active["claude_code"][0] == "b"
        switched = [e for e in await hb.events.latest(20) if e.type == "profile.switched"]
        assert "a is out: its circuit is open; b has the most headroom" in switched[-1].message

    run(tmp_path, body)


def test_only_the_probe_itself_frees_a_half_open_circuits_probe(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a, _ = profiles
        for _ in range(3):
            await hb.attempt_finished(a, ParsedOutput("failed", "transient", message="503"), clock.now, None)
        clock.now += timedelta(minutes=2)
        assert hb.circuit("a").state == "half_open"
        assert hb.claim_probe("a") is True
        assert hb.claim_probe("a") is False  # a concurrent run does not probe too
        hb.reserve("a")
        hb.release("a")  # some other attempt on the profile ended: the probe is still out
        assert hb.claim_probe("a") is False
        hb.release("a", probe=True)
        assert hb.claim_probe("a") is True

    run(tmp_path, body)


def test_attempts_finished_in_a_batch_end_as_one_by_one(tmp_path: Path) -> None:
    """The gateway's batch (its successes, written after their answers): the same windows, states and
    active profile as the same attempts finished one at a time, including a state change mid-batch."""

    async def snapshot(hb: Heartbeat, usage: UsageStore) -> object:
        used = [w.used for w in hb.windows["a"]]
        rows = len(await usage.since("a", T0 - timedelta(hours=1)))
        return hb.states["a"].status, hb.states["b"].status, hb.active["claude_code"], used, rows

    async def one_by_one(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        for profile, tokens in ((profiles[0], 600), (profiles[1], 100), (profiles[0], 450)):
            await hb.attempt_finished(profile, ok(tokens), clock.now, 0.01)
        seen.append(await snapshot(hb, usage))

    async def batched(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a, b = profiles
        await hb.attempts_finished([(a, ok(600), clock.now, 0.01), (b, ok(100), clock.now, 0.01),
                                    (a, ok(450), clock.now, 0.01)])  # fmt: skip
        seen.append(await snapshot(hb, usage))
        assert (await usage.load_states())["a"].status == hb.states["a"].status  # saved, not only in memory

    seen: list[object] = []
    (tmp_path / "one").mkdir()
    (tmp_path / "batch").mkdir()
    run(tmp_path / "one", one_by_one)
    run(tmp_path / "batch", batched)
    assert seen[0] == seen[1]
    assert seen[1][0].state == "exhausted"  # type: ignore[index]


# -- ingestion that costs what changed ------------------------------------------------------------


def transcript_of(profile: Profile, session: str) -> Path:
    return Path(profile.config_dir, "projects", "-home-user-project", f"{session}.jsonl")


def test_a_beat_for_reported_files_reads_only_those_and_a_full_beat_reads_the_rest(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        agent_writes(a, SESSION, 300)
        agent_writes(a, BY_HAND, 200)
        await hb.beat({str(transcript_of(a, SESSION))})  # what the watch reports
        assert used(hb, "a") == [300]
        await hb.beat(set())  # nothing reported: nothing read
        assert used(hb, "a") == [300]
        await hb.beat()  # a periodic beat lists every file
        assert used(hb, "a") == [500]

    run(tmp_path, body)


def test_windows_are_read_from_the_store_once_and_then_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    original = UsageStore.window

    async def counting(self: UsageStore, profile: str, start: datetime) -> Any:
        reads.append(profile)
        return await original(self, profile, start)

    monkeypatch.setattr(UsageStore, "window", counting)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        reads.clear()
        for n in range(3):
            session = f"{SESSION[:-1]}{n}"
            agent_writes(a, session, 100, stamp=f"2026-11-21T07:5{n}:00.000Z")
            await hb.beat({str(transcript_of(a, session))})
            await hb.attempt_finished(profiles[1], ok(10), clock.now, None)
            clock.now += timedelta(minutes=1)
        assert used(hb, "a") == [300] and used(hb, "b") == [30]
        assert reads == []  # every beat added what was new to the windows kept since start
        clock.now += timedelta(hours=5)
        await hb.beat()
        assert used(hb, "a") == [0] and reads == []

    run(tmp_path, body)


def test_agent_records_are_inserted_a_part_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_files, "BATCH_RECORDS", 2)
    inserts: list[int] = []
    original = UsageStore.add_agent

    async def counting(self: UsageStore, profile: str, rows: list[Any], offsets: Any = None) -> int:
        inserts.append(len(rows))
        return await original(self, profile, rows, offsets)

    monkeypatch.setattr(UsageStore, "add_agent", counting)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        inserts.clear()
        for n in range(3):
            session = f"{SESSION[:-1]}{n}"
            agent_writes(a, session, 100)
            agent_writes(a, session, 100, stamp="2026-11-21T07:59:30.000Z")  # same ids: one record
            agent_writes(a, f"{BY_HAND[:-1]}{n}", 10)
        await hb.beat()
        assert [n for n in inserts if n] == [2, 2, 2]  # a part per file here (each file has two records)
        assert used(hb, "a") == [330]

    run(tmp_path, body)


def test_a_transcript_rewritten_from_the_start_is_not_counted_twice(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        path = transcript_of(a, SESSION)
        agent_writes(a, SESSION, 300)
        await hb.beat({str(path)})
        old = path.read_bytes()
        path.write_bytes(b"")  # truncated, then the same history and one more request (another message)
        path.write_bytes(old + old.replace(b"msg-", b"msg-2-").replace(b"req-", b"req-2-"))
        await hb.beat({str(path)})
        assert used(hb, "a") == [600]
        staged = path.with_suffix(".tmp")  # an atomic replace: a new inode, read from the start
        staged.write_bytes(path.read_bytes())
        staged.replace(path)
        await hb.beat({str(path)})
        assert used(hb, "a") == [600]

    run(tmp_path, body)


def test_records_a_failed_insert_lost_are_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = UsageStore.add_agent
    failing = [True]

    async def flaky(self: UsageStore, profile: str, rows: list[Any], offsets: Any = None) -> int:
        if failing[0] and rows:
            raise OSError("disk full")
        return await original(self, profile, rows, offsets)

    monkeypatch.setattr(UsageStore, "add_agent", flaky)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        agent_writes(profiles[0], SESSION, 300)
        await hb.beat()
        assert used(hb, "a") == [0]
        failing[0] = False
        await hb.beat({str(transcript_of(profiles[0], SESSION))})
        assert used(hb, "a") == [300]

    run(tmp_path, body)


def keyless_writes(profile: Profile, session: str, tokens: int) -> None:
    """A Claude Code line of `session` without a message id or request id: nothing the store could de-duplicate."""
    path = Path(profile.config_dir, "projects", "-home-user-project", f"{session}.jsonl")
    usage = {"input_tokens": tokens, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    line = {"type": "assistant", "sessionId": session, "version": "2.1.330", "timestamp": "2026-11-21T07:59:10.000Z",
            "message": {"model": "claude-opus-5-5", "usage": usage}}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, separators=(",", ":")) + "\n")


@pytest.mark.parametrize("how", ["fails", "is cancelled"])
def test_a_part_committed_before_its_beat_fails_is_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The records and offsets of a part commit together; a beat that then fails (or is cancelled) before it has
    taken the part as stored must not read it again: a record without a dedupe key would be stored twice."""
    original = UsageStore.attempt_sessions
    breaking = [False]

    async def breaks_once(self: UsageStore, *args: Any) -> Any:
        if breaking[0]:
            breaking[0] = False
            if how == "fails":
                raise OSError("disk I/O error")
            raise asyncio.CancelledError
        return await original(self, *args)

    monkeypatch.setattr(UsageStore, "attempt_sessions", breaks_once)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        agent_writes(a, SESSION, 100)  # a keyed record: later reads are stored part by part (`_store_part`)
        await hb.beat()
        keyless_writes(a, SESSION, 300)
        with transcript_of(a, SESSION).open("a", encoding="utf-8") as handle:
            handle.write('{"type":"assistant","message":{"usage":{"input_tokens":\n')  # cut short: garbled
        breaking[0] = True
        with contextlib.suppress(asyncio.CancelledError):
            await hb.beat({str(transcript_of(a, SESSION))})
        # What the reader got past is saved with the part, its garbled line too (the cancelled beat saved nothing).
        saved = (await usage.load_states())["a"]
        assert saved.garbled_lines == 1
        assert saved.offsets[str(transcript_of(a, SESSION))]["offset"] == transcript_of(a, SESSION).stat().st_size
        await hb.beat({str(transcript_of(a, SESSION))})
        await hb.beat()
        rows = await usage.db.fetchall("SELECT tokens FROM usage_records WHERE profile = 'a' ORDER BY id")
        assert [r["tokens"] for r in rows] == [100, 300]
        assert used(hb, "a") == [400]

    run(tmp_path, body)


def test_offsets_are_saved_as_files_move_on(tmp_path: Path) -> None:
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        path = transcript_of(profiles[0], SESSION)
        agent_writes(profiles[0], SESSION, 300)
        await hb.beat()
        assert (await usage.load_states())["a"].offsets[str(path)]["offset"] == path.stat().st_size
        agent_writes(profiles[0], BY_HAND, 5)
        agent_writes(profiles[0], SESSION, 300, stamp="2026-11-21T07:59:30.000Z")
        await hb.beat({str(path)})
        saved = (await usage.load_states())["a"].offsets
        assert saved[str(path)]["offset"] == path.stat().st_size and len(saved) == 1
        path.unlink()
        await hb.beat()
        assert list((await usage.load_states())["a"].offsets) == [str(transcript_of(profiles[0], BY_HAND))]

    run(tmp_path, body)


def test_a_new_profiles_directory_is_watched_while_its_first_read_is_still_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first read of a large directory takes seconds; an agent's write landing just after it used to wait for the
    full listing a second after the watch was armed, which only began once the read was done."""

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        new = Profile("c", "claude_code", "subscription", str(tmp_path / "c"), limits=[parse_limit("5h=1000tok")],
                      created_at=T0, updated_at=T0)  # fmt: skip
        agent_writes(new, SESSION, 300)
        await hb.profiles.insert(new)
        release = threading.Event()
        batches = usage_files.ClaudeTranscripts.batches

        def slow_first_read(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.config_dir == Path(new.config_dir):
                release.wait(10)  # in the reading thread
            yield from batches(self, *args, **kwargs)

        monkeypatch.setattr(usage_files.ClaudeTranscripts, "batches", slow_first_read)
        beat = asyncio.ensure_future(hb.beat())
        root = Path(new.config_dir, "projects")
        try:
            for _ in range(200):  # up to 10 s: the watch task re-arms on the event loop meanwhile
                if root in hb._watched:
                    break
                await asyncio.sleep(0.05)
            assert root in hb._watched and not beat.done()
        finally:
            release.set()
            await beat
        assert used(hb, "c") == [300]

    run(tmp_path, body)


def test_the_collector_is_paused_for_a_full_listing_and_left_as_it_was() -> None:
    import gc

    from fleetd.heartbeat.service import _collection_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), _collection_paused():
        assert not gc.isenabled()
        raise RuntimeError("a read that fails")
    assert gc.isenabled()
    gc.disable()
    try:
        with _collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # someone else turned it off: not turned on behind their back
    finally:
        gc.enable()


def test_keys_scrubbed_in_one_pass_are_what_scrubbing_each_gives() -> None:
    """`_scrubbed` joins the keys by newlines: a key holding one, or a secret spanning two keys, must not change
    what each key scrubbed alone gives."""
    from fleetd.heartbeat.service import _scrubbed
    from fleetd.loops.scrub import Scrubber

    cases = [
        (["a:sk-1", None, "", "b:sk-1x", "plain"], ["sk-1"]),
        (["tail-sk", "1-head", "sk-1"], ["sk\n1", "sk-1"]),  # a secret across the join: not matched
        (["x\nsk-1", "y"], ["sk-1"]),  # a key holding a newline
        (["clean", "also clean"], ["sk-1"]),
        ([None, None], ["sk-1"]),
    ]
    for values, secrets in cases:
        scrubber = Scrubber(secrets)
        assert _scrubbed(values, scrubber) == [scrubber.text(v) if v else v for v in values]


def test_an_attempts_reservation_becomes_its_record_with_no_moment_counted_twice_or_not_at_all(tmp_path: Path) -> None:
    # Its record joined the windows, then (after awaits) its reservation ended: meanwhile it was counted twice, and a
    # run that read the world then waited out the whole window.
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        hb.reserve("a")
        assert hb.no_room(a) is None  # 0 used, 1 under way, 1 more: 2 of 2
        seen: list[object] = []

        def settle() -> None:  # what the executor passes: its reservation ends here
            hb.release("a")
            seen.append(hb.no_room(a))  # as a run reading the world at this moment would see it

        await hb.attempt_finished(a, ok(10), clock.now, None, settle)
        assert seen == [None]  # 1 used, none under way: room for one more
        assert hb.in_flight["a"] == 0
        hb.reserve("a")
        full = hb.no_room(a)
        assert full is not None and full[0] == "1d=2req: 1 used, 1 attempt(s) under way"
        hb.release("a")
        # The windows as of now, not as of the last beat: a day later the record has left.
        clock.now += timedelta(days=1, seconds=1)
        hb.reserve("a")
        hb.reserve("a")
        assert hb.no_room(a) is not None  # two under way and one more
        hb.release("a")
        assert hb.no_room(a) is None

    run(tmp_path, body, limits=("1d=2req",))


def test_a_limit_edited_while_an_attempt_is_under_way_stands_when_it_ends(tmp_path: Path) -> None:
    # The attempt's end rebuilt the windows with the limit it began under: raised to 5req, the profile was exhausted
    # at `1d=1req used 1` for a day; lowered, the next calls passed the new limit.
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        began = profiles[0]
        raised = replace(began, limits=[parse_limit("1d=5req")])
        await hb.profiles.replace(raised)
        await hb.beat()  # what `profile edit` does
        await hb.attempt_finished(began, ok(10), clock.now, None)  # the attempt holds the profile it began with
        assert hb.status("a").state == "available"
        assert hb.no_room(raised) is None and [w.limit.amount for w in hb.windows["a"]] == [5]

    run(tmp_path, body, limits=("1d=1req",))


def test_what_an_attempt_uses_is_known_as_its_first_calls_use_joins_the_windows(tmp_path: Path) -> None:
    # Between a fresh profile's first calls joining the windows (no longer counted apart) and its typical attempt read
    # back from the store, what one uses was known nowhere: a third back-to-back call was held at all that was left
    # of a token limit, let in, and passed it.
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        seen: list[object] = []
        hb.unrecorded("a", 817, 0.01)
        assert hb.typical("a") == (817, 0.01)  # the call not recorded yet stands for it

        def settle() -> None:  # the gateway's: the call is in the windows now, no longer counted apart
            hb.recorded_use("a")
            seen.append(hb.typical("a"))

        await hb.attempts_finished([(profiles[0], ok(817), clock.now, 0.01)], [settle])
        assert seen == [(817, 0.01)]

    run(tmp_path, body, limits=("1d=2042tok",))


def test_usage_after_a_restart_knows_what_an_attempt_uses(tmp_path: Path) -> None:
    # `usage` right after a start said a profile with no room in its daily cost for another attempt had room (and
    # routing refused it): what one of its attempts uses was read only as the router first looked.
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        await usage.add([NewUsage("a", clock.now, "attempt", 817, 0.01)])  # recorded before this start
        await hb.snapshot(profiles)
        assert hb.typical("a") == (817, 0.01)

    run(tmp_path, body)


def test_usage_counts_the_gateways_calls_not_recorded_yet(tmp_path: Path) -> None:
    # `usage show` said `0req of 3req` for a moment after three calls had ended (routing already counted them).
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        await hb.attempt_finished(profiles[0], ok(10), clock.now, None)
        hb.unrecorded("a", 20, 0.0)
        hb.unrecorded("a", 20, 0.0)
        [row, _] = await hb.snapshot(profiles)
        assert [w.used for w in row["windows"]] == [3]
        hb.recorded_use("a")
        [row, _] = await hb.snapshot(profiles)
        assert [w.used for w in row["windows"]] == [2]

    run(tmp_path, body, limits=("1d=3req",))


def test_an_attempt_under_way_when_its_profile_was_removed_does_not_count_for_one_added_again(tmp_path: Path) -> None:
    # A gateway call (or run) under way across `profile rm` and `profile add` of the same name was counted in the new
    # profile's `--limit` window: 600 of its 1,000 tokens used before it had made a call.
    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        old = profiles[0]
        await hb.forget(old.name)
        await hb.profiles.delete(old.name)
        clock.now += timedelta(minutes=5)
        new = replace(old, created_at=clock.now, updated_at=clock.now)
        await hb.profiles.insert(new)
        await hb.attempt_finished(old, ok(600), clock.now, None)  # the old one's attempt ends now
        await hb.attempt_finished(new, ok(10), clock.now, None)
        assert used(hb, "a") == [10]
        assert [c.tokens for c in await usage.since("a", T0)] == [10]

    run(tmp_path, body)
