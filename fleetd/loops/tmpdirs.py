"""Attempts' private TMPDIRs: made with the attempt's process, removed after it, and recycled when they can be.

An mkdir and an rmdir per run cost more than the rest of the launch together on a busy host: ext4 without a
journal skips, on every inode it allocates, each inode freed in the last ~30 s (`recently_deleted`), so at
hundreds of runs a second each mkdir walked thousands of them (~0.8 ms of the launch thread's ~1.5 ms per run
of `true`; 24 µs on a fresh filesystem, 330 µs after 12,000 mkdir/rmdir pairs). A TMPDIR left empty is
instead renamed to a spare and renamed again into the next attempt's name: no inode is freed or allocated.

Invariant: a directory becomes a spare only when nothing of its run can reach it any more (`vacated`: the run's
cgroup was empty and removed, so the kernel says no process of the run is left) and it is still an empty
private directory of ours (0700, not a symlink, the inode made for the attempt: a freed inode number can come
back, so that last check only narrows). The next attempt then gets what a fresh mkdir would give it. Anything
else is removed as before. Spares are named `run-spare-N` in the root, so a daemon's start removes those a
previous one left, with every other dead attempt's (`run*`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import stat
import threading

SPARE_PREFIX = "run-spare-"


class TmpDirs:
    def __init__(self, root: str, keep: int = 64) -> None:
        self.root = root
        self.keep = keep  # at most this many spares (about the runs in flight at once)
        self._lock = threading.Lock()
        self._spares: list[str] = []
        self._names = itertools.count()
        # Each directory `make` made and `release` has not seen yet: its (device, inode), and whether its run
        # left it (`vacated`).
        self._made: dict[str, tuple[tuple[int, int], bool]] = {}

    def make(self, path: str) -> None:
        """Make `path`, 0700: a spare renamed to it, else a new directory (its parent only when missing: an mkdir
        of one that exists costs about as much as making one). One left by a dead attempt of the same name (a run
        id from an earlier database) is emptied first: nothing of it may reach this one. Blocking."""
        with self._lock:
            spare = self._spares.pop() if self._spares else None
        if spare is None or not _rename_over(spare, path):
            _mkdir_private(path)
        with contextlib.suppress(OSError):  # without its identity it is never recycled, only removed
            st = os.lstat(path)
            with self._lock:
                self._made[path] = ((st.st_dev, st.st_ino), False)

    def vacated(self, path: str) -> None:
        """No process of the attempt's run is left (its cgroup was removed empty): `release` may recycle `path`."""
        with self._lock:
            if path in self._made:
                self._made[path] = (self._made[path][0], True)

    def release(self, path: str) -> None:
        """The attempt is over: `path` becomes a spare if it may (the module's invariant), else it is removed.
        Blocking; nothing waits for it."""
        with self._lock:
            ident, vacated = self._made.pop(path, (None, False))
            room = len(self._spares) < self.keep
        if vacated and room and ident is not None and _pristine(path, ident):
            spare = f"{self.root}/{SPARE_PREFIX}{next(self._names)}"
            with contextlib.suppress(OSError):
                os.rename(path, spare)
                with self._lock:
                    self._spares.append(spare)
                return
        _remove(path)


def _pristine(path: str, ident: tuple[int, int]) -> bool:
    """Whether `path` is still the empty private directory made as `ident`."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) != ident or not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o700:
            return False
        if st.st_uid != os.geteuid():
            return False
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _rename_over(spare: str, path: str) -> bool:
    """Rename `spare` to `path` (replacing a dead attempt's directory there); False when it could not be."""
    try:
        os.rename(spare, path)
        return True
    except FileNotFoundError:
        return False  # the spare is gone (someone cleaned the root): a new directory instead
    except OSError:
        pass  # a dead attempt's directory, not empty
    try:
        shutil.rmtree(path)
        os.rename(spare, path)
        return True
    except OSError:
        _remove(spare)
        return False


def _mkdir_private(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        shutil.rmtree(path)
        os.mkdir(path, 0o700)


def _remove(path: str) -> None:
    """Usually left empty, which one rmdir removes (rmtree costs a dozen calls)."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass  # never made (the attempt stopped before its process started)
    except NotADirectoryError:  # the attempt put a symlink or a file in its place: that goes, not its target
        with contextlib.suppress(OSError):
            os.unlink(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
