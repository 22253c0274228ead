"""Gathering the facts `checks.py` judges that need only the host: the socket's directory, the disk,
the secret store, the installed service unit. Both the daemon (its own view) and the CLI (when no
daemon answers) call these; nothing here needs the server stack."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from fleetd.doctor.checks import DiskFact, LoopPathFact, SecretStoreFact, ServiceFact, SocketFact, UnitCli
from fleetd.loops.model import path_problems
from fleetd.paths import Paths
from fleetd.records.loop import Loop


def loop_path_facts(loops: Iterable[Loop]) -> list[LoopPathFact]:
    """Each loop's --dir and --prompt-file as a run would find them now (blocking: run it in a thread)."""
    return [LoopPathFact(loop.name, loop.enabled, option, problem)
            for loop in loops for option, problem in path_problems(loop)]  # fmt: skip


def which(executable: str, path: str | None) -> str | None:
    """Where `path` (a PATH value) finds `executable`; None when it does not (or `path` is None)."""
    if path is None:
        return None
    return shutil.which(executable, path=path)


def service_manager(env: Mapping[str, str]) -> str | None:
    """What started this process: systemd sets INVOCATION_ID for each unit it starts; launchd names the job."""
    if env.get("INVOCATION_ID"):
        return "systemd"
    if env.get("XPC_SERVICE_NAME", "0") not in ("0", ""):
        return "launchd"
    return None


def socket_fact(paths: Paths, daemon_answers: bool) -> SocketFact:
    try:
        st = os.stat(paths.run_dir)
        mode, owner = st.st_mode, st.st_uid
    except OSError:
        mode = owner = None
    return SocketFact(
        socket_path=str(paths.socket),
        run_dir=str(paths.run_dir),
        dir_mode=mode,
        dir_owner=owner,
        uid=os.geteuid(),
        daemon_answers=daemon_answers,
        socket_exists=paths.socket.exists(),
    )


def disk_fact(home: Path) -> DiskFact | None:
    """Free space where the home is (or would be: its nearest existing parent); None if none can be asked."""
    for place in (home, *home.parents):
        try:
            usage = shutil.disk_usage(place)
        except OSError:
            continue
        return DiskFact(str(home), usage.free, usage.total)
    return None


def secret_store_fact(home: Path, env: Mapping[str, str], keys_in_use: int) -> SecretStoreFact:
    from fleetd.profiles.secrets import open_secret_store

    choice = env.get("FLEETD_SECRET_STORE", "keyring")
    file_path = str(home / "secrets.json")
    try:
        store = open_secret_store(home, dict(env))
    except ValueError as e:
        return SecretStoreFact(choice, "the secret store", str(e), keys_in_use, file_path)
    try:
        problem = store.problem()
    except Exception as e:  # a keyring backend failing to load: say what, never a traceback
        problem = f"the keyring failed to load ({type(e).__name__})"
    return SecretStoreFact(choice, store.description, problem, keys_in_use, file_path)


def service_fact(
    platform: str,
    user_home: Path,
    env: Mapping[str, str],
    home: Path,
    executables: Iterable[str],
    user_path: str | None,
) -> ServiceFact | None:
    """The installed unit (if any) as it would run the daemon: its PATH against where the user's PATH finds
    each of `executables`, and its FLEETD_HOME against `home`. None on a platform without a service."""
    from fleetd.service import units

    try:
        path = units.unit_path(platform, user_home, env.get("XDG_CONFIG_HOME"))
    except ValueError:
        return None
    kind = "launchd" if platform == "darwin" else "systemd"
    if not path.is_file():
        return ServiceFact(kind, str(path), installed=False)
    try:
        unit_env = units.read_environment(path)
    except OSError:
        return ServiceFact(kind, str(path), installed=True, readable=False)
    unit_path = unit_env.get("PATH")
    # Without a PATH of its own the unit gets the manager's: systemd's user manager and launchd both
    # default to the system directories, none of the per-user ones.
    effective = unit_path or "/usr/local/bin:/usr/bin:/bin"
    clis = tuple(
        UnitCli(exe, found, which(exe, effective) is not None)
        for exe in dict.fromkeys(executables)
        if (found := which(exe, user_path)) is not None
    )
    unit_home = unit_env.get("FLEETD_HOME")
    return ServiceFact(
        kind,
        str(path),
        installed=True,
        unit_path=unit_path,
        unit_home=str(Path(unit_home).expanduser().resolve()) if unit_home else None,
        home=_home_if_explicit(env, home),
        clis=clis,
    )


def _home_if_explicit(env: Mapping[str, str], home: Path) -> str | None:
    """The home to compare with the unit's FLEETD_HOME: only when one is set (else both use the default)."""
    return str(home) if env.get("FLEETD_HOME") else None
