"""A cgroup (v2) per run, where the daemon may make one: the kernel's own record of a run's processes.

A process that leaves the run's session and drops its environment (`setsid env -i sleep 1000 &`)
escapes both the process group and the tag sweep, but not its cgroup: a child cannot leave a cgroup
it was started in without write access above it. Listing a run's processes is then reading one file,
O(the run's own processes) instead of the environment of every process on the machine.

Layout: `<base>/fleetd-<instance>/run-<run id>`, where `<base>` is the daemon's own cgroup when it
was delegated to it (systemd `Delegate=yes`), else the root of the cgroup v2 mount when writable
(root outside systemd, a container with its own cgroup namespace). The daemon itself stays where it
is: no controller is ever enabled, so cgroup v2's "no internal processes" rule does not apply, and
the subtree is only a set of process lists. `FLEETD_CGROUP=off` turns it off. Without a usable
subtree `base_dir()` is None and runs fall back to the session + tag sweep of `proctree`.

Pure path logic first (tested on strings), then thin I/O.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

SUBTREE_PREFIX = "fleetd-"
RUN_PREFIX = "run-"
DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")  # set by systemd >= 251 on delegated cgroups
# A child joins its run's cgroup itself, before it execs the command: the daemon cannot move it
# between fork and exec (Python exposes no clone3/CLONE_INTO_CGROUP, and preexec_fn is unsafe in a
# threaded process), and moving it after the spawn returns would leave a window in which the command
# can fork an escapee (a shell script does so within a millisecond). `exec` keeps the pid, session
# and create time. A failed join is not fatal: the daemon checks the pid after the spawn.
_JOIN = '{ echo 0 >"$1"; } 2>/dev/null; shift; exec "$@"'


# --- pure ---------------------------------------------------------------------------------------


def v2_mount(mountinfo: str) -> Path | None:
    """The cgroup2 mount point from /proc/self/mountinfo text (`/sys/fs/cgroup`, or
    `/sys/fs/cgroup/unified` on a hybrid layout)."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and right.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(fields[4].replace("\\040", " "))
    return None


