"""A first read is counted in the windows before its records are stored (`Heartbeat._ingest`): shown at once,
stored behind, and a kill -9 meanwhile loses and doubles nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleetd.backends import usage_files
from fleetd.heartbeat.limits import parse_limit
from fleetd.heartbeat.service import Heartbeat
from fleetd.records.profile import Profile
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.profiles import ProfileStore
from fleetd.store.usage import UsageStore
from tests.harness import wait_until
from tests.heartbeat.test_service import BY_HAND, SESSION, T0, Clock, agent_writes, run, transcript_of, used

SESSIONS = [f"{SESSION[:-1]}{n}" for n in range(6)]


def write_sessions(profile: Profile) -> int:
    """Six sessions' records, one of them twice (the same ids: one record); their total."""
    for n, session in enumerate(SESSIONS):
        agent_writes(profile, session, 100 + n)
    agent_writes(profile, SESSIONS[0], 100, stamp="2026-11-21T07:59:30.000Z")
    return sum(100 + n for n in range(len(SESSIONS)))


def test_a_first_read_is_in_the_windows_before_its_records_are_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_files, "BATCH_RECORDS", 2)
    seen: list[tuple[list[float], str, dict[str, Any]]] = []
    original = UsageStore.add_agent

    async def watching(self: UsageStore, profile: str, rows: list[Any], offsets: Any = None) -> int:
        if rows:
            hb = watching.hb  # type: ignore[attr-defined]
            saved = (await self.load_states()).get(profile)
            seen.append((used(hb, profile), hb.states[profile].status.state, saved.offsets if saved else {}))
        return await original(self, profile, rows, offsets)

    monkeypatch.setattr(UsageStore, "add_agent", watching)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        a = profiles[0]
        watching.hb = hb  # type: ignore[attr-defined]
        total = write_sessions(a)
        await hb.beat()
        # Every insert ran with the whole read already shown and the state judged on it; the offsets saved are only
        # those of the parts stored before it (each part's are saved with its records).
        assert len(seen) == 3
        assert all(u == [total] and state == "near_limit" for u, state, _ in seen)
        assert [len(offsets) for _, _, offsets in seen] == [0, 2, 4]  # files read to their end by parts 1 and 2
        assert used(hb, "a") == [total]
        rows = await usage.db.fetchall("SELECT dedupe_key FROM usage_records WHERE profile = 'a'")
        assert len(rows) == len(SESSIONS)
        saved = (await usage.load_states())["a"].offsets
        assert saved[str(transcript_of(a, SESSIONS[0]))]["offset"] == transcript_of(a, SESSIONS[0]).stat().st_size
        # Once the store holds the profile's records, a read is stored before it is counted, as before.
        seen.clear()
        agent_writes(a, BY_HAND, 7)
        await hb.beat({str(transcript_of(a, BY_HAND))})
        assert [u for u, _, _ in seen] == [[total]] and used(hb, "a") == [total + 7]

    run(tmp_path, body, limits=("5h=650tok",))


CHILD = """
import asyncio, json, os, sys
from pathlib import Path
from fleetd.backends import usage_files
from fleetd.heartbeat.limits import parse_limit
from fleetd.heartbeat.service import Heartbeat
from fleetd.records.profile import Profile
from fleetd.store.db import Database
from fleetd.store.events import EventLog
from fleetd.store.profiles import ProfileStore
from fleetd.store.usage import UsageStore
from tests.heartbeat.test_service import T0

db_path, config_dir, marker = sys.argv[1:4]
usage_files.BATCH_RECORDS = 2
original = UsageStore.add_agent
committed = []

async def add_agent(self, profile, rows, *args, **kwargs):
    if len(committed) == 2:  # two parts stored, one to go: tell the test, and wait for the kill
        Path(marker + ".tmp").write_text(json.dumps({"used": [w.used for w in hb.windows["a"]], "rows": committed}))
        os.replace(marker + ".tmp", marker)
        await asyncio.sleep(3600)
    committed.append(await original(self, profile, rows, *args, **kwargs))
    return committed[-1]

UsageStore.add_agent = add_agent

async def main():
    global hb
    db = await Database.open(Path(db_path))
    profiles = ProfileStore(db)
    await profiles.insert(Profile("a", "claude_code", "subscription", config_dir, limits=[parse_limit("5h=1000tok")],
                                  created_at=T0, updated_at=T0))
    hb = Heartbeat(profiles, UsageStore(db), EventLog(db), clock=lambda: T0, interval=3600, near_limit=0.9)
    await hb.start()

asyncio.run(main())
"""


