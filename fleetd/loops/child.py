"""A run's child process, driven by the event loop itself: started in a worker thread, its output pipes
read by selector callbacks, its exit seen through a pidfd.

Why not `asyncio.create_subprocess_exec`: it forks on the event loop's thread, which then stands still
until the child has exec'd (vfork: a millisecond or more on a busy host, for every run), and per child it
builds a transport, a protocol and a StreamReader per pipe and a child watcher registration, in six to
eight turns of the loop before the caller resumes; each stream then needs a task to read it. Here
`start` runs Popen (whose vfork releases the GIL: `os.posix_spawn` holds it, stalling every thread) in a
worker thread, and `Child` is the pipes' ends, one selector reader per output pipe whose callback hands
the bytes on (no task, no buffer in between), and one more reader on a pidfd (Linux >= 5.3) for the
exit; without pidfds a thread per child waits for it, as asyncio's ThreadedChildWatcher does.

Invariant: the child is reaped here and only here (its pid is never handed to a child watcher or to
psutil's wait), so its pid cannot be reused while the pidfd or a `kill` may still name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetd.loops import cgroups

Sink = Callable[[bytes], None]
READ_SIZE = 65536


@dataclass
class Started:
    """A child `start` made: its pid and the parent's ends of its pipes, non-blocking (stdin None: /dev/null;
    stderr None: merged into stdout)."""

    pid: int
    popen: subprocess.Popen[bytes]
    stdin: int | None
    stdout: int
    stderr: int | None


def start(
    argv: list[str], *, env: dict[str, str], cwd: str | None, stdin: bool, merge_stderr: bool, cgroup: Path | None
) -> Started:
    """Start `argv` in a session of its own, in `cwd`, with `env` (and inside `cgroup` before the command
    runs, `cgroups.join_argv`). Blocking: run it in a worker thread, then hand it to `Child` on the event
    loop. Raises FileNotFoundError / OSError when it cannot be started."""
    if cgroup is not None:
        argv = cgroups.join_argv(cgroup, argv)
    made: list[int] = []  # every descriptor made here: on failure all are closed

    def pipe() -> tuple[int, int]:
        ends = os.pipe()
        made.extend(ends)
        return ends

    try:
        in_r, in_w = pipe() if stdin else (subprocess.DEVNULL, None)
        out_r, out_w = pipe()
        err_r, err_w = (None, subprocess.STDOUT) if merge_stderr else pipe()
        proc = subprocess.Popen(argv, stdin=in_r, stdout=out_w, stderr=err_w, cwd=cwd, env=env,
                                start_new_session=True)  # fmt: skip
    except BaseException:
        for fd in made:
            os.close(fd)
        raise
    for fd in (in_r, out_w, err_w):
        if fd in made:
            os.close(fd)  # the child's ends: its own copies are all it needs
    # Ours are made non-blocking here, in the caller's thread, not by `Child` on the event loop: two fcntl
    # calls per pipe. The child's ends are other open file descriptions: they stay blocking.
    for fd in (in_w, out_r, err_r):
        if fd is not None:
            os.set_blocking(fd, False)
    return Started(proc.pid, proc, in_w, out_r, err_r)


class Child:
    """A started child, driven by the event loop: `pid`, `exited` (its exit status: negative for a signal,
    as asyncio and Popen say it) and `output_closed` (every output pipe at its end, or abandoned by
    `close`). Made on the event loop's thread."""

    def __init__(self, started: Started, data: bytes, stdout: Sink, stderr: Sink | None) -> None:
        loop = asyncio.get_running_loop()
        self.pid = started.pid
        self.returncode: int | None = None
        self.exited: asyncio.Future[int] = loop.create_future()
        self.output_closed: asyncio.Future[None] = loop.create_future()
        self.error: BaseException | None = None  # a sink's failure: that stream was abandoned
        self._loop = loop
        self._popen = started.popen  # told the exit status, so that it never waits for the child itself
        self._open: dict[int, Sink] = {}
        self._stdin = started.stdin
        self._rest = memoryview(data)
        self._writing = False  # a writer callback is registered for stdin
        outputs = [(started.stdout, stdout)]
        if started.stderr is not None:
            outputs.append((started.stderr, stderr or stdout))
        try:
            for fd, sink in outputs:
                self._open[fd] = sink
                loop.add_reader(fd, self._readable, fd)
            if self._stdin is not None and self._write_stdin():
                self._writing = True
                loop.add_writer(self._stdin, self._write_stdin)
            self._watch_exit()
        except BaseException:
            # Nothing watches the child then: the caller kills and reaps it. Every pipe end of ours is closed.
            for fd, _ in outputs:
                self._open.setdefault(fd, stdout)
            self.close()
            raise

    # Output.

    def _readable(self, fd: int) -> None:
        try:
            chunk = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""  # as the end of the stream: nothing more can come from it
        if not chunk:
            self._end(fd)
            return
        try:
            self._open[fd](chunk)
        except Exception as e:  # the caller's to see (`check`); the other stream and the exit go on
            self.error = self.error or e
            self._end(fd)

    def _end(self, fd: int) -> None:
        if self._open.pop(fd, None) is None:
            return
        self._loop.remove_reader(fd)
        os.close(fd)
        if not self._open and not self.output_closed.done():
            self.output_closed.set_result(None)

    def close(self) -> None:
        """Stop reading (what a leftover still holds open is abandoned) and stop feeding stdin."""
        for fd in list(self._open):
            self._end(fd)
        self._close_stdin()

    def check(self) -> None:
        """Raise what a sink raised, if it did."""
        if self.error is not None:
            raise self.error

    # Input.

    def _write_stdin(self) -> bool:
        """Write what the pipe takes now; True while some is left (the writer callback calls again)."""
        assert self._stdin is not None
        try:
            while self._rest:
                written = os.write(self._stdin, self._rest)
                self._rest = self._rest[written:]
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # the child closed its stdin or exited (BrokenPipe): it wants no more
            pass
        self._close_stdin()
        return False

    def _close_stdin(self) -> None:
        if self._stdin is None:
            return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._stdin)
        os.close(self._stdin)
        self._stdin, self._rest = None, memoryview(b"")

    # Exit.

    def _watch_exit(self) -> None:
        pidfd = None
        with contextlib.suppress(AttributeError, OSError):  # pidfd: Linux >= 5.3
            pidfd = os.pidfd_open(self.pid)
        if pidfd is None:
            threading.Thread(target=self._wait_thread, name=f"child-{self.pid}", daemon=True).start()
            return
        try:
            self._loop.add_reader(pidfd, self._pidfd_readable, pidfd)
        except BaseException:
            os.close(pidfd)
            raise

    def _pidfd_readable(self, pidfd: int) -> None:
        code = _reap(self.pid, os.WNOHANG)
        if code is None:
            return  # not yet (a spurious wakeup)
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        self._exited(code)

    def _wait_thread(self) -> None:
        code = _reap(self.pid, 0)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(self._exited, 255 if code is None else code)

    def _exited(self, code: int) -> None:
        self.returncode = self._popen.returncode = code
        if not self.exited.done():
            self.exited.set_result(code)


def _reap(pid: int, flags: int) -> int | None:
    """The exit status of `pid` once it has exited (255 when someone else reaped it, as asyncio says);
    None while it runs."""
    try:
        done, status = os.waitpid(pid, flags)
    except ChildProcessError:
        return 255
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)
