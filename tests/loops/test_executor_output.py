"""What a run's log holds of its command's output."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fleetd.records.run import Attempt, Run
from fleetd.store.attempts import AttemptStore
from fleetd.store.db import Database
from fleetd.store.runs import RunStore
from fleetd.timefmt import now_utc
from tests.loops.executors import added_loop, command_executor


async def _run_to_end(tmp_path: Path, command: str) -> tuple[Run, list[Attempt], bytes]:
    """A command loop's manual run, to its recorded end: the run, its attempts, its log."""
    db = await Database.open(tmp_path / "f.db")
    try:
        now = now_utc()
        loop = await added_loop(db, "out", now, command=command)
        ex = command_executor(db, tmp_path, "out")
        run = await ex.fire(loop, "manual", now)
        assert run is not None
        assert await ex.wait_idle(10)
        attempts = await AttemptStore(db).for_run(run.id)
        return await RunStore(db).get(run.id), attempts, (tmp_path / f"{run.id}.log").read_bytes()
    finally:
        await db.close()


async def _run_command(tmp_path: Path, command: str) -> tuple[str, bytes]:
    run, _, text = await _run_to_end(tmp_path, command)
    return run.status, text


def test_a_commands_stdout_and_stderr_are_logged_in_the_order_it_wrote_them(tmp_path: Path) -> None:
    """The command backend reads neither stream apart: they share one pipe, so the log is the terminal's view."""
    lines = [f"{stream} {i}" for i in range(20) for stream in ("out", "err")]
    script = "; ".join(f"echo '{line}'" + (" >&2" if line.startswith("err") else "") for line in lines)
    status, log = asyncio.run(_run_command(tmp_path, script))
    assert status == "succeeded"
    assert log.decode().splitlines() == lines


def test_output_that_its_parser_fails_on_ends_the_attempt_failed(tmp_path: Path, monkeypatch: Any) -> None:
    """A parser raising on output it did not expect failed the run but left its attempt `running` for ever; the
    child is gone by then, so the attempt ends, failed, saying why."""
    from fleetd.backends.command import CommandAdapter

    def broken(*args: object) -> None:
        raise ValueError("unexpected output")

    monkeypatch.setattr(CommandAdapter, "interpret", broken)

    run, attempts, _ = asyncio.run(_run_to_end(tmp_path, "echo hi"))
    assert run.status == "failed" and run.error == "fleetd could not read its output: ValueError: unexpected output"
    (attempt,) = attempts
    assert attempt.outcome == "failed" and attempt.finished_at is not None


def test_a_live_failure_watch_that_raises_stops_watching_not_reading(tmp_path: Path, monkeypatch: Any) -> None:
    """`live_failure` must never raise; one that did abandoned the stream (the rest of the output lost, the
    child's writes a broken pipe), then failed the run and left its attempt `running` for ever. The watch
    is given up instead: the output is read to its end and the run keeps its command's own end."""
    from fleetd.backends.command import CommandAdapter

    def broken(self: object, line: str) -> None:
        raise ValueError("a bug in the watch")

    monkeypatch.setattr(CommandAdapter, "end_on_live_failure", True)
    monkeypatch.setattr(CommandAdapter, "live_failure", broken)

    run, attempts, log = asyncio.run(_run_to_end(tmp_path, "for i in 1 2 3; do echo line $i; done"))
    assert run.status == "succeeded", run.error
    assert log.decode().splitlines() == ["line 1", "line 2", "line 3"]
    (attempt,) = attempts
    assert attempt.outcome == "succeeded" and attempt.finished_at is not None


def test_fleetd_failing_inside_a_started_attempt_ends_the_attempt_failed(tmp_path: Path, monkeypatch: Any) -> None:
    """fleetd's own failure after a child started (here: reading what the child left) failed the run but left
    its attempt `running` for ever; the attempt ends failed too, saying why."""
    from fleetd.loops import child

    def broken(self: object) -> None:
        raise RuntimeError("fleetd's own bug")

    monkeypatch.setattr(child.Child, "check", broken)
    _ended_by_its_own_bug(tmp_path, "echo hi")


