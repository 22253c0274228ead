"""A run's child process, driven by the event loop itself: spawned with posix_spawn, its output pipes read
by selector callbacks, its exit seen through a pidfd.

Why not `asyncio.create_subprocess_exec`: per child it builds a transport, a protocol and a StreamReader
per pipe and registers a child watcher, in six to eight turns of the event loop before the caller
resumes, and each stream then needs a task to read it; `subprocess.Popen` underneath spends four times
posix_spawn's CPU in the parent. Dispatching hundreds of short runs a second, that was most of the
daemon's time. Here a child is its pipes, one selector reader per output pipe whose callback hands the
bytes on (no task, no buffer in between), and one more reader on a pidfd (Linux >= 5.3) for its exit;
without pidfds a thread per child waits for it, as asyncio's ThreadedChildWatcher does.

posix_spawn (through Python 3.12) can neither change directory nor close inherited descriptors: the
child changes directory in the /bin/sh wrapper that also puts it into its cgroup (`wrapped`),
and the descriptors the daemon itself inherited are made close-on-exec before its first child
(`_close_inherited`); every descriptor Python opens is close-on-exec already (PEP 446). Where
posix_spawn cannot start a new session, `subprocess.Popen` does it all instead.

Invariant: the child is reaped here and only here (its pid is never handed to a child watcher or to
psutil's wait), so its pid cannot be reused while the pidfd or a `kill` may still name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetd.loops import cgroups

Sink = Callable[[bytes], None]
READ_SIZE = 65536
# Signals Python ignores for itself that a child must not inherit ignored: what Popen's restore_signals resets.
_RESET = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name))
_CLOSEFROM: int | None = getattr(os, "POSIX_SPAWN_CLOSEFROM", None)
_inherited_closed = False


class Child:
    """A started child: `pid`, `exited` (its exit status: negative for a signal, as asyncio and Popen
    say it) and `output_closed` (every output pipe at its end, or abandoned by `close`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        stdin: int | None,
        outputs: list[tuple[int, Sink]],
        data: bytes,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.exited: asyncio.Future[int] = loop.create_future()
        self.output_closed: asyncio.Future[None] = loop.create_future()
        self.error: BaseException | None = None  # a sink's failure: that stream was abandoned
        self._loop = loop
        self._popen = popen  # the fallback's handle, told the exit status so it does not wait itself
        self._open: dict[int, Sink] = {}
        self._stdin = stdin
        self._rest = memoryview(data)
        for fd, sink in outputs:
            os.set_blocking(fd, False)
            self._open[fd] = sink
            loop.add_reader(fd, self._readable, fd)
        if not self._open:
            self.output_closed.set_result(None)
        self._writing = False  # a writer callback is registered for stdin
        if stdin is not None:
            os.set_blocking(stdin, False)
            if self._write_stdin():
                self._writing = True
                loop.add_writer(stdin, self._write_stdin)
        self._watch_exit()

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
        self._loop.add_reader(pidfd, self._pidfd_readable, pidfd)

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
        self.returncode = code
        if self._popen is not None:
            self._popen.returncode = code
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


def spawn(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    stdin: bytes | None,
    stdout: Sink,
    stderr: Sink | None,
    cgroup: Path | None = None,
) -> Child:
    """Start `argv` in a session of its own, in `cwd`, with `env`; inside `cgroup` (when given) before the
    command runs. `stdin`: written to its stdin, which is then closed (None: /dev/null). Its output goes to
    `stdout(chunk)` and `stderr(chunk)` as it comes (`stderr` None: merged into stdout). Must be called from
    the running event loop. Raises FileNotFoundError / OSError when it cannot be started."""
    loop = asyncio.get_running_loop()
    if not _can_posix_spawn():
        return _popen(loop, argv, env, cwd, stdin, stdout, stderr, cgroup)
    _close_inherited()
    argv = wrapped(argv, env, cwd, cgroup)
    path = _resolve(argv[0], env)
    made: list[int] = []  # every descriptor made here: on failure all are closed

    def pipe() -> tuple[int, int]:
        ends = os.pipe()
        made.extend(ends)
        return ends

    try:
        stdin_ends = pipe() if stdin is not None else None
        out_r, out_w = pipe()
        err_r, err_w = pipe() if stderr is not None else (None, out_w)
        if min(made) <= 2:  # a dup2 onto itself would keep close-on-exec: leave such a start to Popen
            for fd in made:
                os.close(fd)
            made.clear()
            return _popen(loop, argv, env, None, stdin, stdout, stderr, None)
        no_input = (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_DUP2, stdin_ends[0], 0) if stdin_ends else no_input,
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        if _CLOSEFROM is not None:  # Python >= 3.13: nothing else the daemon holds reaches the child
            actions.append((_CLOSEFROM, 3))
        pid = os.posix_spawn(path, argv, env, file_actions=actions, setsid=True, setsigdef=_RESET)
    except BaseException:
        for fd in made:
            os.close(fd)
        raise
    ours = {out_r, err_r, stdin_ends[1] if stdin_ends else None}
    for fd in made:
        if fd not in ours:
            os.close(fd)  # the child's ends: its copies are all it needs
    outputs = [(out_r, stdout)] + ([(err_r, stderr)] if stderr is not None and err_r is not None else [])
    return Child(loop, pid, stdin_ends[1] if stdin_ends else None, outputs, stdin or b"")


def wrapped(argv: list[str], env: dict[str, str], cwd: str | None, cgroup: Path | None) -> list[str]:
    """`argv` behind a /bin/sh wrapper that joins `cgroup` and changes to `cwd` before it execs the command
    (same pid, session and create time); `argv` itself when there is neither. The wrapper leaves the
    command's environment as Popen would have: `cd` sets OLDPWD, which is put back as `env` had it."""
    steps: list[str] = []
    args: list[str] = []
    if cgroup is not None:
        steps.append(cgroups.JOIN_STEP)
        args.append(str(cgroup / "cgroup.procs"))
    if cwd is not None:
        steps.append('cd -- "$1" || exit 127; shift')  # absolute: no CDPATH search, nothing printed
        args.append(os.path.abspath(cwd))
        if "OLDPWD" in env:
            steps.append("OLDPWD=$1; shift")
            args.append(env["OLDPWD"])
        else:
            steps.append("unset OLDPWD")
    if not steps:
        return argv
    return ["/bin/sh", "-c", "; ".join([*steps, 'exec "$@"']), "fleetd-run", *args, *argv]


def _resolve(argv0: str, env: dict[str, str]) -> str:
    """`argv0` as exec would find it: by the child's PATH (posix_spawnp would search the daemon's)."""
    if "/" in argv0:
        return argv0
    found = shutil.which(argv0, path=os.pathsep.join(os.get_exec_path(env)))
    if found is None:
        raise FileNotFoundError(2, "No such file or directory", argv0)
    return found


def _popen(
    loop: asyncio.AbstractEventLoop,
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    stdin: bytes | None,
    stdout: Sink,
    stderr: Sink | None,
    cgroup: Path | None,
) -> Child:
    if cgroup is not None:
        argv = cgroups.join_argv(cgroup, argv)
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr is not None else subprocess.STDOUT, cwd=cwd, env=env,
        start_new_session=True, bufsize=0,
    )  # fmt: skip
    # The Child owns the descriptors from here (the file objects would close them a second time).
    fds = [os.dup(f.fileno()) if f is not None else None for f in (proc.stdin, proc.stdout, proc.stderr)]
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    out, err = fds[1], fds[2]
    assert out is not None
    outputs = [(out, stdout)] + ([(err, stderr)] if stderr is not None and err is not None else [])
    return Child(loop, proc.pid, fds[0], outputs, stdin or b"", popen=proc)


_spawn_ok: list[bool] = []


def _can_posix_spawn() -> bool:
    """Whether posix_spawn can start a new session here (glibc >= 2.26, macOS; not every libc)."""
    if not _spawn_ok:
        ok = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_DUP2")
        if ok:
            try:
                pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", ":"], {}, setsid=True)
                os.waitpid(pid, 0)
            except (NotImplementedError, OSError):
                ok = False
        _spawn_ok.append(ok)
    return _spawn_ok[0]


def _close_inherited() -> None:
    """Make every descriptor this process inherited (from the shell or service manager that started it)
    close-on-exec, once: posix_spawn passes inheritable descriptors on, where Popen's close_fds did not.
    Python's own descriptors are never inheritable (PEP 446), so once is enough."""
    global _inherited_closed
    if _inherited_closed:
        return
    _inherited_closed = True
    try:
        names = os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
