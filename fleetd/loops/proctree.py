"""Finding and killing everything a run started.

Each run's child leads its own session, and every process of the run carries FLEETD_RUN_TAG in
its environment: a double-forked descendant escapes both the process group and
`children(recursive=True)`, but not the tag sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import psutil

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


def snapshot(root_pid: int | None, create_time: float | None, tag: str | None) -> list[psutil.Process]:
    """The root (if it is still the same process), its descendants and every tagged process."""
    procs: dict[int, psutil.Process] = {}
    if root_pid is not None:
        try:
            root = psutil.Process(root_pid)
            if create_time is None or abs(root.create_time() - create_time) < 0.01:
                procs[root.pid] = root
                for child in root.children(recursive=True):
                    procs[child.pid] = child
        except psutil.Error:
            pass
    if tag:
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
) -> int:
    """SIGTERM the whole tree, give it `grace` seconds, SIGKILL what is left. Returns how many
    processes were signalled.

    When the root is a child that asyncio manages, pass its `wait()` future as `root_exited`:
    psutil must not wait() on it (asyncio would then see exit status 255).
    """
    procs = await asyncio.to_thread(snapshot, root_pid, create_time, tag)
    if not procs:
        return 0
    managed_root = root_pid if root_exited is not None else None
    group = root_pid if root_pid is not None and any(p.pid == root_pid for p in procs) else None
    _signal_all(procs, signal.SIGTERM, group)
    others = [p for p in procs if p.pid != managed_root]
    waits: list[asyncio.Future[object]] = [asyncio.ensure_future(_wait_gone(others, grace))]
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
    return len(procs)


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