def _ended_by_its_own_bug(tmp_path: Path, command: str) -> None:
    """A command loop's run in which fleetd's own bug (patched in by the caller) raised: it failed saying so, and so
    did its attempt, which is not left `running`."""
    run, attempts, _ = asyncio.run(_run_to_end(tmp_path, command))
    assert run.status == "failed" and run.error is not None and "fleetd's own bug" in run.error
    (attempt,) = attempts
    assert attempt.outcome == "failed" and attempt.finished_at is not None
    assert attempt.error == "fleetd could not run it: RuntimeError: fleetd's own bug"


def test_fleetd_failing_while_its_child_runs_leaves_no_process_behind(tmp_path: Path, monkeypatch: Any) -> None:
    """An exception while the child ran went up through the run, which failed, and left the child running with
    nobody to stop it (and its attempt `running`). Its process tree is killed and its attempt ended."""
    import pytest

    from fleetd.loops import cgroups

    if cgroups.base_dir() is None:
        pytest.skip("no cgroup subtree here: the failure is injected into the child's cgroup check")

    pid_file = tmp_path / "pid"

    def broken(cgroup: Path, pid: int) -> bool:
        _wait_for_file(pid_file)
        raise OSError("cannot read cgroup.procs")

    monkeypatch.setattr(cgroups, "member_or_join", broken)
    _fails_and_kills_its_child(tmp_path, pid_file, "cannot read cgroup.procs")


def _fails_and_kills_its_child(tmp_path: Path, pid_file: Path, message: str) -> tuple[Run, int]:
    """A run whose child would sleep 30 s, in which fleetd fails (`message`): it ends within seconds, failed saying
    so, its attempt ended failed too, and its child is gone. The run and the child's pid."""
    started = now_utc()
    run, attempts, _ = asyncio.run(_run_to_end(tmp_path, f"echo $$ > {pid_file}; exec sleep 30"))
    assert (now_utc() - started).total_seconds() < 10  # not the sleep's 30 s: the child was killed
    assert run.status == "failed" and run.error is not None and message in run.error
    (attempt,) = attempts
    assert attempt.outcome == "failed" and attempt.finished_at is not None
    pid = int(pid_file.read_text())
    assert _state(pid) == "gone", f"the run's child {pid} is still there ({_state(pid)})"
    return run, pid


def _wait_for_file(path: Path) -> None:
    """Until the child has written `path` (it is under way), at most 5 s: blocking, from inside the daemon's code."""
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _state(pid: int) -> str:
    """A process's state letter (Z: a zombie nobody reaped), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_fleetd_failing_as_it_takes_over_a_started_child_leaves_no_process_behind(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The child started, then fleetd could not take it over (here: no thread left to wait for its exit, where
    there is no pidfd): the run failed with no attempt recorded, and its child ran on with nobody to stop it,
    an agent spending its quota unwatched. It is killed, and its attempt recorded, failed."""
    from fleetd.loops import child

    pid_file = tmp_path / "pid"

    def broken(self: object) -> None:
        _wait_for_file(pid_file)
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(child.Child, "_watch_exit", broken)
    run, pid = _fails_and_kills_its_child(tmp_path, pid_file, "can't start new thread")
    assert run.pid == pid  # recorded as any attempt's process is (crash recovery would find it)


