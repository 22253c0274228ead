"""Where fleetd keeps its state.

`FLEETD_HOME` puts everything (database, logs, socket, profile dirs) under one directory; that is how
tests, benches and side-by-side instances run. Without it, platformdirs' per-user locations apply.
Kept import-light: the CLI imports this on every invocation, and most commands need only the socket
(`socket_path`, plain `os.path`): `pathlib` (which loads `urllib.parse` and `ipaddress`) and
`dataclasses` would be a tenth of `fleetd loop list`.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

APP = "fleetd"
SOCKET_NAME = "fleetd.sock"
RUN_LOG_SHARD = 1000  # run ids per directory of run logs
# A Unix socket's path fits in sun_path: 108 bytes on Linux, 104 on macOS, its NUL included.
MAX_SOCKET_PATH_BYTES = 103 if sys.platform == "darwin" else 107


class Paths(NamedTuple):
    home: Path
    run_dir: Path  # holds the socket; mode 0700

    @property
    def db(self) -> Path:
        return self.home / "fleetd.db"

    @property
    def socket(self) -> Path:
        return self.run_dir / SOCKET_NAME

    @property
    def lock(self) -> Path:
        return self.home / "daemon.lock"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run_logs(self) -> Path:
        return self.logs / "runs"

    @property
    def daemon_log(self) -> Path:
        return self.logs / "daemon.log"

    @property
    def alive(self) -> Path:
        """Touched every second by a running daemon: its mtime is when a dead one was last alive (crash recovery)."""
        return self.home / "alive"

    @property
    def gateway_journal(self) -> Path:
        """The gateway's calls not yet in the store (gateway/journal.py): what a kill -9 would otherwise lose."""
        return self.home / "gateway-journal"

    @property
    def profiles(self) -> Path:
        return self.home / "profiles"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    @property
    def work(self) -> Path:
        return self.home / "work"

    def loop_work(self, loop: str) -> Path:
        """Where a loop without --dir runs: its own directory (0700), the same for every run, whoever
        started the daemon from wherever. Loop names are safe path components (loops/model.py)."""
        return self.work / loop

    def run_log(self, run_id: int) -> Path:
        # Sharded so a million runs never put a million files in one directory.
        return self.run_logs / f"{run_id // RUN_LOG_SHARD:04d}" / f"{run_id}.log"

    def ensure(self) -> None:
        """Create the missing directories 0700; refuse existing ones that others can write (UnsafeDirectory).

        An existing directory is never chmod'ed: with FLEETD_HOME=/tmp as root that would break the host.
        A socket path too long to bind is refused first, so nothing is created for a daemon that cannot listen."""
        if problem := socket_path_problem(str(self.socket)):
            raise UnsafeDirectory(problem)
        private_dir(self.home, "the fleetd home", parents=True)
        for d in (self.logs, self.run_logs):
            private_dir(d, "fleetd's logs", parents=False)
        private_dir(self.gateway_journal, "the gateway's journal", parents=False)
        private_dir(self.run_dir, "the socket's directory", parents=True)


class UnsafeDirectory(Exception):
    """A directory fleetd will not use or create; the message is one line that says how to fix it."""


def socket_path_problem(path: str) -> str | None:
    """Why `path` cannot be the daemon's socket (too long for a Unix socket), with the fix; or None."""
    size = len(os.fsencode(path))
    if size <= MAX_SOCKET_PATH_BYTES:
        return None
    return (
        f"the socket path {path} is {size} bytes, more than the {MAX_SOCKET_PATH_BYTES} a Unix socket's path "
        "can have: set a shorter FLEETD_HOME"
    )


def unsafe_reason(path: Path, mode: int, owner: int, uid: int) -> str | None:
    """Why a directory with this mode and owner is not private enough for user `uid`, and the fix; or None.

    Readable by others is the user's choice (fleetd's own files inside are 0600/0700); writable by
    others or owned by someone else means another user could plant or swap files fleetd trusts."""
    if not stat.S_ISDIR(mode):
        return "it is not a directory"
    if owner != uid:
        return f"it belongs to uid {owner}, not to you (uid {uid}); use a directory of your own"
    if mode & 0o022 and mode & stat.S_ISVTX:
        # /tmp and its kind are shared by design: never suggest changing them.
        return f"it is a shared directory (mode {stat.S_IMODE(mode):04o}); use one inside it, e.g. {path / 'fleetd'}"
    if mode & 0o022:
        return f"other users can write to it (mode {stat.S_IMODE(mode):04o}); run `chmod go-w {path}` or use another"
    return None


def private_dir(path: Path, what: str, *, parents: bool) -> bool:
    """Make `path` a usable private directory; True when fleetd created it (then, and only then, 0700).

    `parents=False`: only the last component may be created; a missing parent is an error, so a typo
    cannot make a whole tree somewhere unexpected."""
    if not parents and not path.parent.is_dir():
        raise UnsafeDirectory(
            f"cannot create {what} {path}: its parent {path.parent} does not exist; create it first or fix the path"
        )
    try:
        path.mkdir(parents=parents, mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise UnsafeDirectory(f"cannot create {what} {path}: {e.strerror or e}") from None
    else:
        os.chmod(path, 0o700)  # ours, just made: the umask must not loosen it
        return True
    try:
        st = os.stat(path)
    except OSError as e:
        raise UnsafeDirectory(f"cannot use {what} {path}: {e.strerror or e}") from None
    reason = unsafe_reason(path, st.st_mode, st.st_uid, os.geteuid())
    if reason:
        raise UnsafeDirectory(f"refusing to use {path} as {what}: {reason}")
    return False


def resolve(env: dict[str, str] | None = None) -> Paths:
    from pathlib import Path

    home, run_dir = _locate(env)
    return Paths(home=Path(home), run_dir=Path(run_dir))


def socket_path(env: dict[str, str] | None = None) -> str:
    """`resolve(env).socket` as a string, without building `Paths` (what a CLI command needs)."""
    return os.path.join(_locate(env)[1], SOCKET_NAME)


def _locate(env: dict[str, str] | None) -> tuple[str, str]:
    """The home and the socket's directory: the one rule, in strings."""
    env = os.environ if env is None else env
    override = env.get("FLEETD_HOME")
    if override:
        home = os.path.realpath(os.path.expanduser(override))
        return home, os.path.join(home, "run")
    home = _user_data_dir(env)
    runtime = env.get("XDG_RUNTIME_DIR")
    run_dir = os.path.join(runtime, APP) if runtime and os.path.isdir(runtime) else os.path.join(home, "run")
    return home, run_dir


def user_data_dir(env: Mapping[str, str]) -> Path:
    from pathlib import Path

    return Path(_user_data_dir(env))


def _user_data_dir(env: Mapping[str, str]) -> str:
    """platformdirs' per-user data directory, worked out here on Linux and macOS: importing
    platformdirs costs ~9 ms (it pulls in tempfile), a fifth of a CLI command."""
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~"), "Library", "Application Support", APP)
    if sys.platform.startswith("linux"):
        xdg = env.get("XDG_DATA_HOME", "").strip()
        return os.path.join(xdg or os.path.expanduser("~/.local/share"), APP)
    import platformdirs

    return str(platformdirs.user_data_dir(APP))