def write_keyless_sessions(profile: Profile) -> int:
    """Six sessions' records as Claude Code lines without a message id: records the store cannot tell apart from a
    copy (ccusage never de-duplicates them either), so only the offsets keep a file's lines from being stored twice."""
    for n, session in enumerate(SESSIONS):
        path = Path(profile.config_dir, "projects", "-home-user-project", f"{session}.jsonl")
        usage = {"input_tokens": 100 + n, "output_tokens": 0, "cache_read_input_tokens": 0,
                 "cache_creation_input_tokens": 0}  # fmt: skip
        line = {
            "type": "assistant",
            "sessionId": session,
            "version": "2.1.330",
            "timestamp": "2026-11-21T07:59:00.000Z",
            "message": {"model": "claude-opus-5-5", "usage": usage},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(line, separators=(",", ":")) + "\n", encoding="utf-8")
    return sum(100 + n for n in range(len(SESSIONS)))


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_a_kill_9_while_a_first_read_is_stored_behind_its_windows_loses_and_doubles_nothing(
    tmp_path: Path, keyed: bool
) -> None:
    config_dir = tmp_path / "a"
    profile = Profile("a", "claude_code", "subscription", str(config_dir), limits=[parse_limit("5h=1000tok")],
                      created_at=T0, updated_at=T0)  # fmt: skip
    total = write_sessions(profile) if keyed else write_keyless_sessions(profile)
    db_path, marker = tmp_path / "hb.db", tmp_path / "shown.json"
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db_path), str(config_dir), str(marker)], cwd=root)
    try:
        shown = wait_until(lambda: marker.exists() and json.loads(marker.read_text()), timeout=30,
                           what="the first read shown with two of its parts stored")  # fmt: skip
        assert shown == {"used": [total], "rows": [2, 2]}
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)

    async def restart() -> tuple[list[float], list[Any]]:
        db = await Database.open(db_path)
        hb = Heartbeat(ProfileStore(db), UsageStore(db), EventLog(db), clock=lambda: T0, interval=3600, near_limit=0.9)
        await hb.start()
        try:
            rows = await db.fetchall("SELECT dedupe_key, tokens FROM usage_records WHERE profile = 'a'")
            return used(hb, "a"), [(r["dedupe_key"], r["tokens"]) for r in rows]
        finally:
            await hb.stop()
            await db.close()

    windows, rows = asyncio.run(restart())
    assert windows == [total]  # nothing lost, nothing counted twice
    assert len(rows) == len(SESSIONS)  # each record stored once
    if keyed:
        assert len({key for key, _ in rows}) == len(SESSIONS)
    assert sum(tokens for _, tokens in rows) == total


def test_a_beat_cancelled_while_storing_behind_the_windows_leaves_the_rest_to_be_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop cancels the beat mid-way through storing: the reader's offsets have moved past what was not stored,
    so it must not be kept (the records stayed unstored until a restart)."""
    monkeypatch.setattr(usage_files, "BATCH_RECORDS", 2)
    original = UsageStore.add_agent
    calls: list[int] = []
    blocked = asyncio.Event()

    async def stalling(self: UsageStore, profile: str, rows: list[Any], offsets: Any = None) -> int:
        calls.append(len(rows))
        if len(calls) == 2:
            blocked.set()
            await asyncio.sleep(3600)  # until cancelled
        return await original(self, profile, rows, offsets)

    monkeypatch.setattr(UsageStore, "add_agent", stalling)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        total = write_sessions(profiles[0])
        calls.clear()
        beat = asyncio.ensure_future(hb.beat())
        await asyncio.wait_for(blocked.wait(), 10)
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        assert len(hb.states["a"].offsets) == 2  # the first part's two files: no offset past an unstored record
        monkeypatch.setattr(UsageStore, "add_agent", original)
        await hb.beat()
        rows = await usage.db.fetchall("SELECT dedupe_key FROM usage_records WHERE profile = 'a'")
        assert len(rows) == len(SESSIONS) and used(hb, "a") == [total]

    run(tmp_path, body, limits=("5h=1000tok",))


def test_a_first_read_that_fails_before_it_is_stored_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read is counted, then judging its windows fails before any of it is stored: the reader's offsets have
    moved past all of it, so it must not be kept (the read was lost for good: stored offsets moved past it later)."""
    monkeypatch.setattr(usage_files, "BATCH_RECORDS", 2)
    original = Heartbeat._judge

    async def failing_once(self: Heartbeat, profile: Profile, stored: Any, now: Any) -> Any:
        monkeypatch.setattr(Heartbeat, "_judge", original)
        raise RuntimeError("the store went away")

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        total = write_sessions(profiles[0])
        monkeypatch.setattr(Heartbeat, "_judge", failing_once)
        with pytest.raises(RuntimeError):
            await hb.beat()
        await hb.beat()
        rows = await usage.db.fetchall("SELECT dedupe_key FROM usage_records WHERE profile = 'a'")
        assert len(rows) == len(SESSIONS) and used(hb, "a") == [total]

    run(tmp_path, body, limits=("5h=1000tok",))


