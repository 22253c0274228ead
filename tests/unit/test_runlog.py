from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from fleetd.loops.runlog import RunLog


def _drain(log: RunLog, pos: int) -> tuple[bytes, int]:
    out = b""
    while True:
        data, pos = log.read_from(pos)
        if not data:
            return out, pos
        out += data


async def _writes_and_reads(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "r.log", cap=4096)
    log.write(b"a" * 3000)
    early, pos = _drain(log, 0)
    assert early == b"a" * 3000
    # Push well past cap + slack: the file is compacted under the follower.
    for i in range(10):
        log.write(bytes([ord("0") + i]) * 1000)
    assert log.path.stat().st_size <= 4096 + 4096 + 200
    rest, pos = _drain(log, pos)
    assert rest.startswith(b"[fleetd] ") and b"bytes dropped by the output cap" in rest
    assert rest.endswith(b"9" * 1000)
    assert pos == log.end == 13000
    log.close()
    final = log.path.read_bytes()
    header, _, tail = final.partition(b"\n")
    assert header == b"[fleetd] output capped at 4096 bytes: 8904 earlier bytes dropped"
    assert len(tail) == 4096 and tail.endswith(b"9" * 1000) and tail.startswith(b"5" * 96)


def test_cap_keeps_the_tail_and_followers_skip_only_what_was_dropped(tmp_path: Path) -> None:
    asyncio.run(_writes_and_reads(tmp_path))


async def _waits(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "w.log", cap=1 << 20)
    waiter = asyncio.create_task(log.wait_for_more(0, timeout=5))
    await asyncio.sleep(0)
    assert not waiter.done()
    log.write(b"hello")
    await asyncio.wait_for(waiter, 1)
    assert log.read_from(0) == (b"hello", 5)
    log.close()
    await asyncio.wait_for(log.wait_for_more(5, timeout=5), 1)  # closed: returns at once


def test_a_follower_left_mid_line_gets_the_dropped_note_on_a_line_of_its_own(tmp_path: Path) -> None:
    """`runs logs --follow` of `seq 1 300000` with `--output-cap 100k` printed `1277[fleetd] 159744 bytes dropped`:
    the note went on after the partial line the follower had been given."""
    log = RunLog(tmp_path / "m.log", cap=4096)
    log.write(b"1276\n1277")
    data, pos = log.read_from(0)
    assert data == b"1276\n1277"
    log.write(b"".join(b"%d\n" % n for n in range(1278, 9000)))  # compacted far past the follower
    data, _ = log.read_from(pos, mid_line=not data.endswith(b"\n"))
    assert data.startswith(b"\n[fleetd] ") and b" bytes dropped by the output cap\n" in data
    data, _ = log.read_from(pos)  # at a line's start: no empty line
    assert data.startswith(b"[fleetd] ")
    log.close()


def test_followers_wake_on_new_output_and_on_close(tmp_path: Path) -> None:
    asyncio.run(_waits(tmp_path))


def test_small_output_is_untouched(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "s.log", cap=4096)
    log.write(b"x" * 4096)
    log.close()
    assert log.path.read_bytes() == b"x" * 4096


async def _log_deleted_mid_run(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "logs" / "runs" / "0000" / "7.log", cap=1 << 20)
    log.write(b"before\n")
    follower, pos = _drain(log, 0)
    shutil.rmtree(tmp_path / "logs")  # someone cleans up the logs directory while the run writes
    log.write(b"after\n")
    rest, pos = _drain(log, pos)
    log.close()
    text = log.path.read_bytes().decode()
    assert text.startswith("before\n")
    assert "[fleetd] this log file was deleted while the run was writing it: recreated it" in text
    assert text.endswith("after\n")
    assert (follower + rest).decode() == text  # a live reader sees the same, and the note


def test_a_log_deleted_mid_run_is_recreated_with_all_output_and_a_note(tmp_path: Path) -> None:
    asyncio.run(_log_deleted_mid_run(tmp_path))


async def _log_deleted_before_close(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "r" / "1.log", cap=1 << 20)
    log.write(b"only output\n")
    (tmp_path / "r" / "1.log").unlink()
    log.close()
    assert log.path.read_bytes().startswith(b"only output\n")


def test_a_log_deleted_before_the_run_ends_is_recreated_at_close(tmp_path: Path) -> None:
    asyncio.run(_log_deleted_before_close(tmp_path))


