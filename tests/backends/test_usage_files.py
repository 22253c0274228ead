"""Incremental ingestion of Claude Code transcripts and Codex rollouts, over real files in tmp dirs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.backends import usage_files
from fleetd.backends.parsers import claude_code
from fleetd.backends.usage_files import (
    ClaudeTranscripts,
    CodexRollouts,
    FileOffset,
    IngestResult,
    UsageRecord,
    _claude_line,
    _ClaudeLine,
    _decode,
    _has_null_field,
)
from fleetd.records.result import TokenUsage, WindowState
from tests.harness import captures_dir

NOW = datetime(2025, 9, 10, 12, 0, tzinfo=UTC)
SESSION = "3f1c2a7e-5b8d-4c1e-9a2f-6d7e8f901234"
PROJECT = "-Users-ann-src-github-com-ann-shop"
MSG = "msg_01SZ8fDq3kq4XyT2vNn7bWcE"
REQ = "req_011CSyA1b2C3d4E5f6G7h8J9"
THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"


def compact(obj: dict[str, Any]) -> bytes:
    """One JSONL line the way Claude Code and Codex write it (no spaces after separators)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def append(path: Path, *lines: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(b"".join(lines))


# -- Claude Code lines ----------------------------------------------------------------------------


def claude_line(
    *,
    mid: str | None = MSG,
    rid: str | None = REQ,
    ts: str = "2025-09-09T21:51:18.091Z",
    usage: dict[str, Any] | None = None,
    sidechain: bool = False,
    model: str = "claude-sonnet-4-20250514",
    session: str | None = SESSION,
    **top: Any,
) -> bytes:
    """Modelled on the realistic transcript line in agent-clis.md §1.6."""
    message: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "I'll look at the failing test first."}],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage
        if usage is not None
        else {
            "input_tokens": 4,
            "cache_creation_input_tokens": 17902,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 17902, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 3,
            "service_tier": "standard",
        },
    }
    if mid is None:
        del message["id"]
    line: dict[str, Any] = {
        "parentUuid": "5e0c0b44-1b6b-4d5e-a4c1-0c8f3c1d2e3f",
        "isSidechain": sidechain,
        "userType": "external",
        "cwd": "/Users/ann/src/github.com/ann/shop",
        "sessionId": session,
        "version": "1.0.65",
        "gitBranch": "master",
        "message": message,
        "requestId": rid,
        "type": "assistant",
        "uuid": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        "timestamp": ts,
    }
    if rid is None:
        del line["requestId"]
    if session is None:
        del line["sessionId"]
    line.update(top)
    return compact(line)


def tokens(inp: int = 4, out: int = 3, read: int = 0, write: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
        **extra,
    }


def user_line(text: str = "please fix the failing test", ts: str = "2025-09-09T21:51:10.000Z") -> bytes:
    return compact(
        {
            "parentUuid": None,
            "isSidechain": False,
            "userType": "external",
            "cwd": "/Users/ann/src",
            "sessionId": SESSION,
            "version": "1.0.65",
            "type": "user",
            "message": {"role": "user", "content": text},
            "uuid": "u-1",
            "timestamp": ts,
        }
    )


@pytest.fixture
def claude_dir(tmp_path: Path) -> Path:
    return tmp_path / "claude-work"


def transcript(claude_dir: Path, name: str = SESSION) -> Path:
    return claude_dir / "projects" / PROJECT / f"{name}.jsonl"


def at(ts: str) -> datetime:
    return datetime.fromisoformat(ts).astimezone(UTC)