def own_path(proc_cgroup: str) -> str | None:
    """This process's cgroup v2 path from /proc/self/cgroup text: the `0::/path` line."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def candidates(mount: Path, own: str | None, delegated: bool) -> list[Path]:
    """Where the daemon may make its subtree, best first: its own cgroup if delegated to it (so runs
    stay inside the service's cgroup and its accounting), else the hierarchy's root."""
    found: list[Path] = []
    if own is not None and delegated:
        found.append(mount / own.lstrip("/"))
    if mount not in found:
        found.append(mount)
    return found


def choose(options: list[Path], usable: Callable[[Path], bool]) -> Path | None:
    return next((base for base in options if usable(base)), None)


def subtree_of(base: Path, instance: str) -> Path:
    return base / f"{SUBTREE_PREFIX}{instance}"


def wraps(argv: list[str]) -> bool:
    """Whether `join_argv` starts `argv` through a wrapper shell that execs it (not for a `/bin/sh -c` script,
    which joins at its own top): then a command that cannot be executed is the wrapper's exit 127."""
    return not (len(argv) >= 3 and argv[0] == "/bin/sh" and argv[1] == "-c")


def join_argv(cgroup: Path, argv: list[str]) -> list[str]:
    """`argv`, started so that the child is in `cgroup` before it runs the command. A command that is a
    `/bin/sh -c` script already joins at the top of its own script: one shell, not a shell that execs a
    shell (its $0 and arguments are as they were)."""
    procs = f"{cgroup}/cgroup.procs"
    if not wraps(argv):
        return ["/bin/sh", "-c", f"{{ echo 0 >{shlex.quote(procs)}; }} 2>/dev/null || :\n{argv[2]}", *argv[3:]]
    return ["/bin/sh", "-c", _JOIN, "fleetd-run", procs, *argv]


# --- I/O ----------------------------------------------------------------------------------------

_lock = threading.Lock()
_base: list[Path | None] = []  # filled once: the probe spawns a process
_subtrees: dict[str, Path] = {}  # by instance, once its base is known
# The run cgroups this process made and has not removed yet, each with its subtree (a parent made once:
# pathlib's cost showed in every run), and how many of them each subtree holds.
_made: dict[Path, Path] = {}
_held: Counter[Path] = Counter()


def base_dir() -> Path | None:
    """The directory under which this daemon makes its subtree, or None (fall back to the sweep).
    Probed once per process; the probe really moves a process, so None means it would not work."""
    with _lock:
        if not _base:
            _base.append(_discover())
        return _base[0]


def subtree(instance: str) -> Path | None:
    tree = _subtrees.get(instance)
    if tree is None:
        base = base_dir()
        if base is None:
            return None
        tree = _subtrees.setdefault(instance, subtree_of(base, instance))
    return tree


def probed() -> bool:
    """Whether `base_dir` is known already (the first call probes: it spawns a process)."""
    return bool(_base)


def run_path(instance: str, run_id: int) -> Path | None:
    """Where run `run_id`'s processes live (whether or not it exists now); None without cgroups."""
    tree = subtree(instance)
    return tree / f"{RUN_PREFIX}{run_id}" if tree is not None else None


def _discover() -> Path | None:
    if os.environ.get("FLEETD_CGROUP", "").lower() in ("off", "0", "no", "false"):
        return None
    try:
        mount = v2_mount(Path("/proc/self/mountinfo").read_text())
        own = own_path(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None  # not Linux
    if mount is None:
        return None
    delegated = own is not None and _delegated(mount / own.lstrip("/"))
    return choose(candidates(mount, own, delegated), _usable)


def _delegated(path: Path) -> bool:
    for name in DELEGATE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(path, name).strip() == b"1":
                return True
    return False


def _usable(base: Path) -> bool:
    """Can we make a cgroup under `base` and start a child inside it? Tried, not guessed: access
    bits do not tell about delegation boundaries or namespaces."""
    if not (os.access(base, os.W_OK) and os.access(base / "cgroup.procs", os.W_OK)):
        return False
    probe = base / f"{SUBTREE_PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
    except OSError:
        return False
    try:
        seen = subprocess.run(
            join_argv(probe, ["cat", "/proc/self/cgroup"]), capture_output=True, text=True, timeout=10, check=False
        )
        return (own_path(seen.stdout) or "").endswith("/" + probe.name)
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def create(cgroup: Path) -> bool:
    """Make the run's cgroup (and the daemon's subtree, when missing). False when it cannot be made."""
    for _ in range(3):
        try:
            os.mkdir(cgroup)
        except FileExistsError:
            pass  # a retried attempt's, or one a crash left
        except FileNotFoundError:
            # The subtree is missing: the first run, or the last run's cgroup took it away as it went.
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                os.mkdir(cgroup.parent)
            continue
        except OSError:
            return False
        with _lock:
            if cgroup not in _made:
                _made[cgroup] = parent = cgroup.parent
                _held[parent] += 1
        return True
    return False


def join(cgroup: Path, pid: int) -> bool:
    """Put `pid` into `cgroup` (a no-op when the child already joined itself). A process that has
    already exited counts as joined: it can have left nothing outside the cgroup it joined first."""
    try:
        _write_pid(f"{cgroup}/cgroup.procs", pid)
    except ProcessLookupError:
        return True
    except OSError as e:
        return e.errno == errno.ESRCH
    return True


def member_or_join(cgroup: Path, pid: int) -> bool:
    """`join`, skipped when `pid` is in `cgroup` already (its wrapper joined it)."""
    return pid in procs(cgroup) or join(cgroup, pid)


def _write_pid(procs_file: str, pid: int) -> None:
    # os-level: once per run, where pathlib's text layer cost more than the write itself.
    fd = os.open(procs_file, os.O_WRONLY)
    try:
        os.write(fd, b"%d\n" % pid)
    finally:
        os.close(fd)


def exists(cgroup: Path) -> bool:
    return os.path.exists(f"{cgroup}/cgroup.procs")


def procs(cgroup: Path) -> list[int]:
    """The pids in `cgroup` (exited processes are not listed); [] when it does not exist."""
    # f-strings, not `/`: str(Path) is cached on the object, where `/` builds a new Path every call.
    text = _read(f"{cgroup}/cgroup.procs")
    try:
        return [int(line) for line in text.split()] if text else []
    except ValueError:
        return []


def populated(cgroup: Path) -> bool:
    """Whether any process is left in `cgroup` or a cgroup below it (`cgroup.events`: one small read, the
    usual answer once a run's command has exited). False when it does not exist."""
    text = _read(f"{cgroup}/cgroup.events")
    if text is None:
        return exists(cgroup)  # unreadable but there: the careful answer
    return b"populated 0" not in text


def _read(path: str) -> bytes | None:
    # os-level: once or twice per run, where pathlib's text layer cost ten times the read itself.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def wait_empty(cgroup: Path, timeout: float) -> bool:
    """Until no process is left in `cgroup` (a zombie no longer counts, so an escapee reparented to
    an init that is slow to reap it does not hold this up) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while procs(cgroup):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def kill_all(cgroup: Path, timeout: float) -> set[int]:
    """SIGKILL everything in `cgroup`, including what forks meanwhile, until it is empty or `timeout`
    passes. `cgroup.kill` (Linux >= 5.14) does it atomically; else each pid, listed again until none
    is left. Returns every pid it saw."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while pids := procs(cgroup):
        seen.update(pids)
        if not _write(cgroup / "cgroup.kill", "1"):
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return seen


def remove(cgroup: Path) -> bool:
    """rmdir the run's cgroup, then the daemon's subtree once this process has no run cgroup left in it, so
    an idle daemon leaves nothing in the hierarchy. False, and nothing changed, while a process is left in
    it (the kernel refuses to remove a populated cgroup): one call both asks and removes."""
    try:
        os.rmdir(cgroup)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    with _lock:
        parent = _made.pop(cgroup, None)
        if parent is not None:
            _held[parent] -= 1
        else:
            parent = cgroup.parent
        last = _held[parent] <= 0
    if last:
        with contextlib.suppress(OSError):
            os.rmdir(parent)  # EBUSY while a cgroup someone else made is there
    return True


def leftovers(instance: str) -> list[Path]:
    """The run cgroups a previous daemon of this instance left behind (it was killed mid-run)."""
    tree = subtree(instance)
    if tree is None:
        return []
    try:
        return sorted(p for p in tree.iterdir() if p.name.startswith(RUN_PREFIX) and p.is_dir())
    except OSError:
        return []


def _write(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
    except OSError:
        return False
    return True
