"""The gateway's journal (gateway/journal.py): what a kill -9 before the recorder's write would lose is in a file, and
the next start writes it into the store once, whatever of it was written before the kill."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleetd.gateway import journal
from fleetd.gateway.journal import Journal, attempt_key
from fleetd.gateway.recorder import Attempt, Finished, Recorder
from fleetd.records.gateway import GatewayCall
from fleetd.records.profile import Profile
from fleetd.records.result import ParsedOutput, TokenUsage
from fleetd.store.db import Database
from fleetd.store.gateway import GatewayStore
from fleetd.store.profiles import ProfileStore
from fleetd.store.usage import NewUsage, UsageStore

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
PROFILE = Profile(
    "p", "openai_compat", "metered", "/tmp/p", price_input=3.0, price_output=15.0, created_at=T0, updated_at=T0
)
USAGE = TokenUsage(input_tokens=100, output_tokens=20)


def _call(j: Journal, route: str = "r") -> GatewayCall:
    return GatewayCall(T0, "k", route, "chat", False, id=j.new_id())


def _succeeded(call: GatewayCall, attempt: int = 0) -> Finished:
    call.outcome, call.status, call.profile = "succeeded", 200, PROFILE.name
    call.input_tokens, call.output_tokens, call.cost_usd = 100, 20, 0.0006
    parsed = ParsedOutput("succeeded", usage=USAGE)
    return Finished(call, Attempt(PROFILE, parsed, T0, 0.0006, attempt_key(call.id, attempt)))


def _never_written(j: Journal) -> Recorder:
    """A recorder whose writes never happen: the daemon is killed before its batch."""

    async def nothing(_: Any) -> None:
        raise AssertionError("not written before the kill")

    return Recorder(nothing, nothing, journal=j)


def _in_store(
    tmp_path: Path, replay: journal.Replay, *, twice: bool = False, live_use: bool = False, profile: Profile = PROFILE
) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        db = await Database.open(tmp_path / "fleetd.db")
        try:
            await ProfileStore(db).insert(profile)
            if live_use:  # the batch's use was written before the kill, its call rows not
                await UsageStore(db).add([NewUsage("p", T0, "attempt", 120, 0.0006, gateway_try=(1, 0))])
            store = GatewayStore(db)
            for _ in range(2 if twice else 1):
                await store.replay(replay.calls, replay.uses)
            calls = await store.calls(route=None, since=None, limit=100)
            uses = await db.fetchall(
                "SELECT profile, tokens, requests, gateway_call, gateway_try FROM usage_records ORDER BY id"
            )
            stats = await store.stats(since=T0, by=("route",))
            return {"calls": calls, "uses": [tuple(u) for u in uses], "stats_calls": stats.total.calls,
                    "next": await store.last_call_id() + 1}  # fmt: skip
        finally:
            await db.close()

    return asyncio.run(go())


def test_a_call_answered_but_not_yet_written_is_written_by_the_next_start(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", first_id=1)
    (tmp_path / "j").mkdir()
    recorder = _never_written(j)
    asyncio.run(recorder.put(_succeeded(_call(j))))  # killed within the linger: the batch never ran
    replay = journal.read(tmp_path / "j")
    got = _in_store(tmp_path, replay, twice=True)  # a second replay (a kill before the files went) changes nothing
    [call] = got["calls"]
    assert (call.id, call.outcome, call.output_tokens, call.cost_usd) == (1, "succeeded", 20, 0.0006)
    assert got["uses"] == [("p", 120, 1, 1, 0)]
    assert got["stats_calls"] == 1 and got["next"] == 2


def test_a_batch_whose_use_was_written_before_the_kill_is_not_counted_twice(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", first_id=1)
    (tmp_path / "j").mkdir()
    asyncio.run(_never_written(j).put(_succeeded(_call(j))))
    got = _in_store(tmp_path, journal.read(tmp_path / "j"), live_use=True)
    assert [c.id for c in got["calls"]] == [1]
    assert got["uses"] == [("p", 120, 1, 1, 0)]


def test_a_call_under_way_is_interrupted_with_one_request_on_each_profile_it_tried(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", first_id=7)
    (tmp_path / "j").mkdir()
    call = _call(j)
    call.path.append({"profile": "p"})
    j.began(call, 0, "p", T0)  # its first try failed (its use written as it happened) ...
    call.path.append({"profile": "p"})
    j.began(call, 1, "p", T0)  # ... and the second was under way at the kill
    got = _in_store(tmp_path, journal.read(tmp_path / "j"), twice=True)
    [row] = got["calls"]
    assert (row.id, row.outcome, row.profile, row.key, row.route) == (7, "interrupted", "p", "k", "r")
    assert "under way" in (row.error or "") and [p["profile"] for p in row.path] == ["p", "p"]
    assert got["uses"] == [("p", 0, 1, 7, 0), ("p", 0, 1, 7, 1)]


def test_a_use_before_its_profile_was_added_again_is_not_counted_for_the_new_one(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", first_id=1)
    (tmp_path / "j").mkdir()
    asyncio.run(_never_written(j).put(_succeeded(_call(j))))  # then `profile rm p`, `profile add p`, a kill -9
    later = replace(PROFILE, created_at=T0 + timedelta(minutes=1))
    got = _in_store(tmp_path, journal.read(tmp_path / "j"), profile=later)
    assert [c.id for c in got["calls"]] == [1] and got["uses"] == []


def test_segments_go_once_written_and_a_call_under_way_outlives_its_segment(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    directory.mkdir()
    j = Journal(directory, first_id=1)
    long = _call(j)
    j.began(long, 0, "p", T0)  # a stream that outlasts many batches
    short = _call(j)
    j.began(short, 0, "p", T0)
    j.ended(short)
    old = j.rotate()  # the batch with `short` is taken ...
    j.written(old)  # ... and written: its segment goes, `long`'s start is in the new one
    assert len(old) == 1 and not old[0].exists()
    replay = journal.read(directory)
    assert [(c.id, c.outcome) for c in replay.calls] == [(long.id, "interrupted")]
    dropped = _call(j)
    j.began(dropped, 0, "p", T0)
    j.dropped(dropped)  # cancelled before any answer: nothing for the call log
    long.outcome = "stream_error"
    j.ended(long)
    assert [(c.id, c.outcome) for c in journal.read(directory).calls] == [(long.id, "stream_error")]  # as it ended
    j.written(j.rotate())
    assert journal.read(directory).calls == []
    j.close()
    assert list(directory.iterdir()) == []


def test_a_line_cut_short_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    directory.mkdir()
    j = Journal(directory, first_id=1)
    asyncio.run(_never_written(j).put(_succeeded(_call(j))))
    [segment] = directory.iterdir()
    with open(segment, "r+b") as f:  # the machine died mid-write: a line cut short before the segment's zeros
        f.seek(f.read().index(b"\0"))
        f.write(b'["f",2,"2026-12-01T08:00')
    assert [c.id for c in journal.read(directory).calls] == [1]


def test_a_batch_bigger_than_a_segment_fills_more_than_one_and_all_go_once_written(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    directory.mkdir()
    j = Journal(directory, first_id=1)
    recorder = _never_written(j)
    calls = 2 * journal.SEGMENT_BYTES // 300  # each end takes a line of about 250 bytes

    async def put_all() -> None:
        for _ in range(calls):
            await recorder.put(_succeeded(_call(j)))

    asyncio.run(put_all())
    assert len(list(directory.iterdir())) >= 2
    assert [c.id for c in journal.read(directory).calls] == list(range(1, calls + 1))
    j.written(j.rotate())
    assert list(directory.iterdir()) == []


def test_without_a_directory_nothing_is_kept_and_the_store_numbers_the_calls(tmp_path: Path) -> None:
    j = Journal(None)
    call = GatewayCall(T0, "k", "r", "chat", False, id=j.new_id())
    j.began(call, 0, "p", T0)
    j.ended(call)
    assert call.id is None and list(tmp_path.iterdir()) == []


def test_call_ids_go_on_after_every_call_is_pruned(tmp_path: Path) -> None:
    # Ids started again at 1 once retention had pruned every call; the usage records still keyed the old ids, so the
    # new calls' records were dropped as already written: 3 calls of 817 tokens passed a fresh `1d=2000tok` profile.
    async def go() -> int:
        db = await Database.open(tmp_path / "fleetd.db")
        try:
            await ProfileStore(db).insert(PROFILE)
            await UsageStore(db).add([NewUsage("p", T0, "attempt", 120, 0.0006, gateway_try=(57, 1))])
            return await GatewayStore(db).last_call_id()  # no call left in the log
        finally:
            await db.close()

    assert asyncio.run(go()) == 57


def test_a_line_of_the_wrong_kind_is_skipped_and_the_rest_written(tmp_path: Path) -> None:
    # A line that decoded but held a null route (another version's, or by hand) made the whole replay fail, at every
    # start: the real calls beside it were never written.
    directory = tmp_path / "j"
    directory.mkdir()
    j = Journal(directory, first_id=1)
    asyncio.run(_never_written(j).put(_succeeded(_call(j))))
    (directory / "zz.jsonl").write_bytes(b'["b",999000,0,"p","2026-12-01T08:00:00.000+00:00",'
                                         b'"2026-12-01T08:00:00.000+00:00","k",null,"chat",false]\n')  # fmt: skip
    # An id too large for SQLite's INTEGER likewise (it also made every later call's id too large).
    (directory / "zz2.jsonl").write_bytes(b'["b",18446744073709551616,0,"p","2026-12-01T08:00:00.000+00:00",'
                                          b'"2026-12-01T08:00:00.000+00:00","k","r","chat",false]\n')  # fmt: skip
    replay = journal.read(directory)
    assert [c.id for c in replay.calls] == [1]
    assert [c.id for c in _in_store(tmp_path, replay)["calls"]] == [1]


def test_a_new_journal_never_writes_over_a_kept_segment(tmp_path: Path) -> None:
    # Segments were named by pid: a daemon with the last one's pid (pid 1 in a container) truncated the segment a failed
    # replay had kept, and its calls were lost.
    directory = tmp_path / "j"
    directory.mkdir()
    first = Journal(directory, first_id=1)
    asyncio.run(_never_written(first).put(_succeeded(_call(first))))
    second = Journal(directory, first_id=2)
    asyncio.run(_never_written(second).put(_succeeded(_call(second))))
    assert [c.id for c in journal.read(directory).calls] == [1, 2]


def test_a_journal_that_cannot_be_written_says_so_once(tmp_path: Path, caplog: Any) -> None:
    j = Journal(tmp_path / "gone", first_id=1)  # no such directory: as a full disk, every segment refused
    for _ in range(3):
        j.ended(_succeeded(_call(j)).call)
    assert sum("cannot write the journal" in r.message for r in caplog.records) == 1


def test_a_proxy_made_before_the_replay_keeps_the_journal_too(tmp_path: Path) -> None:
    # `gateway key list` while the daemon recovers makes the proxy: it had no journal for the daemon's whole life.
    from fleetd.gateway.service import GatewayService

    async def go() -> Path | None:
        db = await Database.open(tmp_path / "fleetd.db")
        try:
            service = GatewayService(GatewayStore(db), None, clock=lambda: T0)  # type: ignore[arg-type]
            early = service.proxy
            (tmp_path / "j").mkdir()
            await service.recover(tmp_path / "j")
            return early.recorder.journal.directory
        finally:
            await db.close()

    assert asyncio.run(go()) == tmp_path / "j"


def test_an_earlier_start_line_cut_short_is_a_damaged_call_not_a_failed_replay(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    directory.mkdir()
    (directory / "a.jsonl").write_bytes(
        b'["b",5,0,"p"]\n["b",5,1,"p","2026-12-01T08:00:00.000+00:00","2026-12-01T08:00:00.000+00:00","k","r","chat",'
        b"false]\n"
    )
    assert journal.read(directory).calls == []