def test_the_realistic_claude_line_gives_one_exact_record(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    append(path, user_line(), claude_line(), compact({"type": "summary", "summary": "Fix test", "leafUuid": "x"}))
    result = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    assert result.records == [
        UsageRecord(
            at=datetime(2025, 9, 9, 21, 51, 18, 91000, tzinfo=UTC),
            usage=TokenUsage(input_tokens=4, output_tokens=3, cache_read_tokens=0, cache_write_tokens=17902),
            model="claude-sonnet-4-20250514",
            session_id=SESSION,
            dedupe_key=f"{MSG}:{REQ}",
            source_path=str(path),
        )
    ]
    assert (result.garbled_lines, result.files_read, result.windows) == (0, 1, [])
    assert result.bytes_read == path.stat().st_size


def test_watch_roots(tmp_path: Path) -> None:
    assert ClaudeTranscripts(tmp_path, {}).watch_root == tmp_path / "projects"
    assert CodexRollouts(tmp_path, {}).watch_root == tmp_path / "sessions"
    assert ClaudeTranscripts(tmp_path / "missing", {}).scan(NOW) == IngestResult()


def test_cache_creation_counts_the_total_and_the_breakdown_only_without_it(claude_dir: Path) -> None:
    breakdown = {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 50}
    without_total = tokens(5, 6, 7, cache_creation=breakdown)
    del without_total["cache_creation_input_tokens"]
    append(
        transcript(claude_dir),
        claude_line(mid="msg_a", usage=tokens(10, 20, 30, 999, cache_creation=breakdown)),
        claude_line(mid="msg_b", usage=tokens(1, 2, 3, 70)),
        claude_line(mid="msg_c", usage=without_total),
    )
    usages = [r.usage for r in ClaudeTranscripts(claude_dir, {}).scan(NOW).records]
    assert usages == [TokenUsage(10, 20, 30, 999), TokenUsage(1, 2, 3, 70), TokenUsage(5, 6, 7, 150)]


def test_cache_writes_agree_with_the_attempt_parser_on_a_real_capture(claude_dir: Path) -> None:
    """Claude Code 2.1.330 against a provider that sends no breakdown: the usage it reports carries
    `cache_creation` with zero ephemeral counts beside `cache_creation_input_tokens: 45`. The transcript
    reader once took the zeros (199 where the attempt counted 244 in the trial)."""
    folder = captures_dir() / "cc_ok_stream"
    if not folder.is_dir():
        pytest.skip(f"capture folder {folder} is absent (set FLEETD_CAPTURES to the captures directory)")
    stdout = (folder / "stdout.txt").read_text(encoding="utf-8")
    result = next(obj for obj in map(json.loads, stdout.splitlines()) if obj.get("type") == "result")
    assert result["usage"]["cache_creation"] == {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0}
    parsed = claude_code.parse_stream_json(stdout, "", 0, NOW, UTC)
    append(transcript(claude_dir), claude_line(usage=result["usage"]))
    [record] = ClaudeTranscripts(claude_dir, {}).scan(NOW).records
    assert record.usage.cache_write_tokens == parsed.usage.cache_write_tokens == 45
    assert record.usage == parsed.usage


def test_synthetic_model_is_no_model(claude_dir: Path) -> None:
    append(transcript(claude_dir), claude_line(model="<synthetic>", isApiErrorMessage=True, usage=tokens(0, 0)))
    [record] = ClaudeTranscripts(claude_dir, {}).scan(NOW).records
    assert record.model is None and record.usage == TokenUsage()


@pytest.mark.parametrize(
    "line",
    [
        claude_line(costUSD=None),
        claude_line(rid=None).replace(b'"type":"assistant"', b'"requestId":null,"type":"assistant"'),
        claude_line(version="unknown"),
        claude_line(version="2.0"),
        claude_line(mid=""),
        claude_line(rid=""),
        claude_line(session=""),
        claude_line(model=""),
        # A Task tool's result on a user line carries its own "usage":{…}, but no message.usage.
        compact(
            {
                "type": "user",
                "timestamp": "2025-09-09T21:52:00.000Z",
                "sessionId": SESSION,
                "message": {"role": "user", "content": [{"type": "tool_result", "content": "done"}]},
                "toolUseResult": {"status": "completed", "usage": {"input_tokens": 5, "output_tokens": 9}},
            }
        ),
        # Ids that are no strings (ccusage skips them): not garbled, though they cannot be looked up among copies.
        claude_line(mid={"id": 1}),  # type: ignore[arg-type]
        claude_line(rid=["req"]),  # type: ignore[arg-type]
    ],
    ids=[
        "null-costUSD",
        "null-requestId",
        "bad-version",
        "short-version",
        "empty-message-id",
        "empty-request-id",
        "empty-session",
        "empty-model",
        "tool-result-usage",
        "object-message-id",
        "list-request-id",
    ],
)
def test_ccusage_skip_rules(claude_dir: Path, line: bytes) -> None:
    append(transcript(claude_dir), line)
    result = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    assert (result.records, result.garbled_lines) == ([], 0)


def test_one_line_per_content_block_counts_once_keeping_the_larger_total(claude_dir: Path) -> None:
    append(
        transcript(claude_dir),
        claude_line(ts="2025-09-09T21:51:18.091Z", usage=tokens(4, 1, 200, 10)),
        claude_line(ts="2025-09-09T21:51:19.500Z", usage=tokens(4, 1, 200, 10)),
        claude_line(ts="2025-09-09T21:51:21.250Z", usage=tokens(4, 250, 200, 10)),
        claude_line(ts="2025-09-09T21:51:22.000Z", usage=tokens(4, 1, 200, 10)),
    )
    [record] = ClaudeTranscripts(claude_dir, {}).scan(NOW).records
    assert record.usage == TokenUsage(4, 250, 200, 10)
    assert record.at == at("2025-09-09T21:51:21.250Z")
    assert record.dedupe_key == f"{MSG}:{REQ}"


def test_equal_totals_prefer_the_copy_with_speed(claude_dir: Path) -> None:
    append(
        transcript(claude_dir),
        claude_line(ts="2025-09-09T21:51:18.000Z", usage=tokens(4, 9)),
        claude_line(ts="2025-09-09T21:51:19.000Z", usage=tokens(4, 9, speed="standard")),
        claude_line(ts="2025-09-09T21:51:20.000Z", usage=tokens(4, 9)),
    )
    [record] = ClaudeTranscripts(claude_dir, {}).scan(NOW).records
    assert record.at == at("2025-09-09T21:51:19.000Z")


def test_sidechain_replays_match_by_message_id_and_the_main_copy_wins(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    append(
        path,
        # /btw replays the parent's message on a sidechain with a new request id and a larger total.
        claude_line(mid="msg_x", rid="req_side", sidechain=True, usage=tokens(4, 900)),
        claude_line(mid="msg_x", rid="req_main", usage=tokens(4, 100)),
        claude_line(mid="msg_y", rid="req_main2", usage=tokens(1, 1)),
        claude_line(mid="msg_y", rid="req_side2", sidechain=True, usage=tokens(1, 500)),
    )
    records = ClaudeTranscripts(claude_dir, {}).scan(NOW).records
    assert [(r.dedupe_key, r.usage.output_tokens) for r in records] == [("msg_x:req_side", 100), ("msg_y:req_main2", 1)]


def test_two_main_copies_with_different_request_ids_both_count(claude_dir: Path) -> None:
    append(transcript(claude_dir), claude_line(rid="req_1"), claude_line(rid="req_2"))
    keys = [r.dedupe_key for r in ClaudeTranscripts(claude_dir, {}).scan(NOW).records]
    assert keys == [f"{MSG}:req_1", f"{MSG}:req_2"]


def test_lines_without_a_message_id_are_never_deduplicated(claude_dir: Path) -> None:
    append(transcript(claude_dir), claude_line(mid=None), claude_line(mid=None))
    records = ClaudeTranscripts(claude_dir, {}).scan(NOW).records
    assert [r.dedupe_key for r in records] == [None, None]


def test_dedupe_across_files_and_scans_and_nested_subagent_files(claude_dir: Path) -> None:
    main = transcript(claude_dir)
    nested = claude_dir / "projects" / PROJECT / SESSION / "subagents" / "agent-7c1d.jsonl"
    append(main, claude_line())
    append(nested, claude_line(), claude_line(mid="msg_sub", rid="req_sub", session=None))
    reader = ClaudeTranscripts(claude_dir, {})
    first = reader.scan(NOW)
    assert [(r.dedupe_key, r.session_id, r.source_path) for r in first.records] == [
        (f"{MSG}:{REQ}", SESSION, str(main)),
        ("msg_sub:req_sub", SESSION, str(nested)),  # no sessionId on the line: the session folder names it
    ]
    assert first.files_read == 2
    other = transcript(claude_dir, "5a6b7c8d-0000-4000-8000-000000000001")
    append(other, claude_line(), claude_line(mid="msg_sub", rid="req_sub"))
    assert reader.scan(NOW).records == []


def test_a_larger_copy_in_a_later_scan_adds_only_the_difference(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    reader = ClaudeTranscripts(claude_dir, {})
    append(path, claude_line(ts="2025-09-09T21:51:18.000Z", usage=tokens(4, 1, 300, 20)))
    assert [r.usage for r in reader.scan(NOW).records] == [TokenUsage(4, 1, 300, 20)]
    append(path, claude_line(ts="2025-09-09T21:51:30.000Z", usage=tokens(4, 400, 300, 20)))
    append(path, claude_line(ts="2025-09-09T21:51:31.000Z", usage=tokens(4, 400, 300, 20)))
    [correction] = reader.scan(NOW).records
    assert correction == UsageRecord(
        at=at("2025-09-09T21:51:30.000Z"),
        usage=TokenUsage(0, 399, 0, 0),
        model="claude-sonnet-4-20250514",
        session_id=SESSION,
        dedupe_key=f"{MSG}:{REQ}+724",
        source_path=str(path),
        requests=0,
    )
    append(path, claude_line(usage=tokens(4, 2, 300, 20)))
    assert reader.scan(NOW).records == []


def test_garbled_truncated_and_binary_lines_are_counted_and_skipped(claude_dir: Path) -> None:
    append(
        transcript(claude_dir),
        claude_line(mid="msg_1"),
        b"not json at all\n",
        b"\x89PNG\x1a\xff\xfe\x00\x01\n",
        b'{"type":"assistant","message":{"usage":{"input_tokens":1,"outp\n',  # cut off mid-line, then a newline
        b'{"message":{"id":"m","usage":{"input_tokens":1}}}}\n',  # one brace too many
        b'{"message":{"id":"m","usage":{"input_tokens":"\xff\xfe"}},"timestamp":"2025-09-09T21:51:18Z"}\n',
        claude_line(mid="msg_2", ts="yesterday"),
        b"\x00\x00\x00" + claude_line(mid="msg_3"),  # NUL padding a crash left before the next line
        b"\n\r\n",
    )
    result = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    assert [r.dedupe_key for r in result.records] == [f"msg_1:{REQ}", f"msg_3:{REQ}"]
    assert result.garbled_lines == 6


def test_a_line_ccusage_skips_for_a_null_is_not_garbled_whatever_else_is_wrong(claude_dir: Path) -> None:
    append(
        transcript(claude_dir),
        claude_line(mid="msg_1", ts="yesterday", costUSD=None),  # skipped for the null: not counted as garbled
        claude_line(mid="msg_2", ts="yesterday"),  # garbled
        # Undecodable (a raw control character in a string), but skipped for the null first.
        claude_line(mid="msg_3", costUSD=None).replace(b'"assistant"', b'"assis\x01tant"'),
    )
    result = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    assert (result.records, result.garbled_lines) == ([], 1)


def test_appended_lines_give_only_new_records(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    append(path, claude_line(mid="msg_1"), claude_line(mid="msg_2"))
    reader = ClaudeTranscripts(claude_dir, {})
    assert len(reader.scan(NOW).records) == 2
    new = claude_line(mid="msg_3")
    append(path, new)
    result = reader.scan(NOW)
    assert [r.dedupe_key for r in result.records] == [f"msg_3:{REQ}"]
    assert result.bytes_read == len(new) + 1  # the new line, and the byte before it to check continuity
    assert reader.offsets[str(path)].offset == path.stat().st_size
    quiet = reader.scan(NOW)
    assert (quiet.records, quiet.files_read, quiet.bytes_read) == ([], 0, 0)


def test_a_partial_last_line_is_carried_over_and_counted_once(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    second = claude_line(mid="msg_2")
    append(path, claude_line(mid="msg_1"), second[:37])
    reader = ClaudeTranscripts(claude_dir, {})
    assert [r.dedupe_key for r in reader.scan(NOW).records] == [f"msg_1:{REQ}"]
    assert reader.offsets[str(path)].partial == second[:37]
    append(path, second[37:80])
    assert reader.scan(NOW).records == []
    append(path, second[80:])
    result = reader.scan(NOW)
    assert [r.dedupe_key for r in result.records] == [f"msg_2:{REQ}"]
    assert (result.garbled_lines, reader.offsets[str(path)].partial) == (0, b"")


def test_offsets_survive_a_restart_through_json(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    third = claude_line(mid="msg_3")
    append(path, claude_line(mid="msg_1"), claude_line(mid="msg_2"), third[:50])
    reader = ClaudeTranscripts(claude_dir, {})
    assert len(reader.scan(NOW).records) == 2
    stored = json.loads(json.dumps({p: o.to_json() for p, o in reader.offsets.items()}))
    restarted = ClaudeTranscripts(claude_dir, {p: FileOffset.from_json(v) for p, v in stored.items()})
    append(path, third[50:], claude_line(mid="msg_4"))
    assert [r.dedupe_key for r in restarted.scan(NOW).records] == [f"msg_3:{REQ}", f"msg_4:{REQ}"]


def test_truncation_rereads_from_the_start_without_duplicates(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    append(path, claude_line(mid="msg_1"), claude_line(mid="msg_2"), claude_line(mid="msg_3"))
    reader = ClaudeTranscripts(claude_dir, {})
    assert len(reader.scan(NOW).records) == 3
    inode = path.stat().st_ino
    with path.open("r+b") as handle:
        handle.truncate(0)
        handle.write(claude_line(mid="msg_1") + claude_line(mid="msg_9"))
    assert path.stat().st_ino == inode
    assert [r.dedupe_key for r in reader.scan(NOW).records] == [f"msg_9:{REQ}"]
    assert reader.offsets[str(path)].offset == path.stat().st_size


def test_a_file_rewritten_in_place_past_the_old_offset_is_read_again(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    append(path, claude_line(mid="msg_1"), claude_line(mid="msg_2"))
    reader = ClaudeTranscripts(claude_dir, {})
    reader.scan(NOW)
    longer = claude_line(mid="msg_long", usage=tokens(1, 1, service_tier="standard", padding="x" * 500))
    with path.open("r+b") as handle:
        handle.truncate(0)
        handle.write(claude_line(mid="msg_1") + longer + claude_line(mid="msg_2"))
    assert path.stat().st_size > reader.offsets[str(path)].offset
    assert [r.dedupe_key for r in reader.scan(NOW).records] == [f"msg_long:{REQ}"]


def test_an_atomic_replace_is_read_from_the_start_without_duplicates(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    append(path, claude_line(mid="msg_1"), claude_line(mid="msg_2"))
    reader = ClaudeTranscripts(claude_dir, {})
    reader.scan(NOW)
    old_inode = reader.offsets[str(path)].inode
    staged = path.with_suffix(".tmp")
    staged.write_bytes(claude_line(mid="msg_1") + claude_line(mid="msg_2") + claude_line(mid="msg_3"))
    os.replace(staged, path)
    result = reader.scan(NOW)
    assert [r.dedupe_key for r in result.records] == [f"msg_3:{REQ}"]
    assert result.bytes_read == path.stat().st_size
    assert reader.offsets[str(path)].inode == path.stat().st_ino != old_inode


def test_vanished_files_are_skipped_and_forgotten(claude_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kept, doomed = transcript(claude_dir, "keep"), transcript(claude_dir, "doomed")
    append(kept, claude_line(mid="msg_1"))
    append(doomed, claude_line(mid="msg_2"))
    reader = ClaudeTranscripts(claude_dir, {})
    reader.scan(NOW)
    assert set(reader.offsets) == {str(kept), str(doomed)}
    doomed.unlink()
    ghost = transcript(claude_dir, "listed-then-gone")

    def listing() -> Iterator[Path]:
        yield ghost  # listed, then gone before it is opened
        yield kept

    monkeypatch.setattr(reader, "_files", listing)
    append(kept, claude_line(mid="msg_3"))
    assert [r.dedupe_key for r in reader.scan(NOW).records] == [f"msg_3:{REQ}"]
    assert set(reader.offsets) == {str(kept)}


def test_a_50_mb_transcript_appended_by_one_line_reads_only_that_line(claude_dir: Path) -> None:
    path = transcript(claude_dir)
    tool_output = "x" * (1 << 20)
    big_user_line = compact(
        {
            "type": "user",
            "sessionId": SESSION,
            "timestamp": "2025-09-09T21:00:00.000Z",
            "message": {"role": "user", "content": [{"type": "tool_result", "content": tool_output}]},
        }
    )
    append(path, claude_line(mid="msg_0"), big_user_line * 50)
    assert path.stat().st_size > 50 * (1 << 20)
    reader = ClaudeTranscripts(claude_dir, {})
    first = reader.scan(NOW)
    assert (len(first.records), first.bytes_read) == (1, path.stat().st_size)
    before = reader.offsets[str(path)].offset
    line = claude_line(mid="msg_1")
    append(path, line)
    second = reader.scan(NOW)
    assert [r.dedupe_key for r in second.records] == [f"msg_1:{REQ}"]
    assert second.bytes_read == len(line) + 1
    assert reader.offsets[str(path)].offset - before == len(line)


def test_seen_keys_are_bounded(claude_dir: Path) -> None:
    reader = ClaudeTranscripts(claude_dir, {}, max_keys=2)
    append(transcript(claude_dir, "a"), claude_line(mid="msg_1"), claude_line(mid="msg_2"), claude_line(mid="msg_3"))
    assert len(reader.scan(NOW).records) == 3
    append(transcript(claude_dir, "b"), claude_line(mid="msg_1"), claude_line(mid="msg_3"))
    # msg_1 fell out of memory; the database's unique index on dedupe_key is the backstop for it.
    assert [r.dedupe_key for r in reader.scan(NOW).records] == [f"msg_1:{REQ}"]


def test_file_offset_json_round_trip_and_lenient_reading() -> None:
    offset = FileOffset(inode=12345, size=900, offset=880, partial=b'{"half":\xff\x00', state={"totals": [1, 2]})
    assert FileOffset.from_json(json.loads(json.dumps(offset.to_json()))) == offset
    assert FileOffset.from_json(json.dumps(offset.to_json())) == offset
    for junk in (
        None,
        "nope",
        {"inode": -1, "size": 1, "offset": 1},
        {"inode": 1, "size": 1, "offset": 1, "partial": "!!"},
        {"inode": 1, "size": 9, "offset": 1, "partial": "YWJj"},
    ):
        assert FileOffset.from_json(junk) == FileOffset(0, 0, 0)


# -- Codex rollouts -------------------------------------------------------------------------------


def usage(inp: int, cached: int, out: int, reasoning: int = 0) -> dict[str, int]:
    return {
        "input_tokens": inp,
        "cached_input_tokens": cached,
        "output_tokens": out,
        "reasoning_output_tokens": reasoning,
        "total_tokens": inp + out,
    }


def limits(primary: dict[str, Any] | None, secondary: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "limit_id": "codex",
        "limit_name": None,
        "primary": primary,
        "secondary": secondary,
        "credits": None,
        "plan_type": "pro",
        **extra,
    }


def session_meta(ts: str = "2025-10-01T09:00:00.000Z", thread: str = THREAD, **payload: Any) -> bytes:
    return compact(
        {
            "timestamp": ts,
            "type": "session_meta",
            "payload": {
                "id": thread,
                "timestamp": ts,
                "cwd": "/home/ann/shop",
                "originator": "codex_cli_rs",
                "cli_version": "0.46.0",
                "source": "cli",
                **payload,
            },
        }
    )


def turn_context(model: str, ts: str = "2025-10-01T09:00:01.000Z") -> bytes:
    return compact(
        {
            "timestamp": ts,
            "type": "turn_context",
            "payload": {
                "cwd": "/home/ann/shop",
                "approval_policy": "never",
                "model": model,
                "effort": "medium",
                "summary": "auto",
            },
        }
    )


def token_count(
    ts: str | None,
    total: dict[str, int] | None = None,
    last: dict[str, int] | None = None,
    rate_limits: dict[str, Any] | None = None,
    **line: Any,
) -> bytes:
    info = None
    if total is not None or last is not None:
        info = {"model_context_window": 258400}
        if total is not None:
            info["total_token_usage"] = total
        if last is not None:
            info["last_token_usage"] = last
    obj: dict[str, Any] = {
        "timestamp": ts,
        "type": "event_msg",
        "payload": {"type": "token_count", "info": info, "rate_limits": rate_limits},
        **line,
    }
    if ts is None:
        del obj["timestamp"]
    return compact(obj)


def response_item(ts: str) -> bytes:
    return compact(
        {
            "timestamp": ts,
            "type": "response_item",
            "payload": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Done: token_count fixed."}],
            },
        }
    )


@pytest.fixture
def codex_dir(tmp_path: Path) -> Path:
    return tmp_path / "codex-home"


def rollout(codex_dir: Path, thread: str = THREAD, day: str = "2025/10/01", stamp: str = "2025-10-01T11-00-00") -> Path:
    return codex_dir / "sessions" / day / f"rollout-{stamp}-{thread}.jsonl"


def epoch(ts: str) -> int:
    return int(at(ts).timestamp())


def test_codex_rollout_gives_exact_records_and_windows(codex_dir: Path) -> None:
    path = rollout(codex_dir)
    t1, t2 = "2025-10-01T09:00:05.120Z", "2025-10-01T09:01:10.480Z"
    append(
        path,
        session_meta(),
        turn_context("gpt-5-codex"),
        token_count(
            "2025-10-01T09:00:02.000Z",
            rate_limits=limits(
                {"used_percent": 1.0, "window_minutes": 300, "resets_at": epoch("2025-10-01T13:00:00Z")},
                {"used_percent": 4.0, "window_minutes": 10080, "resets_at": epoch("2025-10-06T00:00:00Z")},
            ),
        ),
        response_item("2025-10-01T09:00:05.000Z"),
        token_count(t1, total=usage(1200, 1000, 300, 100), last=usage(1200, 1000, 300, 100)),
        turn_context("gpt-5", ts="2025-10-01T09:01:00.000Z"),
        token_count(
            t2,
            total=usage(3000, 2500, 500, 150),
            last=usage(1800, 1500, 200, 50),
            rate_limits=limits(
                {"used_percent": 6.5, "window_minutes": 300, "resets_at": epoch("2025-10-01T13:00:00Z")},
                {"used_percent": 9.0, "window_minutes": 10080, "resets_at": epoch("2025-10-06T00:00:00Z")},
            ),
        ),
    )
    result = CodexRollouts(codex_dir, {}).scan(NOW)
    assert result.records == [
        UsageRecord(at(t1), TokenUsage(200, 300, 1000, 0), "gpt-5-codex", THREAD, f"{THREAD}:{t1}", str(path)),
        UsageRecord(at(t2), TokenUsage(300, 200, 1500, 0), "gpt-5", THREAD, f"{THREAD}:{t2}", str(path)),
    ]
    assert result.windows == [
        WindowState(300, 6.5, datetime(2025, 10, 1, 13, 0, tzinfo=UTC), "primary"),
        WindowState(10080, 9.0, datetime(2025, 10, 6, 0, 0, tzinfo=UTC), "secondary"),
    ]
    assert (result.garbled_lines, result.files_read) == (0, 1)


def test_codex_cumulative_totals_without_last_usage_become_deltas(codex_dir: Path) -> None:
    path = rollout(codex_dir)
    append(
        path,
        session_meta(),
        turn_context("gpt-5-codex"),
        token_count("2025-10-01T09:00:10.000Z", total=usage(1000, 800, 100)),
        token_count("2025-10-01T09:00:20.000Z", total=usage(2500, 2000, 250)),
    )
    reader = CodexRollouts(codex_dir, {})
    assert [r.usage for r in reader.scan(NOW).records] == [TokenUsage(200, 100, 800), TokenUsage(300, 150, 1200)]
    # A restart resumes from the persisted offset and running total, and keeps the model.
    stored = json.loads(json.dumps({p: o.to_json() for p, o in reader.offsets.items()}))
    restarted = CodexRollouts(codex_dir, {p: FileOffset.from_json(v) for p, v in stored.items()})
    append(path, token_count("2025-10-01T09:00:30.000Z", total=usage(2600, 2000, 300)))
    assert restarted.scan(NOW).records == [
        UsageRecord(
            at("2025-10-01T09:00:30.000Z"),
            TokenUsage(100, 50, 0),
            "gpt-5-codex",
            THREAD,
            f"{THREAD}:2025-10-01T09:00:30.000Z",
            str(path),
        ),
    ]
    # A running total that goes down is a reset: the new total is this turn's usage.
    append(path, token_count("2025-10-01T09:00:40.000Z", total=usage(400, 100, 50)))
    assert [r.usage for r in restarted.scan(NOW).records] == [TokenUsage(300, 50, 100)]


def test_codex_re_emitted_token_counts_with_an_unchanged_total_count_nothing(codex_dir: Path) -> None:
    turn = {"total": usage(1000, 800, 100), "last": usage(1000, 800, 100)}
    append(
        rollout(codex_dir),
        session_meta(),
        token_count("2025-10-01T09:00:10.000Z", **turn),
        token_count(
            "2025-10-01T09:00:11.000Z",
            **turn,
            rate_limits=limits({"used_percent": 3.0, "window_minutes": 300, "resets_at": 1759323600}),
        ),
        token_count("2025-10-01T09:00:12.000Z", total=usage(1000, 800, 100), last=usage(0, 0, 0)),
    )
    result = CodexRollouts(codex_dir, {}).scan(NOW)
    assert [r.dedupe_key for r in result.records] == [f"{THREAD}:2025-10-01T09:00:10.000Z"]
    assert [w.used_percent for w in result.windows] == [3.0]  # the re-emit still carries the fresh snapshot


def test_codex_resets_in_seconds_counts_from_the_line_and_resets_at_is_an_epoch(codex_dir: Path) -> None:
    old = codex_dir / "sessions" / "2025" / "09" / "20" / f"rollout-2025-09-20T10-00-00-{THREAD}.jsonl"
    append(
        old,
        token_count(
            "2025-09-20T10:00:00.000Z",
            rate_limits={
                "primary": {"used_percent": 42.0, "window_minutes": 10080, "resets_in_seconds": 3600},
                "secondary": {"used_percent": 80.0, "window_minutes": 300, "resets_in_seconds": 90},
            },
        ),
    )
    reader = CodexRollouts(codex_dir, {})
    assert reader.scan(NOW).windows == [
        WindowState(300, 80.0, datetime(2025, 9, 20, 10, 1, 30, tzinfo=UTC), "secondary"),
        WindowState(10080, 42.0, datetime(2025, 9, 20, 11, 0, tzinfo=UTC), "primary"),
    ]
    append(
        old,
        token_count(
            "2025-09-20T10:05:00.000Z",
            rate_limits={"primary": {"used_percent": 43.0, "window_minutes": 10080, "resets_at": 1758366000}},
        ),
    )
    # The latest snapshot is the whole truth for its limit: no 5-hour window in it, none reported.
    assert reader.scan(NOW).windows == [WindowState(10080, 43.0, datetime.fromtimestamp(1758366000, UTC), "primary")]


def test_codex_the_latest_snapshot_wins_by_timestamp_not_by_file_order(codex_dir: Path) -> None:
    def snapshot(ts: str, used: float) -> bytes:
        return token_count(
            ts, rate_limits=limits({"used_percent": used, "window_minutes": 300, "resets_at": 1759323600})
        )

    append(rollout(codex_dir, thread="0199a213-0000-7000-8000-00000000000a"), snapshot("2025-10-01T10:00:00Z", 50.0))
    append(rollout(codex_dir, thread="0199a213-0000-7000-8000-00000000000b"), snapshot("2025-10-01T09:00:00Z", 20.0))
    reader = CodexRollouts(codex_dir, {})
    assert [w.used_percent for w in reader.scan(NOW).windows] == [50.0]
    append(rollout(codex_dir, thread="0199a213-0000-7000-8000-00000000000c"), snapshot("2025-10-01T08:00:00Z", 10.0))
    assert reader.scan(NOW).windows == []  # nothing newer: the caller keeps what it has
    assert reader.scan(NOW).windows == []


def test_codex_an_archived_copy_of_a_thread_adds_nothing(codex_dir: Path) -> None:
    path = rollout(codex_dir)
    append(
        path,
        session_meta(),
        token_count("2025-10-01T09:00:10.000Z", total=usage(1000, 800, 100), last=usage(1000, 800, 100)),
    )
    reader = CodexRollouts(codex_dir, {})
    assert len(reader.scan(NOW).records) == 1
    archived = codex_dir / "archived_sessions" / path.name
    archived.parent.mkdir(parents=True)
    os.replace(path, archived)
    result = reader.scan(NOW)
    assert (result.records, result.files_read) == ([], 1)
    assert set(reader.offsets) == {str(archived)}


def test_codex_a_spawned_sub_agent_does_not_recount_its_parents_replayed_history(codex_dir: Path) -> None:
    child = "0199a2ff-1111-7000-8000-0000000000c1"
    spawn = {"subagent": {"thread_spawn": {"parent_thread_id": THREAD, "depth": 1}}}
    path = rollout(codex_dir, thread=child, stamp="2025-10-01T11-30-00")
    append(
        path,
        session_meta("2025-10-01T09:30:00.000Z", thread=child, source=spawn),
        turn_context("gpt-5-codex", ts="2025-10-01T09:30:00.010Z"),
        # The parent's history, replayed in one burst: stale totals and stale rate limits.
        token_count(
            "2025-10-01T09:30:00.020Z",
            total=usage(1000, 800, 100),
            last=usage(1000, 800, 100),
            rate_limits=limits({"used_percent": 64.0, "window_minutes": 300, "resets_at": 1759323600}),
        ),
        token_count("2025-10-01T09:30:00.021Z", total=usage(5000, 4000, 400), last=usage(4000, 3200, 300)),
        token_count("2025-10-01T09:30:00.022Z", total=usage(9000, 7000, 700), last=usage(4000, 3000, 300)),
        # The child's own first turn.
        token_count("2025-10-01T09:30:07.500Z", total=usage(9600, 7400, 750)),
    )
    result = CodexRollouts(codex_dir, {}).scan(NOW)
    assert [(r.session_id, r.usage) for r in result.records] == [(child, TokenUsage(200, 50, 400))]
    assert result.windows == []


def test_codex_dedupe_key_falls_back_to_the_ordinal_then_the_byte_offset(codex_dir: Path) -> None:
    path = rollout(codex_dir)
    first = session_meta()
    append(path, first, token_count(None, total=usage(10, 0, 5), ordinal=7))
    second_at = path.stat().st_size
    append(path, token_count(None, total=usage(30, 0, 6)))
    records = CodexRollouts(codex_dir, {}).scan(NOW).records
    assert [(r.dedupe_key, r.at) for r in records] == [(f"{THREAD}:#7", NOW), (f"{THREAD}:@{second_at}", NOW)]


def test_codex_garbled_lines_and_partial_lines(codex_dir: Path) -> None:
    path = rollout(codex_dir)
    line = token_count("2025-10-01T09:00:20.000Z", total=usage(100, 0, 10), last=usage(100, 0, 10))
    append(
        path,
        session_meta(),
        b'{"timestamp":"2025-10-01T09:00:10.000Z","type":"event_msg","payload":{"type":"token_count","info":{\n',
        b'{"type":"event_msg","payload":{"type":"token_count"}}}\n',
        b"\xde\xad\xbe\xef\n",
        token_count("2025-10-01T09:00:15.000Z", total={"input_tokens": "lots"}),  # junk numbers are zero: no usage
        line[:60],
    )
    reader = CodexRollouts(codex_dir, {})
    first = reader.scan(NOW)
    assert (first.records, first.garbled_lines) == ([], 3)
    append(path, line[60:])
    second = reader.scan(NOW)
    assert [r.usage for r in second.records] == [TokenUsage(100, 10, 0)]
    assert second.garbled_lines == 0


def test_codex_only_rollout_files_are_read(codex_dir: Path) -> None:
    append(
        codex_dir / "sessions" / "2025" / "10" / "01" / "notes.jsonl",
        token_count("2025-10-01T09:00:00Z", total=usage(1, 0, 1)),
    )
    append(codex_dir / "history.jsonl", b'{"session_id":"x","ts":1,"text":"hi"}\n')
    assert CodexRollouts(codex_dir, {}).scan(NOW) == IngestResult()


def test_scan_accepts_a_naive_now_as_utc(codex_dir: Path) -> None:
    append(rollout(codex_dir), token_count(None, total=usage(10, 0, 5)))
    [record] = CodexRollouts(codex_dir, {}).scan(NOW.replace(tzinfo=None)).records
    assert record.at == NOW and record.at.tzinfo is UTC


def test_time_is_a_parameter_not_a_clock(codex_dir: Path) -> None:
    later = NOW + timedelta(days=30)
    append(
        rollout(codex_dir),
        token_count(
            "2025-10-01T09:00:00Z",
            rate_limits={"primary": {"used_percent": 1.0, "window_minutes": 300, "resets_in_seconds": 60}},
        ),
    )
    assert CodexRollouts(codex_dir, {}).scan(later).windows[0].resets_at == datetime(2025, 10, 1, 9, 1, tzinfo=UTC)


def test_claude_lines_with_spaces_after_colons_are_still_read(tmp_path: Path) -> None:
    """Claude Code writes compact JSON; a re-serialised transcript must not be ignored."""
    from fleetd.backends.usage_files import ClaudeTranscripts

    line = {
        "sessionId": "s", "version": "2.1.330", "type": "assistant", "timestamp": "2026-11-21T10:00:00.000Z",
        "requestId": "r1", "cwd": "/w",
        "message": {"id": "m1", "model": "claude-sonnet-4-5",
                    "usage": {"input_tokens": 7, "output_tokens": 3, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0}},
    }  # fmt: skip
    path = tmp_path / "projects" / "p" / "s.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(line, indent=None) + "\n")  # ", " and ": " separators
    (record,) = ClaudeTranscripts(tmp_path).scan(datetime(2026, 11, 21, 11, tzinfo=UTC)).records
    assert (record.usage.input_tokens, record.usage.output_tokens) == (7, 3)


# -- the fast path: lines without usage are barely looked at, usage lines decoded into a struct, copies not offered --

# ccusage's null rule as a regular expression: the reference _has_null_field must agree with.
NULL_FIELD = re.compile(
    rb'"(?:id|cwd|model|speed|costUSD|version|sessionId|requestId|isApiErrorMessage|'
    rb'cache_read_input_tokens|cache_creation_input_tokens)"\s*:\s*null'
)
NULL_PIECES = [b'"id"', b'"cwd"', b'"model"', b'"costUSD"', b'"cache_read_input_tokens"', b'"idx"', b'"xid"', b'"',
               b":", b" ", b"\t", b"null", b"nul", b"\\", b"{", b",", b"x", b'\\"id\\"', b"\n", b"\x0b",
               b'"stop_reason":null,"stop_sequence":null']  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(NULL_PIECES), max_size=14))
def test_the_null_rule_agrees_with_ccusages_regular_expression(pieces: list[bytes]) -> None:
    line = b"".join(pieces)
    assert _has_null_field(line) == bool(NULL_FIELD.search(line))


TRICKY_TEXT = st.text(alphabet='ab"\\{}[]:,\n\t\u00e9\u2028\U0001f600 ', max_size=40)
TOP_FIELDS = ["timestamp", "sessionId", "requestId", "isSidechain", "version", "message", "cwd", "usage"]


@settings(max_examples=300, deadline=None)
@given(
    text=TRICKY_TEXT,
    tool_input=st.dictionaries(st.sampled_from(["usage", "message", "content", "id"]), st.integers(0, 9) | TRICKY_TEXT,
                               max_size=3),
    extra=st.dictionaries(st.sampled_from(TOP_FIELDS), st.none() | st.booleans() | st.integers() | TRICKY_TEXT,
                          max_size=2),
)  # fmt: skip
def test_the_struct_decode_reads_what_json_reads(text: str, tool_input: dict[str, Any], extra: dict[str, Any]) -> None:
    """Content that spells the markers (escaped, or as real keys of a tool's input), odd values in the fields read,
    non-ASCII text: the struct holds what json.loads gives for those fields (json's own dict converted)."""
    obj = json.loads(claude_line())
    obj["message"]["content"] = [{"type": "text", "text": text}, {"type": "tool_use", "input": tool_input}]
    obj.update(extra)
    line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        expected = msgspec.convert(json.loads(line), _ClaudeLine)
    except msgspec.ValidationError:  # a message that is not an object: no usage entry either way
        expected = _ClaudeLine()
    assert _claude_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b'{"message":{"id":"m","usage":{"input_tokens":1}},"cwd":"\xff"}',  # skipped by the struct, refused by json
        b'{"message":{"id":"m","usage":{"input_tokens":1}},"cwd":"\xed\xa0"}',
        b'{"message":{"id":"m","usage":{"input_tokens":1}},"cwd":NaN,}',
    ],
)
def test_lines_json_refuses_are_refused_even_where_the_struct_skips(line: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(line)
    assert _claude_line(line) is None


def test_copies_of_a_message_are_not_offered_again(claude_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = transcript(claude_dir)
    # One line per content block, as Claude Code writes them: same id, request id and usage.
    append(path, *(claude_line(ts=f"2025-09-09T21:51:1{i}.000Z") for i in range(4)), user_line() * 3)
    reader = ClaudeTranscripts(claude_dir, {})
    offered = []
    original = ClaudeTranscripts._offer
    monkeypatch.setattr(
        ClaudeTranscripts, "_offer", lambda self, entry, out: offered.append(1) or original(self, entry, out)
    )
    [record] = reader.scan(NOW).records
    assert len(offered) == 1 and record.at == at("2025-09-09T21:51:10.000Z")
    append(path, claude_line(ts="2025-09-09T21:52:00.000Z", usage=tokens(4, 9000, 0, 17902)))  # larger: offered
    [correction] = reader.scan(NOW).records
    assert len(offered) == 2 and correction.usage.output_tokens == 9000 - 3
    append(path, claude_line(mid=None), claude_line(mid=None))  # no message id: never de-duplicated, each counts
    assert len(reader.scan(NOW).records) == 2


def test_a_message_whose_content_holds_a_usage_object_counts_the_messages_own(claude_dir: Path) -> None:
    obj = json.loads(claude_line())
    obj["message"]["content"] = [{"type": "tool_use", "input": {"usage": {"input_tokens": 999999}}}]
    append(transcript(claude_dir), compact(obj))
    [record] = ClaudeTranscripts(claude_dir, {}).scan(NOW).records
    assert record.usage == TokenUsage(4, 3, 0, 17902)


def test_lines_ending_in_carriage_returns_or_spaces_are_still_read(claude_dir: Path) -> None:
    append(transcript(claude_dir), claude_line(mid="msg_1").replace(b"\n", b"\r\n"), b"  " + claude_line(mid="msg_2"))
    result = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    assert ([r.dedupe_key for r in result.records], result.garbled_lines) == ([f"msg_1:{REQ}", f"msg_2:{REQ}"], 0)


def test_a_scan_of_given_paths_reads_only_those(claude_dir: Path) -> None:
    one, two = transcript(claude_dir, "one"), transcript(claude_dir, "two")
    append(one, claude_line(mid="msg_1"))
    append(two, claude_line(mid="msg_2"))
    reader = ClaudeTranscripts(claude_dir, {})
    first = reader.scan(NOW, paths=[str(one), str(claude_dir / "elsewhere.jsonl"), "/etc/passwd"])
    assert ([r.dedupe_key for r in first.records], set(reader.offsets)) == ([f"msg_1:{REQ}"], {str(one)})
    assert first.touched == {str(one)}
    one.unlink()
    gone = reader.scan(NOW, paths=[str(one)])
    assert (gone.records, gone.forgotten, set(reader.offsets)) == ([], {str(one)}, set())
    assert [r.dedupe_key for r in reader.scan(NOW).records] == [f"msg_2:{REQ}"]  # a full listing finds the rest


def test_batches_hand_out_whole_files_and_add_up_to_one_scan(claude_dir: Path) -> None:
    for n in range(5):
        append(transcript(claude_dir, f"s{n}"), *(claude_line(mid=f"msg_{n}_{i}") for i in range(3)))
    whole = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    parts = list(ClaudeTranscripts(claude_dir, {}).batches(NOW, batch_records=4))
    assert [len(p.records) for p in parts] == [6, 6, 3]
    assert [r for p in parts for r in p.records] == whole.records
    assert set().union(*(p.touched for p in parts)) == whole.touched


# -- a first read of many files is parsed in other processes, with the outcome of one reader ----------------------


def _many_files(claude_dir: Path) -> list[Path]:
    """Files whose order matters to de-duplication: copies across files, a sidechain replay, a larger copy later,
    lines without a message id, garbled lines, a partial last line, a nested sub-agent file."""
    paths = [transcript(claude_dir, f"s{n}") for n in range(6)]
    append(paths[0], claude_line(mid="msg_a", usage=tokens(4, 10)), claude_line(mid="msg_b"), b"not json\n")
    append(paths[1], claude_line(mid="msg_a", usage=tokens(4, 99)), claude_line(mid=None), user_line())
    append(paths[2], claude_line(mid="msg_b", rid="req_side", sidechain=True, usage=tokens(4, 900)))
    append(paths[3], claude_line(mid="msg_c", ts="yesterday"), claude_line(mid="msg_d"), claude_line(mid=None))
    append(paths[4], *(claude_line(mid=f"msg_e{i}") for i in range(5)), claude_line(mid="msg_f")[:40])  # cut off
    append(paths[5], claude_line(mid="msg_a", usage=tokens(4, 50)), claude_line(mid="msg_g", costUSD=None))
    nested = claude_dir / "projects" / PROJECT / "s6" / "subagents" / "agent-1.jsonl"
    append(nested, claude_line(mid="msg_h", session=None), claude_line(mid="msg_b", sidechain=True))
    return [*paths, nested]


def _outcome(parts: list[IngestResult]) -> tuple[Any, ...]:
    return (
        [r for p in parts for r in p.records],
        [len(p.records) for p in parts],
        sum(p.garbled_lines for p in parts),
        sum(p.bytes_read for p in parts),
        sum(p.files_read for p in parts),
        [p.saved for p in parts],
        [p.forgotten for p in parts],
    )


def test_files_parsed_in_other_processes_give_what_one_reader_gives(
    claude_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _many_files(claude_dir)
    monkeypatch.setattr(usage_files, "_parsing_processes", lambda: 2)  # even on a one-core machine
    monkeypatch.setattr(usage_files, "PARALLEL_TASK_FILES", 2)  # several tasks, taken back in order
    alone, pooled = ClaudeTranscripts(claude_dir, {}), ClaudeTranscripts(claude_dir, {})
    alone.parallel_min_bytes, pooled.parallel_min_bytes = 1 << 40, 0
    adopted: list[Path] = []
    adopt = pooled._adopt
    monkeypatch.setattr(pooled, "_adopt", lambda path, parsed, out: adopted.append(path) or adopt(path, parsed, out))
    expected = _outcome(list(alone.batches(NOW, batch_records=3)))
    assert _outcome(list(pooled.batches(NOW, batch_records=3))) == expected
    assert sorted(adopted) == sorted(paths) and alone.offsets == pooled.offsets
    assert expected[2] == 2 and len(expected[0]) == 11  # the corpus is what it claims: garbled lines, records
    # From the offsets on, in the processes too: the partial line completed, a file appended to, one rewritten.
    append(paths[4], claude_line(mid="msg_f")[40:], claude_line(mid="msg_b", rid="req_new"))
    append(paths[0], claude_line(mid="msg_a", usage=tokens(4, 500)))
    paths[3].write_bytes(claude_line(mid="msg_z"))
    paths[1].unlink()
    adopted.clear()
    expected = _outcome(list(alone.batches(NOW, batch_records=3)))
    assert _outcome(list(pooled.batches(NOW, batch_records=3))) == expected
    assert len(adopted) == len(paths) - 1 and alone.offsets == pooled.offsets
    assert [r.dedupe_key for r in expected[0]] == [f"msg_a:{REQ}+{4 + 500}", "msg_z:" + REQ,
                                                   "msg_f:" + REQ, "msg_b:req_new"]  # fmt: skip


class InPlacePool:
    """Stands in for the parsing processes' ProcessPoolExecutor: each task runs (`run`) as it is submitted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.tasks = 0

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        self.tasks += 1
        done: Future[Any] = Future()
        try:
            done.set_result(self.run(fn, *args))
        except BrokenProcessPool as e:
            done.set_exception(e)
        return done

    def run(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def shutdown(self, **kwargs: Any) -> None:
        pass


def parse_in(monkeypatch: pytest.MonkeyPatch, pool: type[InPlacePool]) -> None:
    """Two parsing processes, a task every two files, in `pool`."""
    monkeypatch.setattr(usage_files, "_parsing_processes", lambda: 2)
    monkeypatch.setattr(usage_files, "PARALLEL_TASK_FILES", 2)
    monkeypatch.setattr(usage_files, "ProcessPoolExecutor", pool)


def test_when_the_parsing_processes_fail_the_rest_is_read_in_the_daemon(
    claude_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _many_files(claude_dir)
    expected = _outcome(list(ClaudeTranscripts(claude_dir, {}).batches(NOW, batch_records=3)))

    class DiesAfterOneTask(InPlacePool):
        """The first task parsed (here, inline), then a process dies: the pool is broken."""

        def run(self, fn: Any, *args: Any) -> Any:
            if self.tasks > 1:
                raise BrokenProcessPool("a parsing process died")
            return fn(*args)

    parse_in(monkeypatch, DiesAfterOneTask)
    reader = ClaudeTranscripts(claude_dir, {})
    reader.parallel_min_bytes = 0
    assert _outcome(list(reader.batches(NOW, batch_records=3))) == expected
    assert "reading the rest in the daemon" in caplog.text


def test_the_parsing_processes_get_their_first_task_before_every_file_is_looked_at(
    claude_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawned process takes a while to start: it starts on the first files while the rest are stat'ed."""
    paths = _many_files(claude_dir)
    expected = _outcome(list(ClaudeTranscripts(claude_dir, {}).batches(NOW, batch_records=3)))
    reader = ClaudeTranscripts(claude_dir, {})
    looked_at: list[Path] = []
    unread = reader._unread
    monkeypatch.setattr(reader, "_unread", lambda path: looked_at.append(path) or unread(path))
    at_submit: list[int] = []

    class Counting(InPlacePool):
        def run(self, fn: Any, *args: Any) -> Any:
            at_submit.append(len(looked_at))
            return fn(*args)

    parse_in(monkeypatch, Counting)
    reader.parallel_min_bytes = 1
    assert _outcome(list(reader.batches(NOW, batch_records=3))) == expected
    assert at_submit[0] == 3 < len(paths)  # two files and the one that begins the next task
    assert sorted(looked_at) == sorted(paths)


def test_a_parsing_process_sends_a_model_and_a_session_once_per_task(claude_dir: Path) -> None:
    """Decoded anew on every line, they are sent as one string each: fewer bytes to pickle and fewer to keep."""
    first, second = transcript(claude_dir, "s1"), transcript(claude_dir, "s2")
    append(first, claude_line(mid="msg_1"), claude_line(mid="msg_2"))
    append(second, claude_line(mid="msg_3"))
    parsed = usage_files._parse_files(usage_files._ClaudeCollector, claude_dir, [(str(first), None),
                                                                                 (str(second), None)], NOW)  # fmt: skip
    entries = [entry for file in parsed for entry in file.entries]
    assert len(entries) == 3
    for field in (3, 4):  # model, session id
        assert len({id(entry[field]) for entry in entries}) == 1 and entries[0][field]


# -- the fast decoder decides nothing json would decide otherwise ------------------------------------------------


def _spliced(field: bytes, value: bytes) -> bytes:
    """claude_line() with `"<field>":<value>` spliced in as raw bytes (json.dumps cannot write most of these)."""
    line = claude_line()
    at = line.index(b'"' + field + b'":') + len(field) + 3
    return line[:at] + value + line[line.index(b",", at) :]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"cwd", b"NaN"),  # json's extensions, which msgspec (and orjson) reject
        (b"cwd", b"Infinity"),
        (b"cwd", b"-Infinity"),
        (b"cwd", b"1e400"),  # json: inf; msgspec: out of range
        (b"cwd", b'"\\ud800"'),  # a lone surrogate, escaped
        (b"cwd", b'"\xed\xa0\x80"'),  # the same surrogate, UTF-8-encoded: json decodes bytes with surrogatepass
        (b"gitBranch", b'"\\udfff\\ud800"'),
    ],
)
def test_what_json_accepts_and_the_fast_decoder_rejects_is_still_read(
    claude_dir: Path, field: bytes, value: bytes
) -> None:
    line = _spliced(field, value)
    json.loads(line)  # the premise: json accepts it
    append(transcript(claude_dir), line)
    result = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    assert ([r.dedupe_key for r in result.records], result.garbled_lines) == ([f"{MSG}:{REQ}"], 0)


def test_integers_past_64_bits_count_as_json_reads_them(claude_dir: Path) -> None:
    """orjson would decode 2**70 as a float (which _count treats as no count); json and msgspec keep the int."""
    append(transcript(claude_dir), claude_line(usage=tokens(out=2**70)))
    result = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    assert [r.usage.output_tokens for r in result.records] == [2**70]


@pytest.mark.parametrize(
    "value",
    [b'"\xff"', b'"\xed\xa0"', b'"a\x01b"', b"nan", b"+1", b"01", b'"\\x"'],
    ids=["invalid-utf8", "truncated-utf8", "control-char", "lowercase-nan", "plus", "leading-zero", "bad-escape"],
)
def test_what_both_decoders_reject_is_garbled(claude_dir: Path, value: bytes) -> None:
    line = _spliced(b"cwd", value)
    with pytest.raises(ValueError):
        json.loads(line)
    append(transcript(claude_dir), line)
    result = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    assert (result.records, result.garbled_lines) == ([], 1)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_the_fast_decoder_gives_what_json_gives(value: Any) -> None:
    data = json.dumps({"v": value}).encode()  # NaN, Infinity and lone surrogates included
    assert repr(_decode(data)) == repr(json.loads(data))  # repr: NaN != NaN, and -0.0 == 0.0


# -- a buffer decoded at once gives what its lines read one by one give ------------------------------------------

LINE_KINDS = [
    claude_line(mid="msg_1"),
    claude_line(mid="msg_1", ts="2025-09-09T21:51:19.000Z"),  # a copy
    claude_line(mid="msg_1", usage=tokens(4, 50)),  # a larger one
    claude_line(mid="msg_2", sidechain=True, rid="req_side"),
    claude_line(mid=None),
    claude_line(mid="msg_3", ts="yesterday"),
    claude_line(mid="msg_4", costUSD=None),
    claude_line(mid="msg_5", version="2.0"),
    claude_line(mid="msg_6").replace(b'"usage":', b'"us\\u0061ge":'),  # a usage object the marker does not spell
    claude_line(mid="msg_7").replace(b'"cwd":"/Users', b'"cwd":"\xff/Users'),  # json refuses the bytes
    claude_line(mid="msg_8").replace(b'"gitBranch":"master"', b'"gitBranch":NaN'),  # json's extension
    claude_line(mid="msg_9").replace(b"\n", b"\r\n"),
    b"  " + claude_line(mid="msg_10"),
    claude_line(mid="msg_11").rstrip(b"\n") + claude_line(mid="msg_12"),  # two objects on one line
    claude_line(mid="msg_13").replace(b'"message":{', b'"message":"text","m":{'),  # a message that is no object
    user_line(),
    user_line("caf\u00e9 \u2028 \U0001f600"),
    b"\n",
    b" \t\r\n",
    b"not json\n",
    b"[1, 2]\n",
    b"\x00\x00\n",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LINE_KINDS), max_size=12))
def test_a_buffer_decoded_at_once_gives_what_its_lines_read_one_by_one_give(tmp_path_factory: Any, lines: list) -> None:
    claude_dir = tmp_path_factory.mktemp("claude")
    append(transcript(claude_dir), *lines)
    at_once = ClaudeTranscripts(claude_dir, {}).scan(NOW)
    one_by_one = ClaudeTranscripts(claude_dir, {})
    one_by_one._decoded_at_once = lambda *args: False  # type: ignore[method-assign]
    expected = one_by_one.scan(NOW)
    assert (at_once.records, at_once.garbled_lines) == (expected.records, expected.garbled_lines)


def test_the_buffer_is_decoded_at_once_when_it_can_be(claude_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    append(transcript(claude_dir), claude_line(mid="msg_1"), user_line("caf\u00e9"), claude_line(mid="msg_2"), b"\n")
    monkeypatch.setattr(ClaudeTranscripts, "_marked", lambda *args: pytest.fail("read line by line"))
    assert len(ClaudeTranscripts(claude_dir, {}).scan(NOW).records) == 2
