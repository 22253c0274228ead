"""Where fleetd keeps its state.

`FLEETD_HOME` puts everything (database, logs, socket, profile dirs) under one directory; that is how
tests, benches and side-by-side instances run. Without it, platformdirs' per-user locations apply.
Kept import-light: the CLI imports this on every invocation.
"""

from __future__ import annotations

import os
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
        """Create the directories with private permissions."""
        for d in (self.home, self.logs, self.run_logs):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.run_dir, 0o700)
        os.chmod(self.home, 0o700)


def resolve(env: dict[str, str] | None = None) -> Paths:
    env = dict(os.environ) if env is None else env
    override = env.get("FLEETD_HOME")
    if override:
        home = Path(override).expanduser().resolve()
        return Paths(home=home, run_dir=home / "run")
    import platformdirs

    home = Path(platformdirs.user_data_dir(APP))
    runtime = env.get("XDG_RUNTIME_DIR")
    run_dir = Path(runtime) / APP if runtime and Path(runtime).is_dir() else home / "run"
    return Paths(home=home, run_dir=run_dir)
