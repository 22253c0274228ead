"""Finding and killing everything a run started.

The run's cgroup (`loops/cgroups`), where there is one, is the source of truth: every process the
run started is listed there, whatever session or environment it gave itself, and reading it costs
O(the run's own processes). Without one (no writable cgroup v2 subtree, or a run started before it
was made) the fallback is the session + tag sweep: each run's child leads its own session, and every
process of the run carries FLEETD_RUN_TAG in its environment: a double-forked descendant escapes both
the process group and `children(recursive=True)`, but not the tag sweep, which reads the environment
of every process on the machine. A descendant that also clears its environment escapes the sweep.

That sweep is O(every process on the machine), so it is shared: one pass over /proc serves every run
that asked for one while the previous pass ran (`_TagSweeps`). Under load, runs ending by the hundred
per second then cost one pass every few milliseconds, not one each; a lone run still gets a pass that
starts after it asked (a pass already under way may have read /proc before its last fork).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import weakref
from collections import defaultdict
from pathlib import Path

import psutil

from fleetd.loops import cgroups

TAG_VAR = "FLEETD_RUN_TAG"


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_BOOT_TIME_TTL = 1.0  # /proc/stat's btime: read at most this often (it is long, and whole seconds)
_boot_time: tuple[float, float] | None = None  # (read at, by time.monotonic(); btime)


def create_time(pid: int) -> float | None:
    """`pid`'s create time, as psutil's `Process.create_time()` says it (recorded for crash recovery, which
    compares the two), None when it is gone. On Linux read directly: psutil reads /proc/stat, all of it, on
    every call, which cost a run more than its own spawn; its btime is whole seconds, reread each second."""
    global _boot_time
    if not sys.platform.startswith("linux"):
        try:
            return psutil.Process(pid).create_time()
        except psutil.Error:
            return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        started = float(stat[stat.rfind(b")") + 2 :].split()[19]) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None
    now = time.monotonic()
    if _boot_time is None or now - _boot_time[0] > _BOOT_TIME_TTL:
        _boot_time = (now, psutil.boot_time())
    return started + _boot_time[1]


def tagged(tag: str) -> list[psutil.Process]:
    return [p for pid in all_tags().get(tag, ()) if (p := _process(pid, tag)) is not None]


def all_tags() -> dict[str, list[int]]:
    """Every process carrying a run tag, by tag: one pass over every process's environment."""
    if not sys.platform.startswith("linux"):
        return _all_tags_psutil()
    found: dict[str, list[int]] = defaultdict(list)
    needle = b"\0" + TAG_VAR.encode() + b"="
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = b"\0" + f.read()
        except OSError:
            continue  # gone, or not ours to read
        if (at := env.find(needle)) != -1:
            start = at + len(needle)
            end = env.find(b"\0", start)
            found[env[start : end if end != -1 else len(env)].decode(errors="replace")].append(int(name))
    return found


def _all_tags_psutil() -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for proc in psutil.process_iter():
        try:
            if (tag := proc.environ().get(TAG_VAR)) is not None:
                found[tag].append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def _process(pid: int, tag: str) -> psutil.Process | None:
    """`pid` as a psutil handle (which pins its create time), if it still carries `tag`: the pid may
    have been reused since the pass read it."""
    try:
        proc = psutil.Process(pid)
        return proc if proc.environ().get(TAG_VAR) == tag else None
    except (psutil.Error, OSError):
        return None


class _TagSweeps:
    """Shared sweeps for one event loop. Invariant: a caller is answered by a pass that started after
    it asked; every caller that asked while a pass ran is answered by the one next pass."""

    def __init__(self) -> None:
        self._next: asyncio.Future[dict[str, list[int]]] | None = None  # the pass not yet started
        self._worker: asyncio.Task[None] | None = None

    async def find(self, tag: str) -> list[int]:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        answer = self._next
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="tag-sweeps")
        # Shielded: a caller cancelled meanwhile must not cancel the pass the others wait for.
        return list((await asyncio.shield(answer)).get(tag, ()))

    async def _work(self) -> None:
        while (answer := self._next) is not None:
            self._next = None
            try:
                answer.set_result(await asyncio.to_thread(all_tags))
            except Exception as e:
                answer.set_exception(e)
                answer.exception()  # retrieved: a caller that went away must not leave it unlogged


_sweeps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TagSweeps] = weakref.WeakKeyDictionary()


async def sweep(tag: str) -> list[psutil.Process]:
    """The processes carrying `tag`, from a pass shared with every other run that asks meanwhile."""
    loop = asyncio.get_running_loop()
    sweeps = _sweeps.get(loop)
    if sweeps is None:
        sweeps = _sweeps[loop] = _TagSweeps()
    return [p for pid in await sweeps.find(tag) if (p := _process(pid, tag)) is not None]