async def _notes_at_line_boundaries(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "r.log", cap=1 << 20)
    log.write(b'{"type":"system"}\n{"type":"assis')  # the CLI's chunk ended mid-line
    log.note("rate_limited in the live output")
    log.write(b'tant","text":"hi"}\n{"type":"res')
    log.note("first")
    log.note("second")
    log.write(b'ult"}')
    log.end_line()  # the attempt's output is complete: its unfinished last line is ended, then the notes
    log.note("route: attempt 2: other")  # at a line start: written at once
    log.write(b"plain\n")
    log.close()
    assert log.path.read_bytes().decode().splitlines() == [
        '{"type":"system"}',
        '{"type":"assistant","text":"hi"}',
        "[fleetd] rate_limited in the live output",
        '{"type":"result"}',
        "[fleetd] first",
        "[fleetd] second",
        "[fleetd] route: attempt 2: other",
        "plain",
    ]


def test_fleetd_notes_never_split_a_cli_line(tmp_path: Path) -> None:
    asyncio.run(_notes_at_line_boundaries(tmp_path))


def test_notes_held_for_an_unended_line_are_written_at_close(tmp_path: Path) -> None:
    async def go() -> bytes:
        log = RunLog(tmp_path / "r.log", cap=1 << 20)
        log.write(b"no newline at the end")
        log.note("timed out")
        log.close()
        return log.path.read_bytes()

    assert asyncio.run(go()) == b"no newline at the end\n[fleetd] timed out\n"


def test_a_note_at_a_line_start_adds_no_blank_line(tmp_path: Path) -> None:
    async def go() -> bytes:
        log = RunLog(tmp_path / "r.log", cap=1 << 20)
        log.note("route: attempt 1: a")
        log.write(b"out\n")
        log.note("done")
        log.close()
        return log.path.read_bytes()

    assert asyncio.run(go()) == b"[fleetd] route: attempt 1: a\nout\n[fleetd] done\n"


def test_end_line_owes_the_newline_to_the_next_writer(tmp_path: Path) -> None:
    async def go(tail: bytes | None) -> bytes:
        log = RunLog(tmp_path / "r.log", cap=1 << 20)
        log.write(b"attempt 1 ends mid-line")
        log.end_line()
        if tail is not None:
            log.write(tail)
        log.close()
        return log.path.read_bytes()

    assert asyncio.run(go(None)) == b"attempt 1 ends mid-line"  # a command's output is left as it was
    assert asyncio.run(go(b"attempt 2\n")) == b"attempt 1 ends mid-line\nattempt 2\n"


def test_the_file_is_made_by_whichever_thread_comes_first_and_only_once(tmp_path: Path) -> None:
    """An attempt's launch thread makes the file (off the event loop); a note written before that makes it on
    the caller's thread instead, and the launch thread's later call must not truncate what the note wrote."""
    import threading

    log = RunLog(tmp_path / "logs" / "1.log", cap=1 << 20)
    assert not log.path.exists()  # nothing is made before it is asked for
    log.note("route: attempt 1")
    made = threading.Thread(target=log.create_file)
    made.start()
    made.join()
    log.write(b"out\n")
    log.close()
    assert log.path.read_bytes() == b"[fleetd] route: attempt 1\nout\n"

    early = RunLog(tmp_path / "early.log", cap=1 << 20)
    made = threading.Thread(target=early.create_file)
    made.start()
    made.join()
    assert early.path.exists()
    early.close()
    assert early.path.read_bytes() == b""


def test_a_log_that_cannot_be_made_fails_once_then_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    log = RunLog(tmp_path / "not-a-dir" / "1.log", cap=1 << 20)
    with pytest.raises(NotADirectoryError):
        log.create_file()
    log.write(b"lost\n")  # the run fails for it (`Executor._execute`): its notes must not fail again
    log.note("failed")
    assert log.read_from(0) == (b"", 0)
    log.close()
    assert log.closed


def test_writes_that_fail_lose_only_their_output_and_the_next_that_succeeds_says_how_much(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from fleetd.loops import runlog

    real = runlog._write_at
    full = {"on": False}

    def maybe_full(fd: int, data: bytes, offset: int) -> None:
        if full["on"]:
            real(fd, data[:1], offset)  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(runlog, "_write_at", maybe_full)
    log = RunLog(tmp_path / "r.log", cap=4096)
    log.write(b"kept, then ")
    full["on"] = True
    log.write(b"ab")
    log.write(b"cd\n")  # its note is not counted as output lost
    full["on"] = False
    log.write(b"ef\n")
    log.close()
    assert (tmp_path / "r.log").read_bytes() == (
        b"kept, then \n[fleetd] 5 bytes of output lost: cannot write the run log: No space left on device\nef\n"
    )