def test_a_run_log_that_cannot_be_written_for_a_while_loses_that_output_not_the_run(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Disk full (or EIO, a quota) under a live run: the write's OSError failed the run ('fleetd could not run it')
    though its command went on to exit 0, and left its attempt `running` for ever. The output meanwhile is lost,
    the log says how much, and the run keeps its own end."""
    import errno

    from fleetd.loops import runlog

    real = runlog._write_at
    failing = {"left": 1}

    def full_once(fd: int, data: bytes, offset: int) -> None:
        if failing["left"] and data == b"first\n":
            failing["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(runlog, "_write_at", full_once)

    run, attempts, text = asyncio.run(_run_to_end(tmp_path, "echo first; sleep 0.3; echo second"))
    assert (run.status, run.exit_code) == ("succeeded", 0), text
    assert len(attempts) == 1 and attempts[0].finished_at is not None
    assert text == b"[fleetd] 6 bytes of output lost: cannot write the run log: No space left on device\nsecond\n"


def test_fleetd_failing_as_it_writes_up_an_attempt_ends_the_attempt_failed(tmp_path: Path, monkeypatch: Any) -> None:
    """fleetd's own failure after the child had ended, as it wrote the attempt up (the run's error text here),
    failed the run but left its attempt `running` for ever: `runs show` listed it as under way."""
    from fleetd.loops import executor

    def broken(*args: object) -> str:
        raise RuntimeError("fleetd's own bug")

    monkeypatch.setattr(executor, "_describe", broken)
    _ended_by_its_own_bug(tmp_path, "exit 3")


def test_an_attempt_fleetd_fails_to_write_up_keeps_what_it_cost(tmp_path: Path, monkeypatch: Any) -> None:
    """Its end was written with no usage and no cost: the spend dropped out of every budget."""
    from fleetd.backends.command import CommandAdapter
    from fleetd.loops import executor
    from fleetd.records.result import ParsedOutput, TokenUsage

    def costly(*args: object) -> ParsedOutput:
        return ParsedOutput("failed", "unknown", message="no", usage=TokenUsage(input_tokens=1200), cost_usd=0.42)

    def broken(*args: object) -> str:
        raise RuntimeError("fleetd's own bug")

    monkeypatch.setattr(CommandAdapter, "interpret", costly)
    monkeypatch.setattr(executor, "_describe", broken)
    _, attempts, _ = asyncio.run(_run_to_end(tmp_path, "exit 3"))
    (attempt,) = attempts
    assert attempt.outcome == "failed" and attempt.finished_at is not None
    assert (attempt.cost_usd, attempt.input_tokens) == (0.42, 1200)


def test_a_scrubber_failing_as_an_attempt_is_written_up_ends_it_failed_saying_nothing_unscrubbed(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The scrubber itself failing left the attempt `running` (and its end's message could not be scrubbed)."""
    from fleetd.loops.scrub import Scrubber

    def broken(self: object, value: object) -> object:
        raise RuntimeError("the scrubber's own bug")

    monkeypatch.setattr(Scrubber, "record", broken)

    run, attempts, _ = asyncio.run(_run_to_end(tmp_path, "echo hi"))
    assert run.status == "failed"
    (attempt,) = attempts
    assert attempt.outcome == "failed" and attempt.finished_at is not None
    assert attempt.error == "fleetd could not run it"


async def _fired_with_prompt_file(tmp_path: Path, prompt: Path) -> tuple[Run, bytes]:
    """A scheduled run of a command loop reading `prompt`, to its end: the run and its log."""
    db = await Database.open(tmp_path / "f.db")
    try:
        now = now_utc()
        loop = await added_loop(db, "prompted", now, command="cat", prompt_file=str(prompt))
        ex = command_executor(db, tmp_path, "prompted")
        run = await ex.fire(loop, "schedule", now)
        assert run is not None
        assert await ex.wait_idle(10)
        return await RunStore(db).get(run.id), (tmp_path / f"{run.id}.log").read_bytes()
    finally:
        await db.close()


def test_a_run_whose_prompt_file_is_gone_fails_saying_so_as_doctor_does(tmp_path: Path) -> None:
    """The log had Python's "[Errno 2] No such file or directory"; it says what `fleetd doctor` says."""
    gone = tmp_path / "prompt.md"
    run, log = asyncio.run(_fired_with_prompt_file(tmp_path, gone))
    assert (run.status, run.error) == ("failed", f"prompt file not found: {gone}")
    assert log == f"[fleetd] prompt file not found: {gone}\n".encode()


def test_a_run_whose_prompt_file_grew_too_big_to_pass_fails_saying_so(tmp_path: Path) -> None:
    """Not "Argument list too long" from the spawn: the size and the limit."""
    prompt = tmp_path / "prompt.md"
    prompt.write_text("p" * 132_000)
    run, _ = asyncio.run(_fired_with_prompt_file(tmp_path, prompt))
    assert run.status == "failed" and run.error is not None
    assert "prompt file" in run.error and "132,000 bytes" in run.error, run.error
    assert "Argument list too long" not in run.error