def snapshot(
    root_pid: int | None, create_time: float | None, tag: str | None, cgroup: Path | None = None
) -> list[psutil.Process]:
    """With an existing `cgroup`: the root (if it is still the same process) and every process in
    the cgroup. Otherwise the root, its descendants and every tagged process (`kill_tree` passes no
    tag and adds the shared `sweep`'s finds instead)."""
    procs: dict[int, psutil.Process] = {}
    root = same_process(root_pid, create_time)
    if root is not None:
        procs[root.pid] = root
        if cgroup is None:
            with contextlib.suppress(psutil.Error):
                for child in root.children(recursive=True):
                    procs[child.pid] = child
    if cgroup is not None:
        for pid in cgroups.procs(cgroup):
            with contextlib.suppress(psutil.Error):
                procs.setdefault(pid, psutil.Process(pid))
    elif tag:
        for proc in tagged(tag):
            procs.setdefault(proc.pid, proc)
    procs.pop(os.getpid(), None)
    return list(procs.values())


def _signal_all(procs: list[psutil.Process], sig: int, group: int | None) -> None:
    if group is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


async def kill_tree(
    root_pid: int | None,
    *,
    tag: str | None,
    grace: float,
    create_time: float | None = None,
    root_exited: asyncio.Future[object] | None = None,
    cgroup: Path | None = None,
) -> int:
    """SIGTERM the whole tree, give it `grace` seconds, SIGKILL what is left (`grace` 0: SIGKILL at
    once, no SIGTERM first). Returns how many processes were signalled.

    `cgroup` is the run's cgroup: when it exists, its members are the tree (and whatever they fork
    during the grace is killed too); when it does not, the session + tag sweep stands in.
    When the root is a child that asyncio manages, pass its `wait()` future as `root_exited`:
    psutil must not wait() on it (asyncio would then see exit status 255).
    """
    if cgroup is not None and not cgroups.exists(cgroup):
        cgroup = None
    if cgroup is None and root_pid is None:
        procs = []  # nothing to walk from: only the sweep can find what is left
    else:
        procs = await asyncio.to_thread(snapshot, root_pid, create_time, None, cgroup)
    if cgroup is None and tag:
        seen = {p.pid for p in procs} | {os.getpid()}
        procs += [p for p in await sweep(tag) if p.pid not in seen]
    # The root's group is signalled even when the root itself is a zombie: members that left its tree (reparented) and
    # cleared its tag are reached only that way.
    group = root_pid if root_pid is not None and any(p.pid == root_pid for p in procs) else None
    # A zombie is not left over: a dead daemon's child, exited, whose new parent has not reaped it yet (it was counted
    # as killed at the next start, and its run's end taken then).
    procs = [p for p in procs if _alive(p)]
    if not procs and (group is None or not _group_alive(group)):
        return 0
    managed_root = root_pid if root_exited is not None else None
    _signal_all(procs, signal.SIGTERM if grace > 0 else signal.SIGKILL, group)
    others = [p for p in procs if p.pid != managed_root]
    grace_over = _wait_cgroup_empty(cgroup, grace) if cgroup is not None else _wait_gone(others, grace)
    waits: list[asyncio.Future[object]] = [asyncio.ensure_future(grace_over)]
    if root_exited is not None:
        waits.append(asyncio.ensure_future(asyncio.wait_for(asyncio.shield(root_exited), grace)))
    await asyncio.gather(*waits, return_exceptions=True)
    survivors = [p for p in procs if _alive(p)]
    if survivors:
        _signal_all(survivors, signal.SIGKILL, group)
        rest = [p for p in survivors if p.pid != managed_root]
        await _wait_gone(rest, 5)
        if root_exited is not None:
            await asyncio.gather(asyncio.wait_for(asyncio.shield(root_exited), 5), return_exceptions=True)
    signalled = {p.pid for p in procs}
    if cgroup is not None:
        # Forked during the grace, so not in the snapshot: the cgroup still has them.
        signalled |= await asyncio.to_thread(cgroups.kill_all, cgroup, 5)
    return len(signalled)


async def reap_cgroups(instance: str, *, grace: float) -> int:
    """Crash recovery: kill what is left in the run cgroups a killed daemon of this instance left
    behind, then remove them. Returns how many processes were signalled. O(those processes)."""
    left = await asyncio.to_thread(cgroups.leftovers, instance)
    counts = await asyncio.gather(*(kill_tree(None, tag=None, grace=grace, cgroup=cg) for cg in left))
    for cg in left:
        cgroups.remove(cg)
    return sum(counts)


async def _wait_cgroup_empty(cgroup: Path, timeout: float) -> None:
    """Until the run's cgroup is empty (or `timeout`); polled on the event loop like `_wait_gone`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while cgroups.procs(cgroup) and loop.time() < deadline:
        await asyncio.sleep(0.05)


async def _wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    """Until every process has exited (or `timeout`). Polls on the event loop instead of blocking a
    worker thread in psutil.wait_procs: many trees die at once on stop and crash recovery, and the
    default thread pool would run their waits a few at a time, one grace after another."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = list(procs)
    while pending:
        pending = [p for p in pending if _alive(p)]
        if not pending or loop.time() >= deadline:
            return
        await asyncio.sleep(0.05)


def same_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """Process `pid`, if it is still the one started at `create_time` (when given): not gone, not another process
    that took its pid."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if create_time is None or abs(proc.create_time() - create_time) < 0.01:
            return proc
    except psutil.Error:
        pass
    return None


def running(pid: int | None, create_time: float | None) -> bool:
    """Whether process `pid` (the one started at `create_time`) still runs: `same_process`, and not a zombie."""
    proc = same_process(pid, create_time)
    return proc is not None and _alive(proc)


def _group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a member (signal 0 asks without signalling)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