def test_a_first_read_cancelled_while_it_is_read_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A beat cancelled mid-read (not only by a stop: any caller's cancel): parts counted, none stored, the reader
    past them. The next beat reads it all again, counted once."""
    monkeypatch.setattr(usage_files, "BATCH_RECORDS", 2)
    original = Heartbeat._count_part
    counted: list[int] = []
    blocked = asyncio.Event()

    async def stalling(self: Heartbeat, profile: Profile, part: Any, *args: Any) -> None:
        counted.append(len(part.records))
        if len(counted) == 2:
            blocked.set()
            await asyncio.sleep(3600)  # until cancelled
        await original(self, profile, part, *args)

    async def body(hb: Heartbeat, clock: Clock, usage: UsageStore, profiles: list[Profile]) -> None:
        total = write_sessions(profiles[0])
        monkeypatch.setattr(Heartbeat, "_count_part", stalling)
        beat = asyncio.ensure_future(hb.beat())
        await asyncio.wait_for(blocked.wait(), 10)
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        monkeypatch.setattr(Heartbeat, "_count_part", original)
        await hb.beat()
        rows = await usage.db.fetchall("SELECT dedupe_key FROM usage_records WHERE profile = 'a'")
        assert len(rows) == len(SESSIONS) and used(hb, "a") == [total]

    run(tmp_path, body, limits=("5h=1000tok",))


def test_a_first_reads_reported_windows_are_stored_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window's name comes from the agent's file (Codex's `limit_id`): a key in it is scrubbed in memory and in
    the stored state alike, on a first read as on any other."""
    from datetime import timedelta

    from fleetd.heartbeat import service
    from fleetd.records.result import TokenUsage, WindowState

    secret = "sk-ant-api03-" + "Q" * 40

    class Reader:
        watch_root = str(tmp_path / "nowhere")

        def __init__(self) -> None:
            self.read = False

        def batches(self, now: Any, changed: Any) -> Any:
            if not self.read:
                self.read = True
                record = usage_files.UsageRecord(T0 - timedelta(minutes=1), TokenUsage(10, 5), None, "s1", "k1", "/f")
                yield usage_files.IngestResult(records=[record], saved={"/f": {"offset": 1}},
                                               windows=[WindowState(300, 50.0, None, f"{secret}:primary")])  # fmt: skip

    class Adapter:
        def usage_reader(self, profile: Profile, offsets: Any) -> Reader:
            return Reader()

    monkeypatch.setattr(service, "get_adapter", lambda backend: Adapter())

    async def go() -> tuple[list[str], str]:
        db = await Database.open(tmp_path / "hb.db")
        profiles = ProfileStore(db)
        await profiles.insert(Profile("a", "codex", "subscription", str(tmp_path / "a"),
                                      limits=[parse_limit("5h=1000tok")], created_at=T0, updated_at=T0))  # fmt: skip

        async def known() -> list[str]:
            return [secret]

        hb = Heartbeat(profiles, UsageStore(db), EventLog(db), clock=lambda: T0, interval=3600, near_limit=0.9,
                       known_secrets=known)  # fmt: skip
        try:
            await hb.beat()
            row = await db.fetchone("SELECT reported_json FROM profile_state WHERE profile = 'a'")
            assert row is not None
            return [w.name or "" for w in hb.states["a"].reported], row[0]
        finally:
            await db.close()

    shown, stored = asyncio.run(go())
    assert shown and secret not in shown[0]
    assert secret not in stored and json.loads(stored)
