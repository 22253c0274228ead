"""A run's child as the event loop drives it (`loops/child`): its output as it comes, stdin fed whole, its
exit status as asyncio would say it, and its exit seen even while a leftover holds its output open."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from fleetd.loops import child


async def _run(
    argv: list[str], data: bytes | None = b"", merge: bool = False, cwd: str | None = None
) -> tuple[int, bytes, bytes]:
    out, err = bytearray(), bytearray()
    started = await asyncio.to_thread(
        child.start, argv, env=dict(os.environ), cwd=cwd, stdin=data is not None, merge_stderr=merge, cgroup=None
    )
    proc = child.Child(started, data or b"", out.extend, None if merge else err.extend)
    code = await asyncio.wait_for(asyncio.shield(proc.exited), 10)
    await asyncio.wait_for(asyncio.shield(proc.output_closed), 10)
    proc.close()
    assert proc.returncode == code
    return code, bytes(out), bytes(err)


def test_output_stdin_and_exit_status(tmp_path: Path) -> None:
    big = b"x" * (1024 * 1024) + b"\n"  # more than a pipe holds: fed as the child reads it
    code, out, err = asyncio.run(_run(["/bin/sh", "-c", "wc -c; pwd; echo oops >&2; exit 3"], big, cwd=str(tmp_path)))
    assert code == 3
    assert out.split() == [str(len(big)).encode(), str(tmp_path).encode()]
    assert err == b"oops\n"
    assert asyncio.run(_run(["/bin/sh", "-c", "echo a; echo b >&2"], None, merge=True))[1] == b"a\nb\n"


def test_a_signal_is_a_negative_status_as_asyncio_says_it() -> None:
    assert asyncio.run(_run(["/bin/sh", "-c", "kill -9 $$"]))[0] == -9


def test_a_child_that_stops_reading_its_stdin_is_not_an_error() -> None:
    code, out, _ = asyncio.run(_run(["/bin/sh", "-c", "exec 0<&-; echo done"], b"y" * (1024 * 1024)))
    assert (code, out) == (0, b"done\n")


def test_the_exit_is_seen_while_a_leftover_still_holds_the_output_open() -> None:
    async def go() -> tuple[int, bool]:
        started = await asyncio.to_thread(
            child.start, ["/bin/sh", "-c", "sleep 30 & echo $!"], env=dict(os.environ), cwd=None, stdin=True,
            merge_stderr=False, cgroup=None,
        )  # fmt: skip
        out = bytearray()
        proc = child.Child(started, b"", out.extend, None)
        code = await asyncio.wait_for(asyncio.shield(proc.exited), 10)
        still_open = not proc.output_closed.done()
        os.kill(int(out.split()[0]), 9)
        await asyncio.wait_for(asyncio.shield(proc.output_closed), 10)
        proc.close()
        return code, still_open

    assert asyncio.run(go()) == (0, True)


def test_a_missing_program_cannot_start() -> None:
    async def go() -> None:
        await asyncio.to_thread(
            child.start, ["no-such-program-here"], env={"PATH": "/nonexistent"}, cwd=None, stdin=True,
            merge_stderr=False, cgroup=None,
        )  # fmt: skip

    with pytest.raises(FileNotFoundError):
        asyncio.run(go())


def test_no_descriptor_is_left_behind() -> None:
    before = len(os.listdir("/proc/self/fd")) if sys.platform.startswith("linux") else 0
    for _ in range(5):
        asyncio.run(_run(["/bin/sh", "-c", "echo hi"]))
    if sys.platform.startswith("linux"):
        assert len(os.listdir("/proc/self/fd")) <= before


def test_a_child_whose_set_up_fails_leaves_none_of_its_descriptors_open() -> None:
    """`Child` failing part way (no room in epoll for its exit's pidfd) left that pidfd open, and its caller has no
    handle on it: one descriptor lost per such attempt, until the daemon had none left."""

    async def go() -> tuple[int, int]:
        before = len(os.listdir("/proc/self/fd"))
        started = await asyncio.to_thread(
            child.start, ["/bin/sh", "-c", "sleep 5"], env=dict(os.environ), cwd=None, stdin=True, merge_stderr=False,
            cgroup=None,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        pipes = {started.stdin, started.stdout, started.stderr}
        real = loop.add_reader

        def no_room(fd: int, *args: object) -> None:
            if fd not in pipes:  # the pidfd
                raise OSError(28, "No space left on device")
            real(fd, *args)  # type: ignore[arg-type]

        loop.add_reader = no_room  # type: ignore[method-assign]
        try:
            with pytest.raises(OSError):
                child.Child(started, b"", lambda _: None, lambda _: None)
        finally:
            loop.add_reader = real  # type: ignore[method-assign]
        started.popen.kill()
        await asyncio.to_thread(started.popen.wait)
        return before, len(os.listdir("/proc/self/fd"))

    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd here: the exit is waited for by a thread")
    before, after = asyncio.run(go())
    assert after == before
