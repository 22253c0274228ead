"""Where fleetd keeps its state.

`FLEETD_HOME` puts everything (database, logs, socket, profile dirs) under one directory; that is how
tests, benches and side-by-side instances run. Without it, platformdirs' per-user locations apply.
Kept import-light: the CLI imports this on every invocation.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

APP = "fleetd"
SOCKET_NAME = "fleetd.sock"


@dataclass(frozen=True)
class Paths:
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
    def profiles(self) -> Path:
        return self.home / "profiles"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    def run_log(self, run_id: int) -> Path:
        # Sharded so a million runs never put a million files in one directory.
        return self.run_logs / f"{run_id // 1000:04d}" / f"{run_id}.log"

    def ensure(self) -> None:
        """Create the missing directories 0700; refuse existing ones that others can write (UnsafeDirectory).

        An existing directory is never chmod'ed: with FLEETD_HOME=/tmp as root that would break the host."""
        private_dir(self.home, "the fleetd home", parents=True)
        for d in (self.logs, self.run_logs):
            private_dir(d, "fleetd's logs", parents=False)
        private_dir(self.run_dir, "the socket's directory", parents=True)


class UnsafeDirectory(Exception):
    """A directory fleetd will not use or create; the message is one line that says how to fix it."""


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
    env = dict(os.environ) if env is None else env
    override = env.get("FLEETD_HOME")
    if override:
        home = Path(override).expanduser().resolve()
        return Paths(home=home, run_dir=home / "run")
    home = user_data_dir(env)
    runtime = env.get("XDG_RUNTIME_DIR")
    run_dir = Path(runtime) / APP if runtime and Path(runtime).is_dir() else home / "run"
    return Paths(home=home, run_dir=run_dir)


def user_data_dir(env: dict[str, str]) -> Path:
    """platformdirs' per-user data directory, worked out here on Linux and macOS: importing
    platformdirs costs ~9 ms (it pulls in tempfile), a fifth of a CLI command."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP
    if sys.platform.startswith("linux"):
        xdg = env.get("XDG_DATA_HOME", "").strip()
        return Path(xdg or os.path.expanduser("~/.local/share")) / APP
    import platformdirs

    return Path(platformdirs.user_data_dir(APP))
