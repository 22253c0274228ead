"""Finding and killing everything a run started.

The run's cgroup (`loops/cgroups`), where there is one, is the source of truth: every process the
run started is listed there, whatever session or environment it gave itself, and reading it costs
O(the run's own processes). Without one (no writable cgroup v2 subtree, or a run started before it
was made) the fallback is the session + tag sweep: each run's child leads its own session, and every
process of the run carries FLEETD_RUN_TAG in its environment: a double-forked descendant escapes both
the process group and `children(recursive=True)`, but not the tag sweep, which reads the environment
of every process on the machine. A descendant that also clears its environment escapes the sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import psutil

from fleetd.loops import cgroups

TAG_VAR = "FLEETD_RUN_TAG"


def tagged(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG_VAR) == tag:
                found.append(proc)
        except (psutil.Error, OSError):
            continue  # gone, or not ours to read
    return found


def snapshot(
    root_pid: int | None, create_time: float | None, tag: str | None, cgroup: Path | None = None
) -> list[psutil.Process]:
    """With an existing `cgroup`: the root (if it is still the same process) and every process in
    the cgroup. Otherwise the root, its descendants and every tagged process."""
    procs: dict[int, psutil.Process] = {}
    if root_pid is not None:
        try:
            root = psutil.Process(root_pid)
            if create_time is None or abs(root.create_time() - create_time) < 0.01:
                procs[root.pid] = root
                if cgroup is None:
                    for child in root.children(recursive=True):
                        procs[child.pid] = child
        except psutil.Error:
            pass
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
    procs = await asyncio.to_thread(snapshot, root_pid, create_time, tag, cgroup)
    if not procs:
        return 0
    managed_root = root_pid if root_exited is not None else None
    group = root_pid if root_pid is not None and any(p.pid == root_pid for p in procs) else None
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


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
